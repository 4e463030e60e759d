"""A failing ``initializer`` breaks the executor, as it breaks ``ProcessPoolExecutor``.

Each test runs one scenario on the backend under test and on
``concurrent.futures.ProcessPoolExecutor`` (spawn), and compares what the two do: the
tasks pending at the break fail with a ``concurrent.futures.BrokenExecutor`` without
running, every later call raises it at once, ``shutdown()`` works, a new executor works.
Ours also keeps the initializer's exception as the error's ``__cause__`` (the stdlib only
logs it in the worker).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import operator
import os
import uuid

import pytest

import unidist_api as ua
from unidist_api.errors import BrokenExecutorError, RemoteTraceback, UnidistError

TASKS = 4  # tasks submitted to a pool whose initializer fails


# --------------------------------------------------------------------------- worker code
def failing_init(message):
    raise ValueError(message)


def good_init(marker_dir):
    with open(os.path.join(marker_dir, f"init-{os.getpid()}"), "w") as fh:
        fh.write("ok")


def record(marker_dir, x):
    """A task with a side effect: a file that says it ran."""
    with open(os.path.join(marker_dir, f"ran-{x}-{uuid.uuid4().hex}"), "w") as fh:
        fh.write("ran")
    return x


def square(x):
    return x * x


# --------------------------------------------------------------------------- helpers
def stdlib_pool(initializer, *initargs):
    return cf.ProcessPoolExecutor(
        2,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=initializer,
        initargs=initargs,
    )


def our_pool(backend, initializer, *initargs):
    return ua.Executor(backend.backend, workers=2, initializer=initializer, initargs=initargs)


def submit_until_refused(executor, fn, *args):
    """Submit TASKS calls; those accepted, and the error a refused one raised at the call.

    Where the break shows at once (ours on serial and dask: the first submit runs or
    installs the initializer) the later submits are refused; elsewhere all are accepted
    and fail. Either way at least one is accepted, as on ProcessPoolExecutor.
    """
    accepted, refused = [], None
    for i in range(TASKS):
        try:
            accepted.append(executor.submit(fn, *args, i))
        except cf.BrokenExecutor as exc:
            refused = exc
    return accepted, refused


def break_it(executor, marker_dir):
    """Have the executor run its failing initializer; the errors of the tasks pending."""
    accepted, refused = submit_until_refused(executor, record, marker_dir)
    assert accepted, "the first submit must be accepted: it is what starts the workers"
    errors = [future.exception(timeout=120) for future in accepted]
    return accepted, errors, refused


def both(ua_backend, tmp_path, scenario):
    """Run ``scenario(executor, marker_dir, label)`` on ours and on the stdlib's pool, each
    with an initializer raising ValueError; return ``{"ours": ..., "stdlib": ...}``."""
    results = {}
    for label in ("ours", "stdlib"):
        marker_dir = tmp_path / label
        marker_dir.mkdir()
        message = f"no model for {label} {uuid.uuid4().hex}"
        make = (lambda *a: our_pool(ua_backend, *a)) if label == "ours" else stdlib_pool
        executor = make(failing_init, message)
        try:
            results[label] = scenario(executor, str(marker_dir), message)
        finally:
            executor.shutdown(wait=True)
    return results


# --------------------------------------------------------------------------- the contract
def test_pending_futures_fail_with_broken_executor(ua_backend, tmp_path):
    def scenario(executor, marker_dir, message):
        accepted, errors, refused = break_it(executor, marker_dir)
        return {
            "all pending failed": all(error is not None for error in errors),
            "all a BrokenExecutor": all(isinstance(e, cf.BrokenExecutor) for e in errors),
            "refused with a BrokenExecutor": refused is None
            or isinstance(refused, cf.BrokenExecutor),
            "types": {type(e) for e in errors},
        }

    seen = both(ua_backend, tmp_path, scenario)
    ours, stdlib = seen["ours"], seen["stdlib"]
    assert stdlib["all pending failed"] and stdlib["all a BrokenExecutor"]
    for key in ("all pending failed", "all a BrokenExecutor", "refused with a BrokenExecutor"):
        assert ours[key] == stdlib[key], key
    assert ours["types"] == {BrokenExecutorError}
    assert issubclass(BrokenExecutorError, UnidistError)
    assert issubclass(BrokenExecutorError, RuntimeError)  # as BrokenProcessPool


def test_pending_tasks_never_run_user_code(ua_backend, tmp_path):
    def scenario(executor, marker_dir, message):
        break_it(executor, marker_dir)
        ran_submit = sorted(os.listdir(marker_dir))
        with pytest.raises(cf.BrokenExecutor):  # map: at the call, or while iterating
            list(executor.map(record, [marker_dir] * TASKS, range(TASKS)))
        return ran_submit, sorted(os.listdir(marker_dir))

    seen = both(ua_backend, tmp_path, scenario)
    assert seen["stdlib"] == ([], [])
    assert seen["ours"] == seen["stdlib"]


def test_every_call_after_the_break_raises_at_the_call(ua_backend, tmp_path):
    def scenario(executor, marker_dir, message):
        break_it(executor, marker_dir)
        calls = {
            "submit": lambda: executor.submit(square, 2),
            "map": lambda: executor.map(square, range(3)),  # not iterated: raises itself
        }
        if isinstance(executor, ua.Executor):
            calls.update(
                {
                    "pipeline": lambda: executor.pipeline(square),
                    "reduce": lambda: executor.reduce(operator.add, range(4)),
                    "put": lambda: executor.put("value"),
                }
            )
        raised = {}
        for name, call in calls.items():
            try:
                call()
            except Exception as exc:
                raised[name] = exc
        return {name: type(raised.get(name)) for name in calls}, raised

    seen = both(ua_backend, tmp_path, scenario)
    (ours, our_errors), (stdlib, _) = seen["ours"], seen["stdlib"]
    assert all(issubclass(kind, cf.BrokenExecutor) for kind in stdlib.values()), stdlib
    assert {name: issubclass(ours[name], cf.BrokenExecutor) for name in stdlib} == {
        name: True for name in stdlib
    }
    assert set(ours.values()) == {BrokenExecutorError}, ours
    assert set(our_errors) == {"submit", "map", "pipeline", "reduce", "put"}


def test_shutdown_after_the_break_works_and_stops_everything(ua_backend, tmp_path, ua_no_leftovers):
    seen = {}
    for label in ("ours", "stdlib"):
        marker_dir = tmp_path / label
        marker_dir.mkdir()
        if label == "ours":
            executor = our_pool(ua_backend, failing_init, "no model")
        else:
            executor = stdlib_pool(failing_init, "no model")
        with executor:  # __exit__ is shutdown(wait=True)
            _, errors, _ = break_it(executor, str(marker_dir))
        executor.shutdown()  # again: a no-op
        try:  # after shutdown: still broken (ProcessPoolExecutor checks that first)
            executor.submit(square, 2)
            after = None
        except Exception as exc:
            after = exc
        seen[label] = (
            all(isinstance(e, cf.BrokenExecutor) for e in errors),
            isinstance(after, cf.BrokenExecutor),
        )
    assert seen["stdlib"] == (True, True)
    assert seen["ours"] == seen["stdlib"]
    # and ua_no_leftovers fails the test if a process it started outlives it


def test_a_new_executor_works_after_the_break(ua_backend, tmp_path):
    results = {}
    for label in ("ours", "stdlib"):
        marker_dir = tmp_path / label
        marker_dir.mkdir()
        make = (lambda *a: our_pool(ua_backend, *a)) if label == "ours" else stdlib_pool
        with make(failing_init, "no model") as broken:
            _, errors, _ = break_it(broken, str(marker_dir))
        assert all(isinstance(e, cf.BrokenExecutor) for e in errors), (label, errors)
        with make(good_init, str(marker_dir)) as fresh:
            results[label] = (
                list(fresh.map(square, range(6))),
                fresh.submit(square, 7).result(timeout=120),
            )
        assert any(name.startswith("init-") for name in os.listdir(marker_dir)), label
    assert results["ours"] == results["stdlib"]


def test_the_initializer_error_is_the_cause(ua_backend, tmp_path, capfd):
    def scenario(executor, marker_dir, message):
        _, errors, _ = break_it(executor, marker_dir)
        return errors[0], capfd.readouterr().err  # what the workers logged meanwhile

    capfd.readouterr()
    seen = both(ua_backend, tmp_path, scenario)
    (ours, _), (stdlib, stdlib_log) = seen["ours"], seen["stdlib"]
    # both are a BrokenExecutor; the stdlib gives the initializer's error only in its log
    assert isinstance(stdlib, cf.BrokenExecutor) and isinstance(ours, cf.BrokenExecutor)
    assert (
        "Exception in initializer" in stdlib_log and "ValueError: no model for stdlib" in stdlib_log
    )
    # ours keeps it: __cause__ is the initializer's own exception, with its traceback
    cause = ours.__cause__
    assert isinstance(cause, ValueError), repr(cause)
    assert str(cause).startswith("no model for ours")
    assert isinstance(cause.__cause__, RemoteTraceback)
    assert "failing_init" in cause.__cause__.tb and "ValueError: no model" in cause.__cause__.tb
    text = str(ours)
    assert "failing_init" in text and "broken" in text and "new executor" in text
    assert "fix the initializer" in text.lower()
