"""Fail-fast: the first error ends map, pipeline and reduce promptly, on every backend.

One item fails at once while every other item would sleep ``SLEEP`` seconds: the
error must come out within ``PROMPT`` seconds, and the work still queued must be
cancelled in the engine (a task that starts writes a marker file). Sleeping tasks
wait for a release file, written when the test ends, so the workers are free again
for the next test (running tasks cannot be interrupted on any backend).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import unidist_api as ua

SLEEP = 120.0  # what a task not meant to run would take
PROMPT = 30.0  # the error must come much sooner than that


def _hold(folder: str, x: int) -> None:
    """Mark ``x`` as started, then sleep until released (or ``SLEEP`` passes)."""
    Path(folder, f"started-{x}").touch()
    deadline = time.monotonic() + SLEEP
    while time.monotonic() < deadline and not Path(folder, "release").exists():
        time.sleep(0.05)


def fail_first(folder: str, x: int) -> int:
    """Item 0 fails at once; every other item sleeps."""
    if x == 0:
        raise ValueError("item 0 failed")
    _hold(folder, x)
    return x


def fail_at(bad: int, folder: str, x: int) -> int:
    if x == bad:
        raise ValueError(f"item {bad} failed")
    _hold(folder, x)
    return x


def quick_first(folder: str, x: int) -> int:
    """Item 0 returns at once; every other item sleeps."""
    if x:
        _hold(folder, x)
    return x


def same(x: int) -> int:
    return x


def combine(folder: str, a: int, b: int) -> int:
    """The combination with item 0 fails at once; those of large sums sleep.

    (The first ones are quick, so the failing one is not queued behind sleepers.)
    """
    if a == 0 or b == 0:
        raise ValueError("combining item 0 failed")
    if a + b >= 600:
        _hold(folder, a * 100_000 + b)
    return a + b


def started(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("started-*")}


@pytest.fixture
def folder(tmp_path: Path, ua_backend: ua.Executor) -> Iterator[Path]:
    """A marker folder; at the end the sleepers are released and the workers drained."""
    yield tmp_path
    (tmp_path / "release").touch()
    settle(ua_backend)


def settle(executor: ua.Executor) -> None:
    """Wait until tasks queued before now have started (the engines run in FIFO order)."""
    if not executor.is_shutdown:
        list(executor.map(same, range(4 * executor.workers), chunksize=1))


@contextlib.contextmanager
def prompt() -> Iterator[None]:
    began = time.monotonic()
    yield
    elapsed = time.monotonic() - began
    assert elapsed < PROMPT, f"the error came after {elapsed:.0f} s, not at once"


def counted(n: int, taken: list[int]) -> Iterator[int]:
    """``range(n)``, recording how many items were read."""
    for x in range(n):
        taken.append(x)
        yield x


# -- the error comes promptly ---------------------------------------------------------------
def test_ordered_map_fails_fast(ua_backend: ua.Executor, folder: Path) -> None:
    with prompt(), pytest.raises(ValueError, match="item 0 failed"):
        list(ua.map(functools.partial(fail_first, str(folder)), range(40), chunksize=1))


def test_ordered_map_fails_fast_automatic_batches(ua_backend: ua.Executor, folder: Path) -> None:
    with prompt(), pytest.raises(ValueError, match="item 0 failed"):
        list(ua.map(functools.partial(fail_first, str(folder)), range(40)))


def test_unordered_map_fails_fast(ua_backend: ua.Executor, folder: Path) -> None:
    # on serial every item before the failing one runs first, by definition
    bad = 0 if ua_backend.backend == "serial" else 1
    fn = functools.partial(fail_at, bad, str(folder))
    with prompt(), pytest.raises(ValueError, match=f"item {bad} failed"):
        list(ua.map(fn, range(40), chunksize=1, ordered=False))


def test_pipeline_fails_fast_in_last_stage(ua_backend: ua.Executor, folder: Path) -> None:
    run = ua.pipeline(same, functools.partial(fail_first, str(folder)))
    with prompt(), pytest.raises(ValueError, match="item 0 failed"):
        list(run(range(40), chunksize=1))


def test_pipeline_fails_fast_in_first_stage(ua_backend: ua.Executor, folder: Path) -> None:
    run = ua.pipeline(functools.partial(fail_first, str(folder)), same)
    with prompt(), pytest.raises(ValueError, match="item 0 failed"):
        list(run(range(40), chunksize=1))


def test_reduce_fails_fast(ua_backend: ua.Executor, folder: Path) -> None:
    with prompt(), pytest.raises(ValueError, match="combining item 0 failed"):
        ua.reduce(functools.partial(combine, str(folder)), range(200))


def test_reduce_fails_fast_long_input(ua_backend: ua.Executor, folder: Path) -> None:
    # enough items to fill the window of block tasks: the reduce stops reading input
    taken: list[int] = []
    with prompt(), pytest.raises(ValueError, match="combining item 0 failed"):
        ua.reduce(functools.partial(combine, str(folder)), counted(10_000, taken))
    assert len(taken) < 10_000, "the reduce read the whole input after the failure"


# -- outstanding work is cancelled in the engine ----------------------------------------------
def beyond_cancel(executor: ua.Executor, submitted: int) -> int:
    """How many submitted tasks may start although cancelled (docs/reliability.md)."""
    if executor.backend == "local":  # running, plus loky's call queue of 2 * workers + 1
        return 3 * executor.workers + 1
    if executor.backend == "ray":  # running, plus one a freed worker starts while the
        return 2 * executor.workers  # facade is still cancelling the others
    return submitted  # dask hands tasks to workers eagerly (unless it queues them)


def release(executor: ua.Executor, folder: Path) -> None:
    """Let the sleeping tasks return."""
    (folder / "release").touch()


def _check_cancelled(executor: ua.Executor, folder: Path, submitted: int) -> None:
    """After the release, tasks that were queued must not start."""
    release(executor, folder)
    settle(executor)
    time.sleep(0.5)
    ran = len(started(folder))
    if executor.backend == "serial":
        assert ran == 0  # nothing after the failing item ever runs
    else:
        bound = beyond_cancel(executor, submitted)
        assert ran <= bound, f"{ran} of {submitted} queued tasks ran"
        if submitted > bound:
            assert ran < submitted


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
def test_map_cancels_queued_tasks_on_error(
    ua_backend: ua.Executor, folder: Path, ordered: bool
) -> None:
    taken: list[int] = []
    fn = functools.partial(fail_first, str(folder))
    buffersize = 8 * ua_backend.workers + 8
    with prompt(), pytest.raises(ValueError):
        list(ua.map(fn, counted(200, taken), chunksize=1, buffersize=buffersize, ordered=ordered))
    assert len(taken) <= buffersize + 1, "map read input beyond its buffer after the error"
    _check_cancelled(ua_backend, folder, len(taken) - 1)


@pytest.mark.ua_exclude("serial", reason="serial runs each task in submit: nothing is queued")
@pytest.mark.parametrize("how", ["close", "break"])
def test_map_cancels_queued_tasks_on_early_exit(
    ua_backend: ua.Executor, folder: Path, how: str
) -> None:
    taken: list[int] = []
    fn = functools.partial(quick_first, str(folder))
    stream = ua.map(fn, counted(200, taken), chunksize=1)
    if how == "close":
        assert next(stream) == 0
        stream.close()
    else:
        for x in stream:
            assert x == 0
            break
        del stream  # what leaving a function that holds the iterator does
    _check_cancelled(ua_backend, folder, len(taken) - 1)


def test_pipeline_cancels_later_batches_on_error(ua_backend: ua.Executor, folder: Path) -> None:
    taken: list[int] = []
    run = ua.pipeline(functools.partial(fail_first, str(folder)), same)
    with prompt(), pytest.raises(ValueError):
        list(run(counted(200, taken), chunksize=1))
    assert len(taken) < 200
    _check_cancelled(ua_backend, folder, len(taken) - 1)


def test_future_cancel_queued_task(ua_backend: ua.Executor, folder: Path) -> None:
    """A task queued behind busy workers is cancelled and never starts."""
    if ua_backend.backend == "serial":
        future = ua.submit(same, 1)
        assert future.cancel() is False  # done at submit
        return
    hold = functools.partial(fail_at, -1, str(folder))
    busy = [ua.submit(hold, i) for i in range(ua_backend.workers)]
    deadline = time.monotonic() + PROMPT
    while len(started(folder)) < len(busy) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(started(folder)) == len(busy), "the workers did not all start"
    queued = [ua.submit(hold, 1000 + i) for i in range(4 * ua_backend.workers + 4)]
    time.sleep(0.5)
    cancelled = [future.cancel() for future in queued]
    for future in busy:
        assert future.cancel() is False  # running: never interrupted
    (folder / "release").touch()
    assert [f.result(PROMPT) for f in busy] == list(range(len(busy)))
    settle(ua_backend)
    time.sleep(0.5)
    ran = {int(name.split("-")[1]) for name in started(folder)} - set(range(len(busy)))
    # local: loky's call queue holds 2 * workers + 1 tasks beyond cancelling; dask: the
    # scheduler may have sent a worker more tasks than it has threads; ray: none started
    assert sum(cancelled) >= len(queued) - (2 * ua_backend.workers + 1)
    refused = {1000 + i for i, ok in enumerate(cancelled) if not ok}
    assert ran == refused, "a task ran although cancelled, or did not although not"
    for future, ok in zip(queued, cancelled, strict=True):
        assert future.cancelled() is ok
