"""Errors: task exceptions (type, message, remote traceback) from every entry
point, and the library's own errors in ua.errors."""

from __future__ import annotations

import operator
import re
import threading
import time

import pytest

import unidist_api as ua


# --------------------------------------------------------------------------- tasks
class CustomTaskError(Exception):
    pass


def square(x):
    return x * x


def identity(x):
    return x


def sleepy(x, delay):
    time.sleep(delay)
    return x


def raise_value_error(msg):
    raise ValueError(msg)


def raise_custom_error(a, b):
    raise CustomTaskError(a, b)


def fail_on_four(x):
    if x == 4:
        raise ZeroDivisionError(f"cannot handle {x}")
    return x


def combine_or_fail(a, b):
    raise ArithmeticError("cannot combine")


def make_lock():
    return threading.Lock()


def assert_remote_traceback(exc, fn_name):
    cause = exc.__cause__
    assert isinstance(cause, ua.errors.RemoteTraceback), (type(cause), cause)
    assert fn_name in str(cause)


# --------------------------------------------------------------------------- task exceptions
def test_result_reraises_with_type_message_and_traceback(ua_backend):
    fut = ua.submit(raise_value_error, "the message")
    with pytest.raises(ValueError) as info:
        fut.result()
    assert str(info.value) == "the message"
    assert_remote_traceback(info.value, "raise_value_error")


def test_exception_method_has_remote_traceback(ua_backend):
    exc = ua.submit(raise_value_error, "via exception()").exception()
    assert isinstance(exc, ValueError)
    assert str(exc) == "via exception()"
    assert_remote_traceback(exc, "raise_value_error")


def test_custom_exception_type_and_args(ua_backend):
    with pytest.raises(CustomTaskError) as info:
        ua.submit(raise_custom_error, "x", 2).result()
    assert info.value.args == ("x", 2)
    assert_remote_traceback(info.value, "raise_custom_error")


def test_map_reraises_with_type_message_and_traceback(ua_backend):
    with pytest.raises(ZeroDivisionError) as info:
        list(ua.map(fail_on_four, range(8)))
    assert str(info.value) == "cannot handle 4"
    assert_remote_traceback(info.value, "fail_on_four")


def test_unordered_map_reraises_with_traceback(ua_backend):
    with pytest.raises(ZeroDivisionError) as info:
        list(ua.map(fail_on_four, range(8), ordered=False))
    assert str(info.value) == "cannot handle 4"
    assert_remote_traceback(info.value, "fail_on_four")


def test_pipeline_reraises_with_type_message_and_traceback(ua_backend):
    p = ua.pipeline(identity, fail_on_four, square)
    with pytest.raises(ZeroDivisionError) as info:
        list(p(range(8)))
    assert str(info.value) == "cannot handle 4"
    assert_remote_traceback(info.value, "fail_on_four")


def test_reduce_reraises_with_type_message_and_traceback(ua_backend):
    with pytest.raises(ArithmeticError) as info:
        ua.reduce(combine_or_fail, [1, 2, 3, 4, 5])
    assert str(info.value) == "cannot combine"
    assert_remote_traceback(info.value, "combine_or_fail")


def test_gather_reraises_with_traceback(ua_backend):
    futs = [ua.submit(square, 2), ua.submit(raise_value_error, "in gather")]
    with pytest.raises(ValueError, match="in gather") as info:
        ua.gather(futs)
    assert_remote_traceback(info.value, "raise_value_error")


def test_lambda_exception(ua_backend):
    with pytest.raises(ZeroDivisionError):
        ua.submit(lambda x: x / 0, 1).result()


def test_executor_usable_after_task_exception(ua_backend):
    with pytest.raises(ValueError):
        ua.submit(raise_value_error, "x").result()
    assert ua.submit(square, 5).result() == 25


# --------------------------------------------------------------------------- unknown backend
def test_unknown_backend():
    with pytest.raises(ua.errors.UnknownBackendError) as info:
        ua.Executor("no_such_backend_xyz")
    assert isinstance(info.value, ValueError)
    msg = str(info.value)
    assert "no_such_backend_xyz" in msg
    assert "serial" in msg
    assert "local" in msg


def test_unknown_backend_error_is_value_error():
    assert issubclass(ua.errors.UnknownBackendError, ValueError)


def test_unknown_backend_in_use_block():
    with (
        pytest.raises(ua.errors.UnknownBackendError, match="serial"),
        ua.use("no_such_backend_xyz"),
    ):
        ua.current_executor()


def test_unknown_backend_in_configure():
    try:
        with pytest.raises(ua.errors.UnknownBackendError, match="local"):
            ua.configure("no_such_backend_xyz")
            ua.current_executor()
    finally:
        ua.configure(None)


# --------------------------------------------------------------------------- serialization
def test_unserializable_argument_raises_at_submit(ua_backend):
    lock = threading.Lock()
    with pytest.raises(ua.errors.SerializationError) as info:
        ua.submit(identity, lock)
    assert isinstance(info.value, TypeError)
    assert re.search("lock", str(info.value), re.IGNORECASE), str(info.value)
    assert ua.submit(square, 6).result() == 36


def test_unserializable_function_raises_at_submit(ua_backend):
    lock = threading.Lock()
    with pytest.raises(ua.errors.SerializationError) as info:
        ua.submit(lambda: lock.locked())  # a lambda closing over an unpicklable lock
    assert isinstance(info.value, TypeError)
    assert re.search("lock", str(info.value), re.IGNORECASE), str(info.value)
    assert ua.submit(square, 7).result() == 49


def test_unserializable_nested_argument_raises_at_submit(ua_backend):
    with pytest.raises(ua.errors.SerializationError, match="(?i)lock"):
        ua.submit(identity, {"key": [threading.Lock()]})
    assert ua.submit(square, 2).result() == 4


def test_unserializable_argument_in_map(ua_backend):
    with pytest.raises(ua.errors.SerializationError, match="(?i)lock"):
        list(ua.map(identity, [1, threading.Lock(), 3]))
    assert list(ua.map(square, [1, 2])) == [1, 4]


def test_unserializable_put(ua_backend):
    with pytest.raises(ua.errors.SerializationError, match="(?i)lock"):
        ua.put(threading.Lock())
    assert ua.put([1]).result() == [1]


def test_unserializable_result(ua_backend):
    with pytest.raises(ua.errors.SerializationError, match="(?i)lock"):
        ua.submit(make_lock).result()
    assert ua.submit(square, 3).result() == 9


def test_serialization_error_is_type_error():
    assert issubclass(ua.errors.SerializationError, TypeError)


# --------------------------------------------------------------------------- shutdown
def test_calls_after_shutdown_raise(ua_backend):
    ex = ua.Executor(ua_backend.backend)
    assert ex.backend == ua_backend.backend
    assert ex.submit(square, 2).result() == 4
    pending = ex.submit(sleepy, "finished", 0.1)
    ex.shutdown()
    # shutdown(wait=True) waits for pending work, as in concurrent.futures
    assert pending.done()
    assert pending.result() == "finished"

    with pytest.raises(ua.errors.ExecutorShutdownError, match="(?i)shut") as info:
        ex.submit(square, 2)
    assert isinstance(info.value, RuntimeError)
    with pytest.raises(ua.errors.ExecutorShutdownError, match="(?i)shut"):
        list(ex.map(square, range(3)))
    with pytest.raises(ua.errors.ExecutorShutdownError, match="(?i)shut"):
        ex.put([1, 2, 3])
    with pytest.raises(ua.errors.ExecutorShutdownError, match="(?i)shut"):
        ex.reduce(operator.add, [1, 2, 3])
    with pytest.raises(ua.errors.ExecutorShutdownError, match="(?i)shut"):
        list(ex.pipeline(square)(range(3)))

    ex.shutdown()  # a second shutdown is harmless

    # the fixture's executor of the same backend is unaffected
    assert ua.submit(square, 3).result() == 9
    assert ua_backend.submit(square, 4).result() == 16


def test_executor_shutdown_error_is_runtime_error():
    assert issubclass(ua.errors.ExecutorShutdownError, RuntimeError)


# -------------------------------------------------------------------------- missing backend package
def test_missing_backend_package():
    ua.registry.register_backend(
        "fakeengine", "unidist_api_missing_engine_xyz:Backend", extra="fakeengine"
    )
    try:
        assert "fakeengine" in ua.backends()
        with pytest.raises(ua.errors.BackendNotInstalledError) as info:
            ua.Executor("fakeengine")
        assert isinstance(info.value, ImportError)
        assert 'pip install "unidist-api[fakeengine]"' in str(info.value)
    finally:
        ua.registry.unregister_backend("fakeengine")
    assert "fakeengine" not in ua.backends()
    with pytest.raises(ua.errors.UnknownBackendError):
        ua.Executor("fakeengine")


def test_backend_not_installed_error_is_import_error():
    assert issubclass(ua.errors.BackendNotInstalledError, ImportError)
