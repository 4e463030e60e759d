"""KeyboardInterrupt during a long map: a prompt, clean stop, nothing left running.

A real SIGINT goes to a program running a long ``ua.map`` on each backend; it must end
with KeyboardInterrupt within seconds, and no worker process it started may survive.
In-process, a KeyboardInterrupt raised in the loop consuming a map cancels the work
still queued, and the executor stays usable.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_fail_fast import beyond_cancel, quick_first, release, same, settle, started
from test_shutdown import _alive

import unidist_api as ua

PROGRAM = textwrap.dedent(
    """
    import os, sys, time
    import unidist_api as ua

    def pid(_):
        return os.getpid()

    def nap(x):
        time.sleep(120)
        return x

    pids = set(ua.map(pid, range(40)))
    print(" ".join(str(p) for p in sorted(pids)), flush=True)
    print("mapping", flush=True)
    for x in ua.map(nap, range(1000)):
        pass
    print("finished", flush=True)
    """
)


def _interrupted(
    backend: str, group: bool
) -> tuple[subprocess.CompletedProcess[str], set[int], float]:
    """Run PROGRAM, SIGINT it while its map runs; its result, worker pids, seconds to exit."""
    env = dict(os.environ, UNIDIST_API_BACKEND=backend)
    if backend == "serial":
        env.pop("UNIDIST_API_WORKERS", None)
    process = subprocess.Popen(
        [sys.executable, "-c", PROGRAM],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        pids = {int(p) for p in process.stdout.readline().split()}
        assert process.stdout.readline().strip() == "mapping", process.stderr
        time.sleep(2)  # the map's tasks are running
        sent = time.monotonic()
        if group:  # what Ctrl-C in a terminal does: the whole foreground group
            os.killpg(process.pid, signal.SIGINT)
        else:
            os.kill(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=90)
        took = time.monotonic() - sent
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    done = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return done, pids, took


@pytest.mark.parametrize("group", [False, True], ids=["sigint", "ctrl-c"])
def test_sigint_stops_a_long_map_and_its_workers(
    ua_backend: ua.Executor, group: bool, ua_no_leftovers: None
) -> None:
    done, pids, took = _interrupted(ua_backend.backend, group)
    assert done.returncode != 0
    assert "KeyboardInterrupt" in done.stderr, done.stderr
    assert "finished" not in done.stdout
    assert took < 60, f"the program took {took:.0f} s to stop after SIGINT"
    assert pids, "the program reported no task process ids"
    deadline = time.monotonic() + 20
    alive = [p for p in pids if _alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if _alive(p)]
    assert alive == [], f"worker processes {alive} outlived the interrupted program"


def test_keyboard_interrupt_in_loop_cancels_and_executor_stays_usable(
    ua_backend: ua.Executor, tmp_path: Path
) -> None:
    fn = functools.partial(quick_first, str(tmp_path))
    taken: list[int] = []
    if ua_backend.backend == "serial":  # its first batches run inside the map's first submit
        (tmp_path / "release").touch()

    def items() -> object:
        for x in range(200):
            taken.append(x)
            yield x

    try:
        with pytest.raises(KeyboardInterrupt):
            for x in ua.map(fn, items(), chunksize=1):
                assert x == 0
                raise KeyboardInterrupt
        release(ua_backend, tmp_path)
        settle(ua_backend)
        time.sleep(0.5)
        ran = len(started(tmp_path))
        if ua_backend.backend == "serial":
            assert len(taken) <= 4 + 1  # the first fill only
        else:
            bound = beyond_cancel(ua_backend, len(taken) - 1)
            assert ran <= bound, f"{ran} of {len(taken) - 1} ran"
            if len(taken) - 1 > bound:
                assert ran < len(taken) - 1
        # the same executor still works
        assert list(ua.map(same, range(20))) == list(range(20))
        assert ua_backend.submit(same, 5).result(timeout=60) == 5
    finally:
        (tmp_path / "release").touch()


@pytest.mark.ua_exclude("serial", reason="serial runs each task in submit: nothing waits")
def test_keyboard_interrupt_inside_the_map_wait(ua_backend: ua.Executor, tmp_path: Path) -> None:
    """A KeyboardInterrupt while the map waits for a result (a SIGINT there) cancels too."""
    import threading

    fn = functools.partial(quick_first, str(tmp_path))
    stream = ua.map(fn, range(1, 200), chunksize=1)
    main = threading.main_thread().ident
    assert main is not None and threading.get_ident() == main
    # a SIGINT to the waiting (main) thread, as the kernel delivers a process's SIGINT
    timer = threading.Timer(2.0, signal.pthread_kill, (main, signal.SIGINT))
    began = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            next(stream)
        assert time.monotonic() - began < 30
        stream.close()
        (tmp_path / "release").touch()
        settle(ua_backend)
        assert list(ua.map(same, range(5))) == list(range(5))
    finally:
        timer.cancel()
        (tmp_path / "release").touch()


# -- the suite's own check: no process left behind ----------------------------------------------
LEAKY = textwrap.dedent(
    """
    import subprocess

    import unidist_api as ua


    def test_clean(ua_backend):
        assert ua.submit(abs, -1).result() == 1


    def test_leaks_a_process(request):
        if request.config.getoption("-k") != "leak":
            return
        subprocess.Popen(["sleep", "300"])


    def test_leak_caught_per_test(ua_backend, ua_no_leftovers):
        if {flag!r}:
            subprocess.Popen(["sleep", "300"])
        assert ua.submit(abs, -1).result() == 1
    """
)


def _pytest(folder: Path, *args: str, leak: bool = False) -> subprocess.CompletedProcess[str]:
    (folder / "test_leaky.py").write_text(LEAKY.format(flag=leak))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--ua-backends=local",
            "--ua-check-leftovers",
            "--ua-leftover-grace=3",
            *args,
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_check_passes_a_clean_run(tmp_path: Path) -> None:
    done = _pytest(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "left behind" not in done.stdout


def test_check_fails_a_run_that_leaves_a_process(tmp_path: Path) -> None:
    done = _pytest(tmp_path, "-k", "leak")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "processes left behind" in done.stdout
    assert "sleep 300" in done.stdout


def test_fixture_fails_the_test_that_leaves_a_process(tmp_path: Path) -> None:
    done = _pytest(tmp_path, "-k", "per_test", leak=True)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "started during this test are still alive" in done.stdout
    assert "sleep 300" in done.stdout
    clean = _pytest(tmp_path, "-k", "per_test", leak=False)
    assert clean.returncode == 0, clean.stdout + clean.stderr
