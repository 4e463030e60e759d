"""``local``'s shared-memory files (backends/local/shm.py): large values cross through
files in /dev/shm, and every file is removed once nothing needs it: after handles and
futures are dropped, after a worker is killed mid-task, at shutdown, and when the caller
itself is killed. Local only; no timings.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np

import unidist_api as ua
from unidist_api.data import LARGE

N = 2 * LARGE // 8  # float64 items in 2 MiB


def make(n: int, seed: float = 1.0) -> np.ndarray:
    return np.arange(n, dtype=np.float64) * seed


def total(arr: np.ndarray) -> float:
    return float(arr.sum())


def die_with(arr: np.ndarray, marker: str) -> float:
    """Kill this worker the first time (marker file), else sum the input."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return float(arr.sum())


def slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def make_then_die(n: int, marker: str) -> np.ndarray:
    value = make(n)
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return value


def files(executor: ua.Executor) -> list[str]:
    store = executor._backend._store
    return [] if store is None or not os.path.isdir(store.dir) else sorted(os.listdir(store.dir))


def settle(executor: ua.Executor, expected: int, limit: float = 10.0) -> list[str]:
    """The store's files once at most ``expected`` remain (finalizers run after a gc)."""
    deadline = time.monotonic() + limit
    while True:
        gc.collect()
        left = files(executor)
        if len(left) <= expected or time.monotonic() > deadline:
            return left


def test_a_large_put_read_by_many_tasks_is_one_file():
    with ua.Executor("local", workers=2) as ex:
        handle = ex.put(make(N))
        sums = ua.gather([ex.submit(total, handle) for _ in range(8)])
        assert sums == [total(make(N))] * 8
        assert len(settle(ex, 1)) == 1
        del handle
        assert settle(ex, 0) == []


def test_results_and_arguments_leave_no_file_once_dropped():
    with ua.Executor("local", workers=2) as ex:
        futures = [ex.submit(make, N, float(i)) for i in range(4)]
        assert [total(f.result()) for f in futures] == [total(make(N, float(i))) for i in range(4)]
        assert len(settle(ex, 4)) == 4  # each result stays while its future lives
        assert ex.submit(total, make(N)).result() == total(make(N))  # an argument file
        del futures
        assert settle(ex, 0) == []


def test_a_map_and_a_pipeline_of_large_values_leave_no_file():
    with ua.Executor("local", workers=2) as ex:
        assert list(ex.map(total, [make(N, i) for i in range(6)])) == [
            total(make(N, i)) for i in range(6)
        ]
        assert list(ex.pipeline(make, total)([N] * 6)) == [total(make(N))] * 6
        assert settle(ex, 0) == []


def test_files_of_a_killed_worker_are_removed(tmp_path):
    with ua.Executor("local", workers=2) as ex:
        arr = make(N)
        assert ex.submit(die_with, arr, str(tmp_path / "a")).result(timeout=120) == total(arr)
        future = ex.submit(make_then_die, N, str(tmp_path / "b"))
        np.testing.assert_array_equal(future.result(timeout=120), make(N))
        assert (tmp_path / "a").exists() and (tmp_path / "b").exists()
        assert len(settle(ex, 1)) == 1  # only the result that is still referenced
        store_dir = ex._backend._store.dir
    assert not os.path.exists(store_dir)


def test_shutdown_removes_every_file():
    ex = ua.Executor("local", workers=2)
    handle = ex.put(make(N))
    result = ex.submit(make, N)
    assert result.result().flags.writeable
    store_dir = ex._backend._store.dir
    assert len(os.listdir(store_dir)) == 2
    ex.shutdown()
    assert not os.path.exists(store_dir)
    del handle


def test_a_killed_caller_leaves_no_file(tmp_path):
    program = textwrap.dedent(f"""
        import sys, time
        import numpy as np
        import unidist_api as ua
        ex = ua.Executor("local", workers=1)
        handle = ex.put(np.ones({N}))
        result = ex.submit(np.ones, {N})
        assert result.result().sum() == {N}
        assert len(ex._backend._store.files()) == 2
        print(ex._backend._store.dir, flush=True)
        time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
    try:
        store_dir = child.stdout.readline().strip()
        assert os.path.isdir(store_dir) and os.listdir(store_dir)
    finally:
        child.kill()
        child.wait(30)
        child.stdout.close()
    deadline = time.monotonic() + 30  # loky's resource tracker notices, then removes it
    while os.path.exists(store_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not os.path.exists(store_dir)


def test_a_result_stays_loadable_after_shutdown():
    with ua.Executor("local", workers=2) as ex:
        future = ex.submit(make, N, 2.0)
        handle = ex.put(make(N, 3.0))
        cf.wait([future])
        store_dir = ex._backend._store.dir
    assert not os.path.exists(store_dir)
    value = future.result()  # first loaded now: its mapping outlived the file
    assert value.flags.writeable
    np.testing.assert_array_equal(value, make(N, 2.0))
    np.testing.assert_array_equal(handle.result(), make(N, 3.0))


def test_tasks_queued_at_shutdown_without_wait_still_read_their_files():
    ex = ua.Executor("local", workers=1)
    first = ex.submit(slow, 0.5)
    handle = ex.put(make(N, 5.0))
    queued = [ex.submit(total, make(N, float(i))) for i in range(3)]
    queued.append(ex.submit(total, handle))
    store_dir = ex._backend._store.dir
    ex.shutdown(wait=False)
    assert first.result(timeout=60) == 0.5
    assert [f.result(timeout=60) for f in queued] == [
        *(total(make(N, float(i))) for i in range(3)),
        total(make(N, 5.0)),
    ]
    deadline = time.monotonic() + 10  # removed once the pool has finished
    while os.path.exists(store_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(store_dir)


def test_the_callers_writes_to_a_result_reach_no_task(ua_serial):
    with ua.Executor("local", workers=2) as ex:
        future = ex.submit(make, N)
        mine = future.result()
        mine[:] = -1.0  # copy-on-write: the caller's pages only
        assert ex.submit(total, future).result() == total(make(N))
        assert ua_serial.submit(total, future).result() == total(make(N))
        packed = future.serialized_result()  # what another backend is given
        assert float(np.frombuffer(packed.buffers[0]).sum()) == total(make(N))
        assert ex.submit(total, future).result() == total(make(N))


def test_a_large_pickle_put_is_one_file_and_a_small_one_none():
    with ua.Executor("local", workers=2) as ex:
        small = ex.put(list(range(10)))
        assert files(ex) == []
        items = list(range(100_000))  # ~500 KB of pickle, no large buffer
        large = ex.put(items)
        assert len(files(ex)) == 1
        assert ua.gather([ex.submit(len, large) for _ in range(4)]) == [len(items)] * 4
        assert ex.submit(sum, small).result() == 45
        del large
        assert settle(ex, 0) == []
