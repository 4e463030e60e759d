"""The ``timeout`` task option on every backend, and ``timeout=`` of the waiting calls.

A task past its timeout raises TaskTimeoutError (also a TimeoutError) from result(),
map, pipeline and reduce, is not retried, and the executor stays usable; waiting
with ``timeout=`` raises the builtin TimeoutError promptly and leaves the task alone.
Bounds are generous: the machine is shared with other test runs.
"""

from __future__ import annotations

import concurrent.futures as cf
import signal
import threading
import time
from pathlib import Path

import pytest

import unidist_api as ua
from unidist_api.errors import TaskTimeoutError, UnsupportedOptionError

STUCK = 60.0  # seconds a stuck task would run without its timeout
PROMPT = 30.0  # what "well before STUCK" means on a busy machine


# --------------------------------------------------------------------------- tasks
def sleepy(seconds, value=None):
    time.sleep(seconds)
    return seconds if value is None else value


def spin(seconds):
    """Pure-Python CPU work for ``seconds`` (never blocks, never returns earlier)."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


def swallowing_sleep(seconds):
    """A task that catches every Exception and carries on: the timeout still stops it."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            spin(0.05)
        except Exception:
            pass
    return "finished"


def stuck_in_c(seconds, value=None):
    """Like a long C call that never returns to the interpreter: SIGALRM stays pending.

    (On Dask the task runs in a thread, where an asynchronous exception cannot stop
    ``time.sleep`` either.)
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    try:
        time.sleep(seconds)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
    return seconds if value is None else value


def count_then_sleep(counter, seconds):
    path = Path(counter)
    path.write_text(str(int(path.read_text()) + 1 if path.exists() else 1))
    time.sleep(seconds)
    return seconds


def maybe_stuck(x):
    if x == 3:
        time.sleep(STUCK)
    return x * 10


def add(a, b):
    return a + b


def slow_add(a, b):
    if a == 0:
        time.sleep(STUCK)
    return a + b


@ua.task(timeout=1)
def decorated_stuck(seconds):
    time.sleep(seconds)
    return seconds


@ua.task(timeout=30)
def decorated_fast(x):
    return x + 1


# --------------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True)
def _settle_dask_restarts(request):
    """After a test, wait for Dask workers being replaced (a task stuck in C code).

    The executors are shared by the whole session: a restart still under way would
    re-run the next test's tasks on another worker, which tests that count attempts
    would notice.
    """
    executor = (
        request.getfixturevalue("ua_backend") if "ua_backend" in request.fixturenames else None
    )
    yield
    for thread in list(getattr(getattr(executor, "_backend", None), "_restarting", [])):
        thread.join(60)


def assert_timed_out(info, name):
    err = info.value
    assert isinstance(err, TimeoutError)
    assert isinstance(err, ua.errors.UnidistError)
    text = str(err)
    assert name in text, text
    assert "timeout" in text and "Raise the task's timeout option" in text, text


# --------------------------------------------------------------------------- the option
def test_blocking_task_stopped(ua_backend):
    start = time.monotonic()
    future = ua_backend.submit(ua.task(sleepy, timeout=1), STUCK)
    with pytest.raises(TaskTimeoutError) as info:
        future.result()
    assert time.monotonic() - start < PROMPT
    assert_timed_out(info, "sleepy")
    assert ua_backend.submit(sleepy, 0, "ok").result(timeout=60) == "ok"


def test_cpu_bound_task_stopped(ua_backend):
    start = time.monotonic()
    with pytest.raises(TaskTimeoutError) as info:
        ua_backend.submit(ua.task(spin, timeout=1), STUCK).result()
    assert time.monotonic() - start < PROMPT
    assert_timed_out(info, "spin")


def test_task_catching_everything_still_stopped(ua_backend):
    start = time.monotonic()
    with pytest.raises(TaskTimeoutError):
        ua_backend.submit(ua.task(swallowing_sleep, timeout=1), STUCK).result()
    assert time.monotonic() - start < PROMPT


@pytest.mark.ua_exclude("serial", reason="serial runs the task in the caller: no worker to replace")
def test_task_stuck_in_c_stopped_and_worker_replaced(ua_backend):
    """A task the interrupt cannot reach: its worker is replaced, the others still finish."""
    others = [ua_backend.submit(sleepy, 0.5, i) for i in range(4)]
    start = time.monotonic()
    with pytest.raises(TaskTimeoutError) as info:
        ua_backend.submit(ua.task(stuck_in_c, timeout=1), STUCK).result()
    assert time.monotonic() - start < PROMPT
    assert_timed_out(info, "stuck_in_c")
    assert "replaced" in str(info.value) or "restarted" in str(info.value), str(info.value)
    assert [f.result(timeout=120) for f in others] == list(range(4))
    # the executor stays usable, with all its workers
    n = ua_backend.workers * 2
    assert list(ua_backend.map(add, range(n), range(n))) == [2 * i for i in range(n)]


def test_fast_task_with_timeout_returns(ua_backend):
    assert ua_backend.submit(ua.task(add, timeout=30), 2, 3).result(timeout=60) == 5
    futures = [ua_backend.submit(ua.task(sleepy, timeout=30), 0.01, i) for i in range(8)]
    assert [f.result(timeout=60) for f in futures] == list(range(8))


def test_timeout_is_per_attempt_and_final(ua_backend, tmp_path):
    """A timed-out attempt is not retried, whatever retries says."""
    counter = tmp_path / "attempts"
    t = ua.task(count_then_sleep, timeout=1, retries=3)
    with pytest.raises(TaskTimeoutError, match="not retried"):
        ua_backend.submit(t, str(counter), STUCK).result()
    assert int(counter.read_text()) == 1


def test_timeout_counts_from_start_not_queue(ua_backend):
    """Tasks queued behind others do not time out while they wait."""
    n = ua_backend.workers * 3
    t = ua.task(sleepy, timeout=5)
    futures = [ua_backend.submit(t, 1.0, i) for i in range(n)]
    assert [f.result(timeout=120) for f in futures] == list(range(n))


@pytest.mark.ua_exclude("serial", reason="serial runs one task at a time, in the caller")
def test_other_tasks_unaffected(ua_backend):
    others = [ua_backend.submit(sleepy, 0.5, i) for i in range(4)]
    with pytest.raises(TaskTimeoutError):
        ua_backend.submit(ua.task(sleepy, timeout=1), STUCK).result()
    assert [f.result(timeout=120) for f in others] == list(range(4))


def test_decorator_form(ua_backend):
    start = time.monotonic()
    with pytest.raises(TaskTimeoutError):
        ua_backend.submit(decorated_stuck, STUCK).result()
    assert time.monotonic() - start < PROMPT
    assert ua_backend.submit(decorated_fast, 1).result(timeout=60) == 2


def test_timeout_in_map(ua_backend):
    t = ua.task(maybe_stuck, timeout=1)
    start = time.monotonic()
    with pytest.raises(TaskTimeoutError) as info:
        list(ua_backend.map(t, range(8)))
    assert time.monotonic() - start < PROMPT
    assert_timed_out(info, "maybe_stuck")
    # the executor stays usable: the next map on it works
    assert list(ua_backend.map(t, [0, 1, 2])) == [0, 10, 20]
    assert list(ua_backend.map(add, range(20), range(20))) == [2 * i for i in range(20)]


def test_timeout_in_map_yields_items_before(ua_backend):
    t = ua.task(maybe_stuck, timeout=1)
    results = []
    with pytest.raises(TaskTimeoutError):
        for value in ua_backend.map(t, range(8), chunksize=1):
            results.append(value)
    assert results == [0, 10, 20]


def test_timeout_in_pipeline_stage(ua_backend):
    pipe = ua.pipeline(ua.stage(maybe_stuck, timeout=1), ua.stage(decorated_fast))
    start = time.monotonic()
    with ua.use(ua_backend), pytest.raises(TaskTimeoutError):
        list(pipe(range(6)))
    assert time.monotonic() - start < PROMPT
    with ua.use(ua_backend):
        assert list(pipe([0, 1, 2])) == [1, 11, 21]


def test_timeout_in_reduce(ua_backend):
    t = ua.task(slow_add, timeout=1)
    start = time.monotonic()
    with ua.use(ua_backend), pytest.raises(TaskTimeoutError):
        ua.reduce(t, range(6))
    assert time.monotonic() - start < PROMPT
    with ua.use(ua_backend):
        assert ua.reduce(t, range(1, 6)) == 15


def test_serial_refuses_timeout_off_the_main_thread():
    with ua.Executor("serial") as ex:
        errors = []

        def submit():
            try:
                ex.submit(ua.task(add, timeout=5), 1, 2)
            except UnsupportedOptionError as exc:
                errors.append(exc)

        thread = threading.Thread(target=submit)
        thread.start()
        thread.join()
        assert len(errors) == 1
        assert "main thread" in str(errors[0]) and "'local'" in str(errors[0])
        assert isinstance(errors[0], ValueError)
        assert ex.submit(ua.task(add, timeout=5), 1, 2).result() == 3  # on the main thread


# --------------------------------------------------------------------------- waiting with timeout=
NOT_SERIAL = pytest.mark.ua_exclude(
    "serial", reason="serial runs the task inside submit(): its future is always done"
)


@NOT_SERIAL
def test_result_timeout_is_prompt_and_harmless(ua_backend):
    future = ua_backend.submit(sleepy, 3, "done")
    start = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        future.result(timeout=0.5)
    assert time.monotonic() - start < 2.5
    assert not isinstance(info.value, TaskTimeoutError)
    with pytest.raises(TimeoutError):
        future.exception(timeout=0.2)
    assert future.result(timeout=60) == "done"


@NOT_SERIAL
def test_wait_and_as_completed_timeouts_are_prompt(ua_backend):
    futures = [ua_backend.submit(sleepy, 3, i) for i in range(2)]
    start = time.monotonic()
    done, not_done = ua.wait(futures, timeout=0.5)
    assert time.monotonic() - start < 2.5
    assert not done and len(not_done) == 2
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        list(ua.as_completed(futures, timeout=0.5))
    assert time.monotonic() - start < 2.5
    assert sorted(f.result(timeout=60) for f in futures) == [0, 1]


@NOT_SERIAL
def test_map_timeout_is_prompt(ua_backend):
    start = time.monotonic()
    results = ua_backend.map(sleepy, [3, 3])
    it = ua_backend.map(sleepy, [3, 3], timeout=0.5)
    with pytest.raises(TimeoutError):
        next(it)
    assert time.monotonic() - start < 2.5
    assert list(results) == [3, 3]


@NOT_SERIAL
def test_gather_after_result_timeout(ua_backend):
    futures = [ua_backend.submit(sleepy, 2, i) for i in range(3)]
    with pytest.raises(cf.TimeoutError):
        futures[0].result(timeout=0.2)
    assert ua_backend.gather(futures) == [0, 1, 2]
