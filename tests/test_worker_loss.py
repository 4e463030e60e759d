"""Worker loss: a task whose worker process dies (os._exit, SIGKILL, segfault) is run
again, up to LOST_WORKER_RETRIES times, on every backend; map, pipeline and reduce do
not lose their work; a task that always kills its worker ends in WorkerLostError
naming it, and the executor stays usable (docs/reliability.md, "Worker loss").

Killing a worker costs a restart of one to three seconds on dask and ray: every test
kills few. Not on serial, whose tasks run in the test's own process.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import functools
import operator
import os
import signal
import threading
import time

import psutil
import pytest

import unidist_api as ua
from unidist_api.backends.base import LOST_WORKER_RETRIES
from unidist_api.errors import ExecutorShutdownError, WorkerLostError

pytestmark = pytest.mark.ua_exclude(
    "serial", reason="serial runs tasks in the caller's process: killing the worker kills the test"
)


# --------------------------------------------------------------------------- tasks
def die(how: str) -> None:
    """Kill the current (worker) process."""
    if how == "exit":
        os._exit(1)
    elif how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "segfault":
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    time.sleep(60)  # a signal may take a moment to land
    raise AssertionError(f"the worker survived {how}")


def die_once(marker: str, how: str = "exit") -> None:
    """Kill the worker the first time any task calls this (the marker file says so)."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    die(how)


def square_dying_once(marker: str, how: str, x: int) -> int:
    die_once(marker, how)
    return x * x


def square_dying_once_at(marker: str, at: int, x: int) -> int:
    if x == at:
        die_once(marker)
    return x * x


def add_dying_once(marker: str, a: int, b: int) -> int:
    die_once(marker)
    return a + b


def crash() -> None:
    os._exit(1)


def add(a: int, b: int) -> int:
    return a + b


def square(x: int) -> int:
    return x * x


def bump(counter: str) -> int:
    with open(counter, "a") as file:
        file.write("x")
    with open(counter) as file:
        return len(file.read())


def dies_then_raises_once(marker: str, counter: str) -> int:
    """First run kills the worker; the next raises once; then it succeeds."""
    die_once(marker)
    attempt = bump(counter)
    if attempt < 2:
        raise ValueError(f"attempt {attempt} failed")
    return attempt


@pytest.fixture
def killable(ua_backend):
    """The backend under test; never serial (module mark): its worker is the test process."""
    return ua_backend


# --------------------------------------------------------------------------- one death
@pytest.mark.parametrize("how", ["exit", "sigkill", "segfault"])
def test_task_whose_worker_dies_once_is_run_again(killable, tmp_path, how):
    marker = str(tmp_path / "died")
    assert killable.submit(square_dying_once, marker, how, 7).result(timeout=120) == 49
    assert os.path.exists(marker)  # the first run did die


def test_map_survives_a_lost_worker(killable, tmp_path):
    fn = functools.partial(square_dying_once_at, str(tmp_path / "died"), 17)
    items = range(50)
    assert list(ua.map(fn, items)) == list(map(square, items))
    assert (tmp_path / "died").exists()


def test_pipeline_survives_a_lost_worker(killable, tmp_path):
    fn = functools.partial(square_dying_once_at, str(tmp_path / "died"), 23)
    items = list(range(40))
    assert list(ua.pipeline(fn, str)(items)) == [str(square(x)) for x in items]
    assert (tmp_path / "died").exists()


def test_reduce_survives_a_lost_worker(killable, tmp_path):
    fn = functools.partial(add_dying_once, str(tmp_path / "died"))
    items = list(range(100))
    assert ua.reduce(fn, items) == functools.reduce(operator.add, items)
    assert (tmp_path / "died").exists()


def test_dependent_task_gets_the_rerun_value(killable, tmp_path):
    first = killable.submit(square_dying_once, str(tmp_path / "died"), "exit", 5)
    second = killable.submit(add, first, 1)
    assert second.result(timeout=120) == 26
    assert first.result() == 25


def test_lost_worker_does_not_use_up_retries(killable, tmp_path):
    # the loss is not counted by retries=1, which is left for the one ValueError
    task = ua.task(dies_then_raises_once, retries=1)
    counter = tmp_path / "attempts"
    assert killable.submit(task, str(tmp_path / "died"), str(counter)).result(timeout=120) == 2
    assert counter.read_text() == "xx"


# --------------------------------------------------------------------------- always dies
def test_task_that_always_kills_its_worker_fails_with_worker_lost(killable):
    future = killable.submit(crash)
    dependent = killable.submit(add, future, 1)
    with pytest.raises(WorkerLostError) as info:
        future.result(timeout=180)
    message = str(info.value)
    assert "'crash'" in message
    assert f"lost {LOST_WORKER_RETRIES + 1} times" in message
    assert f"at most {LOST_WORKER_RETRIES} times" in message
    assert "os._exit" in message  # the likely cause
    assert isinstance(info.value, RuntimeError)
    assert info.value.__cause__ is not None  # the engine's own error
    # a task taking the lost one's result fails with an error naming the lost task
    with pytest.raises(WorkerLostError, match="'crash'"):
        dependent.result(timeout=180)
    # the executor is still usable
    assert killable.submit(square, 3).result(timeout=120) == 9
    assert list(ua.map(square, range(20))) == [x * x for x in range(20)]


# --------------------------------------------------------------------------- local only
def test_local_shutdown_while_lost_tasks_are_resent():
    """Shutdown while the pool breaks and tasks are being sent again: no hang, no leftovers."""
    me = psutil.Process()
    before = set(me.children(recursive=True))
    ex = ua.Executor("local", workers=2)
    futures = [ex.submit(crash) for _ in range(4)]
    time.sleep(0.3)  # the first deaths and resends are under way
    closer = threading.Thread(target=ex.shutdown)
    closer.start()
    closer.join(timeout=60)
    assert not closer.is_alive(), "shutdown hung while lost tasks were being resent"
    done, _ = cf.wait(futures, timeout=60)
    assert len(done) == len(futures), "a future of a lost task never completed"
    for future in futures:
        assert isinstance(future.exception(), (WorkerLostError, ExecutorShutdownError))
    left = [p for p in me.children(recursive=True) if p not in before and _is_loky_worker(p)]
    _, alive = psutil.wait_procs(left, timeout=30)
    assert not alive, f"worker processes left behind: {alive}"


def _is_loky_worker(process: psutil.Process) -> bool:
    try:
        return "loky.backend.popen_loky_posix" in process.cmdline()
    except psutil.Error:  # gone meanwhile
        return False


# --------------------------------------------------------------------------- repeated kills
def pid_after(seconds: float, _: int) -> int:
    time.sleep(seconds)
    return os.getpid()


def test_workers_killed_again_and_again_are_all_replaced(ua_backend):
    """Killing every worker, round after round, leaves the executor with all its workers.

    On dask, Dask's cluster closes a nanny for good when no worker of its name is back
    ``lost-worker-timeout`` after a loss; it is shortened here so that happens within the
    test. The embedded cluster starts such nannies again (docs/reliability.md).
    """
    import dask.config

    with dask.config.set({"distributed.deploy.lost-worker-timeout": "0.3s"}):
        for _ in range(6):
            pids = set(
                ua_backend.map(
                    functools.partial(pid_after, 0.05),
                    range(4 * ua_backend.workers),
                    chunksize=1,
                    timeout=90,
                )
            )
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
    # every worker is back: as many run at once as before
    pids = set(
        ua_backend.map(
            functools.partial(pid_after, 0.5),
            range(4 * ua_backend.workers),
            chunksize=1,
            timeout=90,
        )
    )
    assert len(pids) >= ua_backend.workers, f"{len(pids)} of {ua_backend.workers} workers left"
