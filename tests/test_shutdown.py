"""Nothing we start outlives the program: checked on real processes, per backend."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import unidist_api as ua
from unidist_api.testing import leftovers

PROGRAM = textwrap.dedent(
    """
    import os, sys, time
    import unidist_api as ua

    def pid(_):
        return os.getpid()

    def sleep_long(x):
        time.sleep(2)
        return x

    pids = set(ua.map(pid, range(40)))
    if ua.current_executor().backend != "serial":  # serial would run them right here
        futures = [ua.submit(sleep_long, i) for i in range(2)]  # exit waits for them,
        stream = ua.map(sleep_long, range(4))                   # and runs this unconsumed map
        next(iter([stream]))
        time.sleep(0.5)
    print(" ".join(str(p) for p in sorted(pids)), flush=True)
    {ending}
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has exited: it only waits to be reaped by its parent
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def _worker_pids_after(ending: str, backend: str) -> tuple[set[int], list[int]]:
    env = dict(os.environ, UNIDIST_API_BACKEND=backend)
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM.format(ending=ending)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    pids = {int(p) for p in done.stdout.split()}
    deadline = time.monotonic() + 20  # processes get a moment to be reaped, no more
    alive = [p for p in pids if _alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if _alive(p)]
    return pids, alive


def test_no_worker_outlives_exit_without_shutdown(ua_backend):
    pids, alive = _worker_pids_after("", ua_backend.backend)
    assert pids, "the program reported no task process ids"
    assert alive == []


def test_no_worker_outlives_explicit_shutdown(ua_backend):
    pids, alive = _worker_pids_after("ua.shutdown(wait=False)", ua_backend.backend)
    assert pids
    assert alive == []


@pytest.mark.ua_exclude("serial", reason="serial starts no process")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_no_process_outlives_a_killed_caller(ua_backend, sig):
    """The caller is killed, no exit code runs: its workers go within 20 s, the rest soon.

    "The rest" is every process the caller had started. On ray, after a SIGKILL, Ray's
    own agent processes take up to about a minute to notice (docs/reliability.md).
    """
    env = dict(os.environ, UNIDIST_API_BACKEND=ua_backend.backend)
    caller = subprocess.Popen(
        [sys.executable, "-c", PROGRAM.format(ending="time.sleep(120)")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = caller.stdout.readline()
        pids = {int(p) for p in line.split()}
        assert pids, "the program reported no task process ids"
        started = leftovers.descendants(caller.pid)
        caller.send_signal(sig)
        caller.wait(timeout=30)
    finally:
        caller.kill()
        caller.wait()
        caller.stdout.close()
    deadline = time.monotonic() + 20
    alive = [p for p in pids if _alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if _alive(p)]
    assert alive == [], f"{len(alive)} of {len(pids)} worker processes outlived the caller"
    grace = 90 if ua_backend.backend == "ray" and sig == signal.SIGKILL else 20
    left = leftovers.wait_gone(started, grace)
    assert left == [], "\n".join(leftovers.describe(ident) for ident in left)


def test_shutdown_then_module_functions_start_afresh():
    with ua.use("serial"):
        pass
    executor = ua.Executor("serial")
    executor.shutdown()
    assert executor.is_shutdown
    # module functions are not tied to one executor: after ua.shutdown() they start anew
    ua.configure("serial")
    try:
        assert ua.submit(abs, -3).result() == 3
        first = ua.current_executor()
        ua.shutdown()
        assert first.is_shutdown
        assert ua.submit(abs, -4).result() == 4
        assert ua.current_executor() is not first
    finally:
        ua.configure(None)
        ua.shutdown()


def _slow_double(x: int) -> int:
    time.sleep(0.5)
    return 2 * x


def test_local_shutdown_wait_runs_tasks_still_waiting_for_inputs():
    """shutdown(wait=True) runs a task whose input was unfinished, as concurrent.futures does."""
    executor = ua.Executor("local", workers=1)
    first = executor.submit(_slow_double, 1)
    second = executor.submit(_slow_double, first)  # deferred until `first` is done
    executor.shutdown(wait=True)
    assert first.result(timeout=0) == 2
    assert second.result(timeout=0) == 4
