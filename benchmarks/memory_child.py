"""In a fresh process: the driver's peak memory growth during a 1M-item streamed map.

``python -m benchmarks.memory_child BACKEND [--n N]``: start ``ua.Executor(BACKEND,
workers=2)`` (dask and ray embedded, started here), warm it up, take the RSS as the
baseline, then consume ``ex.map(inc, range(N))`` lazily, keeping nothing, while a
thread samples the RSS every 20 ms. Reports the baseline, the peak and their
difference (MB) as JSON on stdout.
"""

from __future__ import annotations

import argparse
import gc
import os
import threading
import time
from collections.abc import Callable

from .child import emit
from .tasks import inc

INTERVAL = 0.02


def _rss_reader() -> Callable[[], int]:
    """A function returning this process's resident set size, in bytes."""
    try:
        import psutil

        process = psutil.Process()
        return lambda: int(process.memory_info().rss)
    except ImportError:  # /proc has it too, on Linux
        page = os.sysconf("SC_PAGE_SIZE")

        def read() -> int:
            with open("/proc/self/statm") as statm:
                return int(statm.read().split()[1]) * page

        return read


def measure(backend: str, n: int) -> dict[str, float]:
    import unidist_api as ua

    rss = _rss_reader()
    ex = ua.Executor(backend, workers=2)
    try:
        for _ in range(2):  # start the engine, its workers, and reach full batch size
            for _ in ex.map(inc, range(100_000)):
                pass
        gc.collect()
        baseline = rss()
        peak = [baseline]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(INTERVAL):
                peak[0] = max(peak[0], rss())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        for _ in ex.map(inc, range(n)):
            pass
        seconds = time.perf_counter() - start
        stop.set()
        sampler.join()
        peak[0] = max(peak[0], rss())
    finally:
        ex.shutdown()
    mb = 2**20
    return {
        "n": n,
        "baseline_mb": baseline / mb,
        "peak_mb": peak[0] / mb,
        "growth_mb": (peak[0] - baseline) / mb,
        "seconds": seconds,
        "us_per_item": seconds / n * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_child")
    parser.add_argument("backend")
    parser.add_argument("--n", type=int, default=1_000_000)
    args = parser.parse_args()
    emit(measure(args.backend, args.n))


if __name__ == "__main__":
    main()
