"""A 3-stage pipeline of sleeping stages: wall time against the best any scheduler could do.

Stages sleep t = (0.05, 0.1, 0.05) s per item; the slow one gets ``workers=2``. A
sleeping task still holds one of the executor's W task slots (2 worker processes on
local, 2 CPUs on Ray, 2 threads on Dask; 1 on serial), so the lower bound on the wall
time is the larger of

- capacity: ``items * sum(t) / W`` (all the work, on W slots), and
- each stage: ``items * t_s / min(w_s, W) + (sum(t) - t_s)`` (the stage's own work on
  its slots, plus the first item reaching it and the last item leaving the pipeline).

The pipeline is called as ``ex.pipeline(...)(range(items))``, with default chunksize
and buffersize. For context, the raw engines run the same work as chains of dependent
tasks all submitted at once (Dask: ``client.submit`` with futures as arguments; Ray:
``f.remote`` with ObjectRefs): what the engine does with no limits per stage and no
driver in the loop. Target: wall / bound <= 1.3.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import unidist_api as ua

from .engines import Engines
from .measure import TIMEOUT, alternate, bounded
from .report import Row, Section
from .tasks import nap

__all__ = ["run", "bound", "STAGES"]

STAGES = ((0.05, None), (0.1, 2), (0.05, None))  # (seconds per item, stage workers)
TARGET = 1.3


def bound(items: int, stages: tuple[tuple[float, int | None], ...], workers: int) -> float:
    """The lower bound on the wall time (see the module doc)."""
    fill = sum(t for t, _ in stages)
    capacity = items * fill / workers
    per_stage = [items * t / min(w or workers, workers) + fill - t for t, w in stages]
    return max(capacity, *per_stage)


def _measure(ex: ua.Executor, items: int, limit: float) -> Callable[[], float]:
    stages = [ua.stage(functools.partial(nap, t), workers=w) for t, w in STAGES]

    def measure() -> float:
        pipe = ex.pipeline(*stages)  # made here, so a failing backend fails its own rows
        start = time.perf_counter()
        out = list(pipe(range(items)))
        wall = time.perf_counter() - start
        if out != list(range(items)):
            raise AssertionError(f"wrong pipeline output: {out[:5]}...")
        return wall / limit

    return measure


def _chained(
    submit: Callable[[float, object], object],
    gather: Callable[[list[object]], Any],
    items: int,
    limit: float,
) -> Callable[[], float]:
    """The raw engine: every item's chain of stage tasks submitted at once, then gathered."""

    def measure() -> float:
        start = time.perf_counter()
        ends = []
        for i in range(items):
            value: object = i
            for t, _ in STAGES:
                value = submit(t, value)
            ends.append(value)
        out = gather(ends)
        wall = time.perf_counter() - start
        if list(out) != list(range(items)):
            raise AssertionError(f"wrong output: {list(out)[:5]}...")
        return wall / limit

    return measure


def run(engines: Engines, items: int, repeats: int) -> Section:
    limits = {backend: bound(items, STAGES, ex.workers) for backend, ex in engines.ours.items()}
    found = {
        f"ours {backend}": _measure(ex, items, limits[backend])
        for backend, ex in engines.ours.items()
    }
    raw: dict[str, str] = {}  # ours -> its raw reference
    if engines.has("dask"):
        client = engines.client
        found["raw dask: chained client.submit"] = _chained(
            lambda t, x: client.submit(nap, t, x, pure=False), client.gather, items, limits["dask"]
        )
        raw["ours dask"] = "raw dask: chained client.submit"
    if engines.has("ray"):
        ray, remote = engines.ray, engines.ray.remote(nap)
        found["raw ray: chained f.remote"] = _chained(
            lambda t, x: remote.remote(t, x), ray.get, items, limits["ray"]
        )
        raw["ours ray"] = "raw ray: chained f.remote"
    for ex in engines.ours.values():  # a cheap warm-up: the stage functions shipped
        try:
            pipe = ex.pipeline(*(ua.stage(functools.partial(nap, 0.001)) for _ in STAGES))
            bounded(lambda pipe=pipe, n=2 * ex.workers: list(pipe(range(n))), TIMEOUT)
        except Exception:
            pass  # shows in the rounds
    results = alternate(found, repeats, label="pipeline", warmup=0)
    shape = ", ".join(f"{t:g} s" + (f" (workers={w})" if w else "") for t, w in STAGES)
    section = Section(
        "pipeline",
        f"pipeline of 3 sleeping stages ({shape}) over {items} items",
        "wall/bound",
        columns=["ours/raw"],
    )
    for backend, ex in engines.ours.items():
        name = f"ours {backend}"
        names = [name, raw[name]] if name in raw else [name]
        for each in names:
            row = Row.of(each, results[each])
            if row.value is not None:
                row.note = (
                    f"wall {row.value * limits[backend]:.2f} s, bound "
                    f"{limits[backend]:.2f} s, W={ex.workers}"
                )
            section.rows.append(row)
        if name in raw:
            section.ratio(name, raw[name], "ours/raw")
        section.target(name, "wall/bound", section.rows[-len(names)].value, "<=", TARGET)
    section.notes.append(
        "bound = max(items*sum(t)/W, max over stages of "
        "items*t_s/min(w_s,W) + sum(t) - t_s); W = the executor's task slots"
    )
    section.notes.append(
        "raw = the same tasks chained through the engine's own futures, all "
        "submitted at once (no per-stage limits)"
    )
    return section
