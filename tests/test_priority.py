"""The ``priority`` task option: when more tasks wait than there are free worker slots,
higher priorities start first, equal ones in submission order (docs/semantics.md).

Each test holds every worker slot with blocker tasks (they wait for a file), submits
queued tasks with mixed priorities (priority-0 ones first and in between), then frees
the slots: the queued tasks record their start (one ``O_APPEND`` write each) and must
have started in priority order. On local, dask and ray the facade's gate admits them
(Dask also gets its own ``priority=``, which alone lets the tasks a worker took before
a higher one arrived run first); the gate engages with the executor's first task that
has a priority (here: the blockers). Serial runs each task when it is submitted.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import unidist_api as ua
from unidist_api.errors import InvalidOptionError, TaskTimeoutError, WorkerLostError

# (label, priority), in submission order; priority-0 ones first and interleaved
QUEUED = [("a", 0), ("b", 0), ("c", 5), ("d", 1), ("e", 0), ("f", 5), ("g", -2), ("h", 1)]
BY_PRIORITY = [label for label, _ in sorted(QUEUED, key=lambda item: -item[1])]  # stable: FIFO


def record(log: str, label: str) -> str:
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (label + "\n").encode())
    finally:
        os.close(fd)
    return label


def block(log: str, label: str, release: str) -> str:
    record(log, label)
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)
    return label


def started(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def wait_started(log: Path, labels: set[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not labels <= set(started(log)):
        assert time.monotonic() < deadline, f"blockers never started: {started(log)}"
        time.sleep(0.02)


def run_queued(ex: ua.Executor, tmp_path: Path, workers: int) -> list[str]:
    """Hold ``workers`` slots, queue QUEUED, free one slot: the start order of QUEUED."""
    log = tmp_path / "log"
    releases = [tmp_path / f"release{i}" for i in range(workers)]
    blocker = ua.task(block, priority=1)  # a priority: the gate engages from here on
    blockers = [
        ex.submit(blocker, str(log), f"B{i}", str(release)) for i, release in enumerate(releases)
    ]
    wait_started(log, {f"B{i}" for i in range(workers)})
    queued = [
        ex.submit(ua.task(record, priority=priority), str(log), label) for label, priority in QUEUED
    ]
    time.sleep(0.3)  # let every engine settle what it has queued
    releases[0].touch()  # one slot frees: the queued tasks run through it one by one
    assert [future.result(timeout=60) for future in queued] == [label for label, _ in QUEUED]
    for release in releases[1:]:
        release.touch()
    ua.wait(blockers, timeout=60)
    return [label for label in started(log) if not label.startswith("B")]


@pytest.mark.ua_exclude("serial", reason="serial runs each task when it is submitted")
def test_one_slot_starts_by_priority_fifo_among_equals(ua_backend, tmp_path):
    with ua.Executor(ua_backend.backend, workers=1) as ex:
        assert run_queued(ex, tmp_path, workers=1) == BY_PRIORITY


@pytest.mark.ua_exclude("serial", reason="serial runs each task when it is submitted")
def test_two_slots_start_by_priority(ua_backend, tmp_path):
    with ua.Executor(ua_backend.backend, workers=2) as ex:
        assert run_queued(ex, tmp_path, workers=2) == BY_PRIORITY


def hold_slots(ex: ua.Executor, tmp_path: Path, workers: int) -> tuple[Path, Path, list]:
    """Blockers (with a priority: the gate engages) on every slot; returns log, release, them."""
    log, release = tmp_path / "log", tmp_path / "release"
    blockers = [
        ex.submit(ua.task(block, priority=1), str(log), f"B{i}", str(release))
        for i in range(workers)
    ]
    wait_started(log, {f"B{i}" for i in range(workers)})
    return log, release, blockers


@pytest.mark.ua_exclude("serial", reason="serial runs each task when it is submitted")
def test_cancel_a_waiting_task_is_exact(ua_backend, tmp_path):
    with ua.Executor(ua_backend.backend, workers=1) as ex:
        log, release, blockers = hold_slots(ex, tmp_path, 1)
        waiting = [
            ex.submit(ua.task(record, priority=p), str(log), label)
            for label, p in (("x", 0), ("y", 3), ("z", 0))
        ]
        assert waiting[0].cancel() and waiting[1].cancel()
        assert waiting[0].cancelled() and waiting[1].cancelled()
        release.touch()
        assert waiting[2].result(timeout=60) == "z"
        ua.wait(blockers, timeout=60)
    assert started(log) == ["B0", "z"]


@pytest.mark.ua_exclude("serial", reason="serial runs each task when it is submitted")
def test_shutdown_waits_for_or_cancels_waiting_tasks(ua_backend, tmp_path):
    ex = ua.Executor(ua_backend.backend, workers=1)
    log, release, _ = hold_slots(ex, tmp_path, 1)
    waiting = [ex.submit(ua.task(record, priority=p), str(log), f"w{p}") for p in (0, 2)]
    release.touch()
    ex.shutdown(wait=True)
    assert [future.result(timeout=0) for future in waiting] == ["w0", "w2"]
    assert started(log) == ["B0", "w2", "w0"]

    other = tmp_path / "other"
    other.mkdir()
    ex = ua.Executor(ua_backend.backend, workers=1)
    log, release, blockers = hold_slots(ex, other, 1)
    waiting = [ex.submit(ua.task(record, priority=p), str(log), f"w{p}") for p in (0, 2)]
    release.touch()
    ex.shutdown(wait=True, cancel_futures=True)
    assert all(future.cancelled() for future in waiting)
    assert started(log) == ["B0"]


@pytest.mark.ua_exclude("serial", reason="serial runs each task when it is submitted")
def test_map_and_stage_tasks_carry_their_priority(ua_backend, tmp_path):
    with ua.Executor(ua_backend.backend, workers=1) as ex:
        log, release, blockers = hold_slots(ex, tmp_path, 1)
        low = ex.submit(record, str(log), "low")  # priority 0, submitted first
        urgent = ex.map(
            ua.task(record, priority=5), [str(log)] * 2, ["m1", "m2"], chunksize=1, buffersize=2
        )
        time.sleep(0.3)
        release.touch()
        assert list(urgent) == ["m1", "m2"]
        assert low.result(timeout=60) == "low"
        # a pipeline submits as it is iterated; its stage's priority reaches its tasks
        staged = ex.pipeline(ua.stage(record_label, priority=3))([str(log)])
        assert list(staged) == ["s"]
        ua.wait(blockers, timeout=60)
    assert started(log) == ["B0", "m1", "m2", "low", "s"]


@pytest.mark.ua_exclude("serial", reason="serial runs each task when it is submitted")
def test_a_task_waiting_for_its_input_takes_no_slot(ua_backend, tmp_path):
    """A high-priority task whose input waits behind it in the gate must not hold the
    slot the input needs (that would never free)."""
    with ua.Executor(ua_backend.backend, workers=1) as ex:
        log, release, blockers = hold_slots(ex, tmp_path, 1)
        first = ex.submit(ua.task(record, priority=0), str(log), "in")
        second = ex.submit(ua.task(join, priority=9), first, "out")
        release.touch()
        assert second.result(timeout=60) == "in+out"


def record_label(log: str) -> str:
    return record(log, "s")


def join(a: str, b: str) -> str:
    return f"{a}+{b}"


def test_serial_runs_each_task_when_submitted(ua_serial, tmp_path):
    log = tmp_path / "log"
    for label, priority in QUEUED:
        future = ua_serial.submit(ua.task(record, priority=priority), str(log), label)
        assert future.done()
    assert started(log) == [label for label, _ in QUEUED]


def test_priority_is_an_int():
    assert ua.task(record, priority=3).options.priority == 3
    assert ua.task(record).options.priority == 0
    assert ua.task(record, priority=-7).options.priority == -7
    for bad in (True, 1.5, "high", None):
        with pytest.raises(InvalidOptionError, match="priority must be an integer"):
            ua.task(record, priority=bad)


def test_stage_takes_priority():
    assert ua.stage(record, priority=4).options.priority == 4
    with pytest.raises(InvalidOptionError, match="priority"):
        ua.stage(record, priority=False)


def fails_at_three(x: int) -> int:
    if x == 3:
        raise ValueError("item 3 fails")
    time.sleep(0.01)
    return x


def crash(x: int) -> int:
    os._exit(1)


@pytest.mark.parametrize("backend", ["local", "dask", "ray"])
def test_fail_fast_timeouts_and_worker_loss_hold_with_the_gate_engaged(backend: str) -> None:
    """A fresh executor whose first task has a priority: the gate holds every task beyond
    the slots, and a failure, a timeout or a lost worker still ends its task as without it
    (each frees its slot: the executor then runs tasks as before)."""
    with ua.Executor(backend, workers=2) as ex:
        out = []
        with pytest.raises(ValueError, match="item 3 fails"):
            for value in ex.map(ua.task(fails_at_three, priority=1), range(40), chunksize=1):
                out.append(value)
        assert out == [0, 1, 2]
        with pytest.raises(TaskTimeoutError):
            ex.submit(ua.task(time.sleep, priority=2, timeout=0.5), 5).result(timeout=60)
        with pytest.raises(WorkerLostError):
            ex.submit(ua.task(crash, priority=3), 1).result(timeout=120)
        assert ex.submit(ua.task(abs, priority=1), -4).result(timeout=60) == 4
        assert list(ex.map(abs, range(-3, 0))) == [3, 2, 1]
