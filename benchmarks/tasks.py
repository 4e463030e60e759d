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


def soak_square(x: int) -> tuple[int, int]:
    """A soak map task: a short nap, then the square and the pid it ran in."""
    import os

    time.sleep(0.001 * (x % 3))
    return x * x, os.getpid()


def soak_add(a: int, b: int) -> int:
    """A soak reduce step (associative)."""
    time.sleep(0.001)
    return a + b


def soak_triple(x: int) -> int:
    """A soak pipeline stage."""
    time.sleep(0.002)
    return 3 * x


def soak_minus(x: int) -> int:
    """A soak pipeline stage."""
    time.sleep(0.001)
    return x - 7
