"""The functions the streaming benchmark runs: importable by every worker (loky, Dask, Ray)."""

from __future__ import annotations

import time

MB = 1_000_000  # the "1 MB" items: below the data plane's 1 MiB out-of-band size
_ZEROS = bytes(MB - 8)


def one_mb(i: int) -> bytes:
    """A fresh, distinct 1 MB ``bytes`` (the item's number in its first 8 bytes)."""
    return i.to_bytes(8, "little") + _ZEROS


def make_1mb(i: int) -> bytes:
    """A task whose result is 1 MB (case 3 of the memory benchmark)."""
    return one_mb(i)


def nap(seconds: float, x: int) -> int:
    """A sleeping stage: holds a task slot, not a core, for ``seconds``; passes ``x`` on."""
    time.sleep(seconds)
    return x


def spin(seconds: float, x: int) -> int:
    """A CPU-bound stage: busy until this thread used ``seconds`` of CPU; passes ``x`` on.

    CPU time, not wall time: the work is fixed, so when more tasks run than there are
    cores each takes longer, as real CPU-bound work does (the bound counts the cores).
    """
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        for _ in range(200):
            pass
    return x


def ray_lens(items: list[bytes]) -> list[int]:
    """The raw Ray reference's task for the input cases: ``len`` of each item of a batch."""
    return [len(item) for item in items]


def ray_make(items: list[int]) -> list[bytes]:
    """The raw Ray reference's task for the result case: a 1 MB result per item."""
    return [one_mb(i) for i in items]
