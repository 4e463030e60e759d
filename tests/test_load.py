"""Load: a 100k-item map and 10k futures in flight at once, on every backend.

They must complete with the right results and without the caller's memory blowing
up. Speed is not timed here beyond a generous sanity bound (the machine is shared);
``python -m benchmarks --only load`` measures how time per item scales with size.
"""

from __future__ import annotations

import gc
import time

import psutil  # installed with dask[distributed]

import unidist_api as ua

MAP_ITEMS = 100_000
FUTURES = 10_000
MEMORY_BOUND = 150 * 2**20  # bytes the caller's RSS may grow by
SANITY_SECONDS = 300  # "never pathological": a few seconds on local, ~20 s for dask futures


def inc(x):
    return x + 1


def rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def warm_up(executor: ua.Executor) -> None:
    """Start the engine and its threads first, so they are not counted as growth."""
    assert list(executor.map(inc, range(1000))) == list(range(1, 1001))
    assert executor.gather([executor.submit(inc, i) for i in range(100)]) == list(range(1, 101))


def test_map_of_100k_items(ua_backend):
    warm_up(ua_backend)
    before = rss()
    started = time.monotonic()
    results = list(ua.map(inc, range(MAP_ITEMS)))
    elapsed = time.monotonic() - started
    assert results == list(map(inc, range(MAP_ITEMS)))
    del results
    grown = rss() - before
    assert grown < MEMORY_BOUND, f"the caller grew by {grown / 2**20:.0f} MiB"
    assert elapsed < SANITY_SECONDS


def test_unordered_map_of_100k_items(ua_backend):
    results = list(ua.map(inc, range(MAP_ITEMS), ordered=False))
    assert sorted(results) == list(map(inc, range(MAP_ITEMS)))


def test_10k_concurrent_futures(ua_backend):
    """Submit 10k tasks before waiting for any; as_completed and gather see them all.

    On dask this is the slowest test of the file (~20 s on 2 cores: Dask's scheduler
    costs about 1-2 ms per task), yet kept at 10k: it is where a per-future cost would
    show. The embedded scheduler lives in the caller's process, so its state for the
    10k tasks counts in the caller's memory here too.
    """
    warm_up(ua_backend)
    before = rss()
    started = time.monotonic()
    futures = [ua.submit(inc, i) for i in range(FUTURES)]
    finished = list(ua.as_completed(futures, timeout=SANITY_SECONDS))
    assert len(finished) == FUTURES
    assert {id(future) for future in finished} == {id(future) for future in futures}
    assert ua.gather(futures) == list(map(inc, range(FUTURES)))
    assert time.monotonic() - started < SANITY_SECONDS
    del futures, finished
    grown = rss() - before
    assert grown < MEMORY_BOUND, f"the caller grew by {grown / 2**20:.0f} MiB"
