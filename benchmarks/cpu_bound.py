"""CPU-bound tasks: how much of the 2 workers' CPU time the tasks actually get.

Each task burns ~50 ms of CPU (a busy loop on ``time.process_time``) and returns the
CPU seconds it used. Efficiency = (sum of the tasks' CPU seconds) / (2 workers x wall
time): 1.0 means both workers computed all the time, with nothing lost to scheduling,
idle gaps or the driver competing for the cores. Ours (``ex.map`` and submit+gather)
against the raw engine's submit on each backend. Target: ours >= 0.97x raw.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .engines import WORKERS, Engines
from .measure import TIMEOUT, alternate, bounded
from .report import Row, Section
from .tasks import burn

__all__ = ["run"]

TARGET = 0.97


def _efficiency(run_all: Callable[[], list[float]]) -> Callable[[], float]:
    def measure() -> float:
        start = time.perf_counter()
        cpu = run_all()
        wall = time.perf_counter() - start
        return sum(cpu) / (WORKERS * wall)

    return measure


def _contenders(
    engines: Engines, tasks: int, seconds: float
) -> dict[str, tuple[str, Callable[[], float]]]:
    work = [seconds] * tasks
    found: dict[str, tuple[str, Callable[[], float]]] = {}

    def ours(backend: str, raw: str) -> None:
        ex = engines.ours[backend]
        found[f"ours {backend}: ex.map"] = (raw, _efficiency(lambda: list(ex.map(burn, work))))
        found[f"ours {backend}: submit+gather"] = (
            raw,
            _efficiency(lambda: ex.gather([ex.submit(burn, s) for s in work])),
        )

    if engines.has("local"):
        loky: Any = engines.loky
        found["raw loky: submit+result"] = (
            "",
            _efficiency(lambda: [f.result() for f in [loky.submit(burn, s) for s in work]]),
        )
        ours("local", "raw loky: submit+result")
    if engines.has("dask"):
        client = engines.client
        found["raw dask: client.submit+gather"] = (
            "",
            _efficiency(lambda: client.gather([client.submit(burn, s, pure=False) for s in work])),
        )
        ours("dask", "raw dask: client.submit+gather")
    if engines.has("ray"):
        ray, remote = engines.ray, engines.ray_burn
        found["raw ray: f.remote+ray.get"] = (
            "",
            _efficiency(lambda: ray.get([remote.remote(s) for s in work])),
        )
        ours("ray", "raw ray: f.remote+ray.get")
    return found


def run(engines: Engines, tasks: int, seconds: float, repeats: int) -> Section:
    found = _contenders(engines, tasks, seconds)
    for _, prime in _contenders(engines, 2 * WORKERS, 0.001).values():
        try:  # a cheap warm-up (burn shipped and loaded); a failure shows in the rounds
            bounded(prime, TIMEOUT)
        except Exception:
            pass
    results = alternate(
        {name: fn for name, (_, fn) in found.items()}, repeats, label="cpu", warmup=0
    )
    section = Section(
        "cpu",
        f"CPU-bound: {tasks} tasks of {seconds * 1000:g} ms CPU on {WORKERS} workers",
        "efficiency",
        columns=["ours/raw"],
    )
    for name in found:
        section.rows.append(Row.of(name, results[name]))
    for name, (raw, _) in found.items():
        if raw:
            ratio = section.ratio(name, raw, "ours/raw")
            section.target(name, "ours/raw", ratio, ">=", TARGET)
    ideal = tasks * seconds / WORKERS
    section.notes.append(
        f"efficiency = sum(task CPU s) / ({WORKERS} x wall); ideal wall "
        f"{ideal:.2f} s; higher is better"
    )
    return section
