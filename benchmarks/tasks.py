"""The functions the benchmarks run: importable by every worker (loky, Dask, Ray, unidist)."""

from __future__ import annotations

import time


def inc(x: int) -> int:
    """The trivial task: overhead is all there is to measure."""
    return x + 1


def burn(seconds: float) -> float:
    """Busy-loop until this process used ``seconds`` of CPU; return the CPU seconds used."""
    start = time.process_time()
    end = start + seconds
    while time.process_time() < end:
        for _ in range(1000):
            pass
    return time.process_time() - start


def nap(seconds: float, x: int) -> int:
    """A pipeline stage: sleep (holding a worker slot, not a CPU), pass the item on."""
    time.sleep(seconds)
    return x
