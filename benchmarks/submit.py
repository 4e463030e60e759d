"""submit + result per task, ours against the raw engine underneath, on the same engine.

Sequential: submit one task, wait for its result, n times (the latency of one call).
Batch: submit n, then gather them all (the throughput of the submit path).
On each engine, ours and raw run the same n: up to 200 one at a time and 1000 in a
batch, fewer when the engine is so slow that a measurement would exceed its time
budget (the n used is printed). Target: ours <= 1.10x raw on every engine, in both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .engines import Engines
from .measure import TIMEOUT, alternate, bounded, fit, log, probe, timed
from .report import Row, Section
from .tasks import inc

__all__ = ["run"]

TARGET = 1.10


@dataclass
class _Pair:
    """One engine's four ways: raw and ours, one task at a time and in a batch."""

    engine: str
    raw: tuple[str, str]  # how the raw calls are labelled: one at a time, batch
    raw_one: Callable[[int], Any]  # submit task i and wait for it
    ours_one: Callable[[int], Any]
    raw_batch: Callable[[int], Any]  # submit k tasks, gather them
    ours_batch: Callable[[int], Any]


def _loop(call: Callable[[int], Any]) -> Callable[[int], float]:
    def seconds(n: int) -> float:
        def loop() -> None:
            for i in range(n):
                call(i)

        return timed(loop)

    return seconds


def _batch(call: Callable[[int], Any]) -> Callable[[int], float]:
    return lambda n: timed(lambda: call(n))


def _pairs(engines: Engines) -> list[_Pair]:
    pairs = []
    if engines.has("local"):
        loky, ex = engines.loky, engines.ours["local"]
        pairs.append(
            _Pair(
                "local",
                ("raw loky: submit+result", "raw loky: batch, [f.result() ...]"),
                lambda i: loky.submit(inc, i).result(),
                lambda i: ex.submit(inc, i).result(),
                lambda k: [f.result() for f in [loky.submit(inc, i) for i in range(k)]],
                lambda k: ex.gather([ex.submit(inc, i) for i in range(k)]),
            )
        )
    if engines.has("dask"):
        client, dx = engines.client, engines.ours["dask"]
        pairs.append(
            _Pair(
                "dask",
                ("raw dask: client.submit+result", "raw dask: batch, client.gather"),
                lambda i: client.submit(inc, i, pure=False).result(),
                lambda i: dx.submit(inc, i).result(),
                lambda k: client.gather([client.submit(inc, i, pure=False) for i in range(k)]),
                lambda k: dx.gather([dx.submit(inc, i) for i in range(k)]),
            )
        )
    if engines.has("ray"):
        ray, remote, rx = engines.ray, engines.ray_inc, engines.ours["ray"]
        pairs.append(
            _Pair(
                "ray",
                ("raw ray: ray.get(f.remote)", "raw ray: batch, ray.get(list)"),
                lambda i: ray.get(remote.remote(i)),
                lambda i: rx.submit(inc, i).result(),
                lambda k: ray.get([remote.remote(i) for i in range(k)]),
                lambda k: rx.gather([rx.submit(inc, i) for i in range(k)]),
            )
        )
    return pairs


def run(engines: Engines, n: int, batch: int, repeats: int, budget: float) -> Section:
    section = Section(
        "submit",
        "submit+result per task: ours vs the raw engine (same engine)",
        "µs/task",
        columns=["ours/raw"],
    )
    contenders: dict[str, Callable[[], float]] = {}
    plan: list[tuple[str, str, int, str]] = []  # (ours, raw, n, note)
    for pair in _pairs(engines):
        one, many = _loop(pair.raw_one), _batch(pair.raw_batch)
        try:
            n_one = fit(probe(one, 20), budget, min(50, n), n)
            n_many = fit(probe(many, min(100, batch)), 2 * budget, min(100, batch), batch)
        except Exception as exc:
            log(f"submit: raw {pair.engine} failed, skipped: {exc}")
            continue
        for raw_name, raw_call, ours_call, size, wrap in (
            (pair.raw[0], pair.raw_one, pair.ours_one, n_one, _loop),
            (pair.raw[1], pair.raw_batch, pair.ours_batch, n_many, _batch),
        ):
            single = wrap is _loop
            how = "submit+result" if single else "batch, ex.gather"
            ours_name = f"ours {pair.engine}: {how}"
            note = f"{size} tasks, one at a time" if single else f"{size} tasks, then gather"
            contenders[raw_name] = _per_task(wrap(raw_call), size)
            contenders[ours_name] = _per_task(wrap(ours_call), size)
            plan.append((ours_name, raw_name, size, note))
        try:  # warm ours up too (the probe warmed raw up); a failure shows in the rounds
            bounded(lambda pair=pair: _loop(pair.ours_one)(20), TIMEOUT)
            bounded(lambda pair=pair: _batch(pair.ours_batch)(100), TIMEOUT)
        except Exception:
            pass
    results = alternate(contenders, repeats, label="submit", warmup=0)
    for ours_name, raw_name, _, note in plan:
        section.rows.append(Row.of(raw_name, results[raw_name], 1e6, note))
        section.rows.append(Row.of(ours_name, results[ours_name], 1e6, note))
        ratio = section.ratio(ours_name, raw_name, "ours/raw")
        section.target(ours_name, "ours/raw", ratio, "<=", TARGET)
    section.notes.append("median of alternating rounds; ratio = ours / raw on the same engine")
    return section


def _per_task(seconds: Callable[[int], float], n: int) -> Callable[[], float]:
    return lambda: seconds(n) / n
