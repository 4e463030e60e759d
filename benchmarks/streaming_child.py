"""In a fresh process: one measurement of the streaming benchmark, reported as JSON.

``python -m benchmarks.streaming_child memory BACKEND CASE [--quick]``: start
``ua.Executor(BACKEND, workers=6)`` (Dask and Ray embedded, started here), warm it up
(two 20,000-item maps, 6 concurrent 0.3 s tasks so every worker is up, then the case
itself on 12 items), take the RSS as the baseline, then stream the case while a thread
samples the RSS every 20 ms; growth = peak - baseline. Cases (``CASES``): ``small``,
300,000 inputs of ~1 kB mapped by ``len``; ``big-in``, 3,000 fresh 1 MB inputs mapped
by ``len``; ``big-out``, ``make_1mb`` over 1,000 items, each 1 MB result read (one
byte) and dropped. If the growth passes ``GUARD_MB`` the input stops (or, for
``big-out``, the consumer stops) and the result says so: the growth is then at least
what is reported, and the machine is spared.

``python -m benchmarks.streaming_child pipeline BACKEND W [--quick]``: start
``ua.Executor(BACKEND, workers=W)``, warm it up; with W = 6 (and on serial) first time
the first results (:func:`first_results`); then run every cell of the grid's design
with that W (on serial: every distinct cell whose serial bound is at most 4 s) once,
wall time against the cell's bound (:mod:`benchmarks.streaming_grid`).
"""

from __future__ import annotations

import argparse
import functools
import gc
import itertools
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from .child import emit
from .measure import bounded
from .memory_child import _rss_reader
from .streaming_grid import MAX_BOUND, Cell, design
from .streaming_tasks import MB, make_1mb, nap, one_mb, spin
from .tasks import inc

__all__ = ["CASES", "measure_memory", "run_cells", "first_results"]

MEMORY_WORKERS = 6
INTERVAL = 0.02
GUARD_MB = 2048.0
CASES = {  # name: (full n, quick n)
    "small": (300_000, 60_000),
    "big-in": (3_000, 500),
    "big-out": (1_000, 200),
}
FIRST_REPEATS = 5
FIRST_COUNT = 10
MiB = 2**20


class Sampler:
    """Samples this process's RSS every 20 ms; ``over`` is set once growth > the guard.

    The thread needs the GIL, which a long pickling holds, so on Linux the kernel's own
    high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` at the start) is
    read at the end too: the peak is the larger of the two.
    """

    def __init__(self, guard_mb: float) -> None:
        self.rss = _rss_reader()
        self.kernel = _reset_high_water()
        self.baseline = self.peak = self.sampled = self.rss()
        self.shared_base = self.shared_peak = _shared()  # pages of shared memory mapped here
        self.guard = guard_mb * MiB
        self.over = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL):
            self._note()

    def _note(self) -> None:
        self.sampled = max(self.sampled, self.rss())
        self.shared_peak = max(self.shared_peak, _shared())
        self.peak = max(self.peak, self.sampled)
        if self.peak - self.baseline > self.guard:
            self.over.set()

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._note()
        if self.kernel:
            self.peak = max(self.peak, _high_water())


def _reset_high_water() -> bool:
    """Reset the kernel's peak RSS of this process to its current RSS (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return _high_water() > 0
    except OSError:
        return False


def _shared() -> int:
    """Bytes of shared memory (``RssShmem``: /dev/shm, an object store) this process maps
    and has touched (Linux; 0 elsewhere). Part of its RSS, but not its own: Ray's driver
    counts there each page of the object store it ever wrote or read."""
    return _status_bytes("RssShmem:")


def _high_water() -> int:
    """The kernel's peak RSS of this process since the last reset, in bytes (0: unknown)."""
    return _status_bytes("VmHWM:")


def _status_bytes(field: str) -> int:
    """A size from ``/proc/self/status`` (given there in kB), in bytes; 0 if not there."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _inputs(case: str, n: int, stop: threading.Event | None) -> Iterator[Any]:
    """The case's input, fresh values made as the map pulls them; ends early on ``stop``."""
    for i in range(n):
        if stop is not None and stop.is_set():
            return
        yield (
            bytes(1000) + str(i).encode()
            if case == "small"
            else one_mb(i)
            if case == "big-in"
            else i
        )


def _stream(ex: Any, case: str, n: int, stop: threading.Event | None) -> int:
    """Run the case, keeping nothing; how many results were consumed."""
    consumed = 0
    if case == "big-out":
        results = ex.map(make_1mb, _inputs(case, n, None))
        try:
            for value in results:
                if value[0] != consumed % 256:
                    raise AssertionError(f"wrong result {consumed}")
                consumed += 1
                del value
                if stop is not None and stop.is_set():
                    break
        finally:
            results.close()
        return consumed
    for value in ex.map(len, _inputs(case, n, stop)):
        expected = 1000 + len(str(consumed)) if case == "small" else MB
        if value != expected:
            raise AssertionError(f"wrong result {consumed}: {value}")
        consumed += 1
    return consumed


def _warm(ex: Any) -> None:
    """Every worker process up, the map's batches at full size, the tasks shipped."""
    for _ in range(2):
        for _ in ex.map(inc, range(20_000)):
            pass
    ex.gather([ex.submit(nap, 0.3, i) for i in range(ex.workers)])


def measure_memory(backend: str, case: str, quick: bool) -> dict[str, Any]:
    import unidist_api as ua

    n = CASES[case][1 if quick else 0]
    if backend == "raw-ray":
        return _measure_raw_ray(case, n)
    ex = ua.Executor(backend, workers=MEMORY_WORKERS)
    try:
        _warm(ex)
        _stream(ex, case, 2 * MEMORY_WORKERS, None)
        gc.collect()
        with Sampler(GUARD_MB) as sampler:
            start = time.perf_counter()
            consumed = _stream(ex, case, n, sampler.over)
            seconds = time.perf_counter() - start
    finally:
        ex.shutdown()
    return {
        "backend": backend,
        "case": case,
        "n": n,
        "consumed": consumed,
        "stopped_early": consumed < n,
        "baseline_mb": sampler.baseline / MiB,
        "peak_mb": sampler.peak / MiB,
        "sampled_peak_mb": sampler.sampled / MiB,
        "kernel_peak": sampler.kernel,
        "growth_mb": (sampler.peak - sampler.baseline) / MiB,
        "seconds": seconds,
        "shared_growth_mb": (sampler.shared_peak - sampler.shared_base) / MiB,
        "workers": ex.workers,
    }


RAW_WINDOW = 12  # batches in flight in the raw Ray reference: 2 x workers
RAW_BATCH = 64 * MiB // (2 * MEMORY_WORKERS)  # bytes per batch: our default budget's share


def _measure_raw_ray(case: str, n: int) -> dict[str, Any]:
    """The same stream on raw Ray, as a user bounding it by hand would write it: batches
    of our default budget's share (64 MiB / 12), at most 12 in flight (``ray.wait``), so
    at most 64 MiB of items in flight, as ours. What Ray itself costs the driver."""
    import ray

    from .streaming_tasks import ray_lens, ray_make

    ray.init(
        address="local",
        num_cpus=MEMORY_WORKERS,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        lens, make = ray.remote(ray_lens), ray.remote(ray_make)
        ray.get([lens.remote([b"x"]) for _ in range(2 * MEMORY_WORKERS)])
        ray.get([make.remote([i]) for i in range(2 * MEMORY_WORKERS)])
        gc.collect()
        with Sampler(GUARD_MB) as sampler:
            start = time.perf_counter()
            consumed = _raw_stream(case, n, lens, make, sampler.over)
            seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    return {
        "backend": "raw-ray",
        "case": case,
        "n": n,
        "consumed": consumed,
        "stopped_early": consumed < n,
        "baseline_mb": sampler.baseline / MiB,
        "peak_mb": sampler.peak / MiB,
        "sampled_peak_mb": sampler.sampled / MiB,
        "kernel_peak": sampler.kernel,
        "growth_mb": (sampler.peak - sampler.baseline) / MiB,
        "seconds": seconds,
        "shared_growth_mb": (sampler.shared_peak - sampler.shared_base) / MiB,
        "workers": MEMORY_WORKERS,
    }


def _raw_stream(case: str, n: int, lens: Any, make: Any, stop: threading.Event) -> int:
    import ray

    per_item = 1000 if case == "small" else MB
    size = max(1, RAW_BATCH // per_item)
    source = _inputs(case, n, None if case == "big-out" else stop)
    pending: deque[Any] = deque()
    consumed = 0
    while True:
        while len(pending) < RAW_WINDOW and not (case == "big-out" and stop.is_set()):
            batch = list(itertools.islice(source, size))
            if not batch:
                break
            pending.append((make if case == "big-out" else lens).remote(batch))
        if not pending:
            return consumed
        for value in ray.get(pending.popleft()):
            if case == "big-out" and value[0] != consumed % 256:
                raise AssertionError(f"wrong result {consumed}")
            consumed += 1


def first_results(ex: Any, repeats: int = FIRST_REPEATS) -> dict[str, Any]:
    """Right after a 1,000-item map of ``inc``: ``ex.map(inc, itertools.count())`` to its
    first 10 results, ``repeats`` times (the infinite map then closed, its rest cancelled).
    """
    samples = []
    for _ in range(repeats):
        for _ in ex.map(inc, range(1000)):
            pass
        start = time.perf_counter()
        results = ex.map(inc, itertools.count())
        got = list(itertools.islice(results, FIRST_COUNT))
        samples.append((time.perf_counter() - start) * 1000)
        results.close()
        if got != list(range(1, FIRST_COUNT + 1)):
            raise AssertionError(f"wrong first results: {got}")
    return {"samples_ms": samples, "median_ms": statistics.median(samples), "max_ms": max(samples)}


def _pipeline(ex: Any, cell: Cell) -> Callable[[], float]:
    import unidist_api as ua

    fn = nap if cell.kind == "sleep" else spin
    pipe = ex.pipeline(*(ua.stage(functools.partial(fn, t), workers=w) for t, w in cell.stages))

    def run() -> float:
        start = time.perf_counter()
        out = list(pipe(range(cell.items)))
        wall = time.perf_counter() - start
        if out != list(range(cell.items)):
            raise AssertionError(f"wrong pipeline output: {out[:5]}...")
        return wall

    return run


def cells_for(backend: str, workers: int, quick: bool) -> list[Cell]:
    """The cells one child runs: the design's with this W; on serial, each distinct shape
    once (W does not matter there) whose serial bound is at most ``MAX_BOUND``."""
    cells = design(quick)
    if backend != "serial":
        return [c for c in cells if c.workers == workers]
    seen: dict[tuple[Any, ...], Cell] = {}
    for c in cells:
        if c.bound(1) <= MAX_BOUND:
            seen.setdefault((c.stages, c.kind, c.items), c)
    return sorted(seen.values(), key=lambda c: (c.bound(1), c.label))


def run_cells(ex: Any, cells: list[Cell]) -> list[dict[str, Any]]:
    """Each cell once, after a short pipeline of each kind (the stage functions shipped)."""
    import unidist_api as ua

    for fn in (nap, spin):
        warm = ex.pipeline(*(ua.stage(functools.partial(fn, 0.001)) for _ in range(3)))
        list(warm(range(4 * ex.workers)))
    out: list[dict[str, Any]] = []
    hung = False
    for cell in cells:
        limit = cell.bound(ex.workers)
        entry: dict[str, Any] = {
            "label": cell.label,
            "workers": cell.workers,
            "slots": ex.workers,
            "bound": limit,
        }
        if hung:
            entry["error"] = "not run: an earlier cell hung"
        else:
            gc.collect()
            try:
                entry["wall"] = bounded(_pipeline(ex, cell), 30 + 10 * limit)
            except Exception as exc:
                entry["error"] = f"{type(exc).__name__}: {exc}"[:300]
                hung = isinstance(exc, TimeoutError)
        out.append(entry)
    return out


def measure_pipeline(backend: str, workers: int, quick: bool) -> dict[str, Any]:
    import unidist_api as ua

    ex = ua.Executor(backend, workers=workers)
    try:
        start = time.perf_counter()
        _warm(ex)
        warm_s = time.perf_counter() - start
        first = first_results(ex) if workers == MEMORY_WORKERS or backend == "serial" else None
        cells = run_cells(ex, cells_for(backend, workers, quick))
    finally:
        ex.shutdown()
    return {
        "backend": backend,
        "workers": workers,
        "slots": ex.workers,
        "warm_s": warm_s,
        "first": first,
        "cells": cells,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.streaming_child")
    sub = parser.add_subparsers(dest="what", required=True)
    memory = sub.add_parser("memory")
    memory.add_argument("backend")
    memory.add_argument("case", choices=list(CASES))
    pipeline = sub.add_parser("pipeline")
    pipeline.add_argument("backend")
    pipeline.add_argument("workers", type=int)
    for each in (memory, pipeline):
        each.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.what == "memory":
        emit(measure_memory(args.backend, args.case, args.quick))
    else:
        emit(measure_pipeline(args.backend, args.workers, args.quick))


if __name__ == "__main__":
    main()
