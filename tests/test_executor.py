"""ua.Executor as a concurrent.futures.Executor: subclassing, context manager,
initializer/initargs, map as a drop-in for ProcessPoolExecutor.map, and the
executor methods that mirror the module functions."""

from __future__ import annotations

import concurrent.futures as cf
import operator
import os
import time
import uuid
from pathlib import Path

import pytest

import unidist_api as ua

# The initializer leaves its state in the worker process's environment: that is
# process-global on every backend, whether this module's functions reach the
# workers by reference or by value (a by-value copy of a function gets its own
# copy of the module globals, so a plain global would not be shared with tasks).
INIT_ENV = "UA_TEST_INITIALIZER_TOKEN"


# --------------------------------------------------------------------------- tasks
def square(x):
    return x * x


def init_worker(marker_dir, token):
    os.environ[INIT_ENV] = token
    with open(os.path.join(marker_dir, f"init-{os.getpid()}"), "a") as fh:
        fh.write(token + "\n")


def probe(_):
    time.sleep(0.02)
    return os.getpid(), os.environ.get(INIT_ENV)


# --------------------------------------------------------------------------- types
def test_executor_is_concurrent_futures_executor(ua_backend):
    assert issubclass(ua.Executor, cf.Executor)
    assert isinstance(ua_backend, ua.Executor)
    assert isinstance(ua_backend, cf.Executor)


def test_future_is_concurrent_futures_future(ua_backend):
    assert issubclass(ua.Future, cf.Future)
    fut = ua_backend.submit(square, 3)
    assert isinstance(fut, ua.Future)
    assert fut.result() == 9


def test_fixture_executor_is_current(ua_backend):
    assert ua.current_executor() is ua_backend
    assert isinstance(ua_backend.backend, str)
    assert ua_backend.backend in ua.backends()


def test_serial_fixture(ua_backend, ua_serial):
    assert ua_serial.backend == "serial"
    assert ua_serial.submit(square, 8).result() == 64
    # using another executor explicitly does not change the current one
    assert ua.current_executor() is ua_backend


def test_workers_is_positive_int(ua_backend):
    assert isinstance(ua_backend.workers, int)
    assert ua_backend.workers >= 1


def test_backends_lists_builtin_names():
    names = list(ua.backends())
    assert "serial" in names
    assert "local" in names
    assert all(isinstance(n, str) for n in names)


# --------------------------------------------------------------------------- context manager
def test_context_manager(ua_backend):
    ex = ua.Executor(ua_backend.backend, workers=2)
    with ex as entered:
        assert entered is ex
        assert ex.backend == ua_backend.backend
        assert ex.submit(square, 5).result() == 25
        assert list(ex.map(square, range(4))) == [0, 1, 4, 9]
    with pytest.raises(RuntimeError):
        ex.submit(square, 5)
    # the fixture's executor is unaffected
    assert ua.submit(square, 6).result() == 36


def test_context_manager_waits_for_pending(ua_backend):
    with ua.Executor(ua_backend.backend, workers=2) as ex:
        futs = [ex.submit(square, i) for i in range(4)]
    assert all(f.done() for f in futs)
    assert [f.result() for f in futs] == [0, 1, 4, 9]


# --------------------------------------------------------------------------- initializer
def test_initializer_runs_in_every_worker_before_tasks(ua_backend, tmp_path, monkeypatch):
    # on a backend that runs tasks in this process the initializer sets the
    # variable here: make sure it is removed again after the test
    monkeypatch.setenv(INIT_ENV, "placeholder")
    monkeypatch.delenv(INIT_ENV)

    token = uuid.uuid4().hex
    ex = ua.Executor(
        ua_backend.backend, workers=2, initializer=init_worker, initargs=(str(tmp_path), token)
    )
    try:
        results = list(ex.map(probe, range(8), chunksize=1))
        results += [f.result() for f in [ex.submit(probe, i) for i in range(4)]]
    finally:
        ex.shutdown()

    assert len(results) == 12
    assert [tok for _, tok in results] == [token] * 12
    for pid in {pid for pid, _ in results}:
        marker = tmp_path / f"init-{pid}"
        assert marker.exists(), f"no initializer ran in process {pid}"
    for marker in tmp_path.glob("init-*"):
        assert marker.read_text().splitlines() == [token], "initializer ran more than once"


def test_initializer_with_lambda(ua_backend, tmp_path, monkeypatch):
    monkeypatch.setenv(INIT_ENV, "placeholder")
    monkeypatch.delenv(INIT_ENV)
    marker_dir = str(tmp_path)
    ex = ua.Executor(
        ua_backend.backend,
        workers=2,
        initializer=lambda tok: init_worker(marker_dir, tok),
        initargs=("lambda-token",),
    )
    try:
        got = [f.result() for f in [ex.submit(probe, i) for i in range(3)]]
    finally:
        ex.shutdown()
    assert [tok for _, tok in got] == ["lambda-token"] * 3
    assert list(Path(marker_dir).glob("init-*"))


# -------------------------------------------------------------------- map as in ProcessPoolExecutor
def test_executor_map_timeout_and_chunksize(ua_backend):
    got = ua_backend.map(square, range(20), timeout=60, chunksize=3)
    assert list(got) == list(map(square, range(20)))


def test_executor_map_several_iterables(ua_backend):
    a, b = [2, 3, 4, 5], [5, 2, 1]
    assert list(ua_backend.map(pow, a, b, chunksize=2)) == list(map(pow, a, b))


def test_executor_map_same_as_process_pool_style_usage(ua_backend):
    # code written for ProcessPoolExecutor: executor.map(fn, iterable) consumed in a loop
    out = []
    for value in ua_backend.map(square, [3, 1, 2]):
        out.append(value)  # noqa: PERF402
    assert out == [9, 1, 4]


# ------------------------------------------------------------------ methods mirror module functions
def test_executor_methods_mirror_module_functions(ua_backend):
    futs = [ua_backend.submit(square, i) for i in range(5)]
    assert ua_backend.gather(futs) == [0, 1, 4, 9, 16]
    assert set(ua_backend.as_completed(futs)) == set(futs)
    done, not_done = ua_backend.wait(futs)
    assert done == set(futs) and not not_done
    assert ua_backend.reduce(operator.add, range(10)) == sum(range(10))
    assert list(ua_backend.pipeline(square, str)(range(3))) == ["0", "1", "4"]
    assert ua_backend.put("value").result() == "value"


# ------------------------------------------------------------ initializer state in globals
# The pattern ProcessPoolExecutor users write: the initializer builds expensive state
# in a module global, tasks read it. It must work for functions shipped by value too
# (this test module is, like __main__ or a script's sibling module).
_MODEL = None


def load_model(scale):
    global _MODEL
    _MODEL = {"scale": scale}


def _scaled(x):
    return _MODEL["scale"] * x


def predict(x):
    return _scaled(x)  # through a helper: it must see the same globals


def test_initializer_global_state_is_seen_by_tasks(ua_backend):
    ex = ua.Executor(ua_backend.backend, workers=2, initializer=load_model, initargs=(10,))
    try:
        assert list(ex.map(predict, range(6), chunksize=1)) == [10 * x for x in range(6)]
        assert ex.submit(predict, 7).result() == 70
    finally:
        ex.shutdown()
