"""Load: does the time per item stay flat as a map or the futures in flight grow 10x?

Ours on every backend: ``list(ex.map(inc, range(n)))`` for n and 10 n items, and n / 10
and n futures submitted before any is waited for (``ex.gather([ex.submit(inc, i) ...])``).
The row of the larger size shows its time per item over the smaller's. Target: at most
1.5x (linear or better; a cost that grows with the number in flight would show here).

The objects alive before the measurements (four engines' state: a big heap) are moved out
of the garbage collector's sight with ``gc.freeze()``: otherwise 10k futures trigger a
full collection that scans that whole heap, a one-off cost of the harness holding all the
engines in one process, which made serial's 10k futures look 2x slower per item than 1k
(with the collector off both cost the same). Collections of our own objects still count.
Serial's futures have no target: it runs each task inside ``submit``, so none is ever in
flight, and its ~15 us per future is at the mercy of the other engines' threads in this
process (run alone, 1k and 10k cost the same per future).
"""

from __future__ import annotations

import gc
from collections.abc import Callable

from .engines import Engines
from .measure import alternate, timed
from .report import Row, Section
from .tasks import inc

__all__ = ["run"]

TARGET = 1.5
MAX_REPEATS = 3  # 10k futures on dask take ~20 s a round


def _map(ex: object, n: int) -> Callable[[], float]:
    def measure() -> float:
        out: list[int] = []
        seconds = timed(lambda: out.extend(ex.map(inc, range(n))))  # type: ignore[attr-defined]
        if len(out) != n or out[-1] != n:
            raise AssertionError(f"wrong result: {len(out)} items")
        return seconds / n

    return measure


def _futures(ex: object, n: int) -> Callable[[], float]:
    def measure() -> float:
        out: list[int] = []
        seconds = timed(lambda: out.extend(ex.gather([ex.submit(inc, i) for i in range(n)])))  # type: ignore[attr-defined]
        if len(out) != n or out[-1] != n:
            raise AssertionError(f"wrong result: {len(out)} items")
        return seconds / n

    return measure


def _label(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def run(engines: Engines, map_items: int, futures: int, repeats: int) -> Section:
    """``map_items`` and ``futures`` are the larger sizes; the smaller are a tenth."""
    pairs: list[tuple[str, str, bool]] = []  # (smaller, larger contender, has a target)
    found: dict[str, Callable[[], float]] = {}
    for backend, ex in engines.ours.items():
        for kind, make, large in (("map", _map, map_items), ("futures", _futures, futures)):
            small = large // 10
            names = (
                f"ours {backend}: {kind} {_label(small)}",
                f"ours {backend}: {kind} {_label(large)}",
            )
            found[names[0]] = make(ex, small)
            found[names[1]] = make(ex, large)
            pairs.append((*names, not (backend == "serial" and kind == "futures")))
    gc.collect()
    gc.freeze()
    try:
        results = alternate(found, min(repeats, MAX_REPEATS), label="load")
    finally:
        gc.unfreeze()
    section = Section(
        "load",
        f"Load: time per item as a map grows 10x ({_label(map_items // 10)}"
        f" -> {_label(map_items)}) and as futures in flight grow 10x "
        f"({_label(futures // 10)} -> {_label(futures)})",
        "µs/item",
        columns=["per item vs 10x fewer"],
    )
    for name in found:
        section.rows.append(Row.of(name, results[name], scale=1e6))
    for small, large, has_target in pairs:
        ratio = section.ratio(large, small, "per item vs 10x fewer")
        if has_target:
            section.target(large, "per item vs 10x fewer", ratio, "<=", TARGET)
    section.notes.append(
        "map: list(ex.map(inc, range(n))); futures: ex.gather of n "
        "ex.submit(inc, i) made before waiting; ratio <= 1.5: no slowdown "
        "beyond linear; the harness's own heap is gc.freeze()d; serial's "
        "futures: no target (none is ever in flight)"
    )
    return section
