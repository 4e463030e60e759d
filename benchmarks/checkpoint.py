"""What ``checkpoint=PATH`` costs: a map of tiny items with a journal and without.

On each backend, ``list(ex.map(inc, range(n)))`` against the same call with
``checkpoint=`` a fresh journal (a first run: every item's arguments and result are
pickled once more and written), alternating rounds; and a rerun on a journal that holds
every item (nothing runs: the cost of reading them back). Target: the first run at most
1.3x the map without a journal, on every backend.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable

from .engines import Engines
from .measure import alternate, timed
from .report import Row, Section
from .tasks import inc

__all__ = ["run"]

TARGET = 1.3


def run(engines: Engines, n: int, repeats: int) -> Section:
    section = Section(
        "checkpoint",
        f"map of {n:,} tiny items with a checkpoint journal",
        "s",
        columns=["/ no journal"],
    )
    folder = tempfile.mkdtemp(prefix="unidist-api-bench-journal-")
    try:
        for backend, ex in engines.ours.items():
            _measure(section, backend, ex, n, repeats, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    section.notes.append(
        "first run: a new journal each round; rerun: every item recorded, none runs"
    )
    return section


def _measure(section: Section, backend: str, ex: object, n: int, repeats: int, folder: str) -> None:
    items = range(n)
    counter = [0]
    full = os.path.join(folder, f"{backend}-full.journal")

    def check(result: list[int]) -> None:
        if len(result) != n or result[-1] != n:
            raise AssertionError(f"wrong result: {len(result)} items")

    def plain() -> float:
        out: list[list[int]] = []
        seconds = timed(lambda: out.append(list(ex.map(inc, items))))  # type: ignore[attr-defined]
        check(out[0])
        return seconds

    def journal() -> float:
        counter[0] += 1
        path = os.path.join(folder, f"{backend}-{counter[0]}.journal")
        out: list[list[int]] = []
        seconds = timed(lambda: out.append(list(ex.map(inc, items, checkpoint=path))))  # type: ignore[attr-defined]
        check(out[0])
        os.remove(path)
        return seconds

    def rerun() -> float:
        out: list[list[int]] = []
        seconds = timed(lambda: out.append(list(ex.map(inc, items, checkpoint=full))))  # type: ignore[attr-defined]
        check(out[0])
        return seconds

    list(ex.map(inc, items, checkpoint=full))  # type: ignore[attr-defined]
    names = {
        f"{backend}: no journal": plain,
        f"{backend}: journal, first run": journal,
        f"{backend}: journal, rerun (all recorded)": rerun,
    }
    contenders: dict[str, Callable[[], float]] = dict(names)
    results = alternate(contenders, repeats, label=f"checkpoint {backend}")
    for name in names:
        section.rows.append(Row.of(name, results[name]))
    base = f"{backend}: no journal"
    first = section.ratio(f"{backend}: journal, first run", base, "/ no journal")
    section.ratio(f"{backend}: journal, rerun (all recorded)", base, "/ no journal")
    section.target(f"{backend}: journal, first run", "first run / no journal", first, "<=", TARGET)
