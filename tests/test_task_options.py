"""ua.task: decorator and function forms, retries / retry_on, and options a
backend cannot honour (UnsupportedOptionError at submit time)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import unidist_api as ua


# --------------------------------------------------------------------------- tasks
def square(x):
    return x * x


def bump(path):
    """Increment the integer counter stored in a file; return the new value."""
    p = Path(path)
    n = int(p.read_text()) + 1 if p.exists() else 1
    p.write_text(str(n))
    return n


def flaky(counter, fail_times, exc_type=ValueError):
    """Fail the first `fail_times` attempts with `exc_type`, then return the attempt number."""
    n = bump(counter)
    if n <= fail_times:
        raise exc_type(f"attempt {n} failed")
    return n


def attempts(counter):
    p = Path(counter)
    return int(p.read_text()) if p.exists() else 0


@ua.task
def decorated_square(x):
    return x * x


@ua.task()
def decorated_square_parens(x):
    return x * x


@ua.task(retries=2)
def decorated_flaky(counter):
    return flaky(counter, 2)


# --------------------------------------------------------------------------- forms
def test_decorator_direct_call_calls_fn():
    assert decorated_square(7) == square(7)
    assert decorated_square_parens(8) == square(8)


def test_function_form_direct_call_calls_fn():
    t = ua.task(square, retries=1, cpus=1)
    assert t(9) == square(9)


def test_wrapped_function_keeps_name():
    assert ua.task(square).__name__ == "square"
    assert decorated_square.__name__ == "decorated_square"


def test_direct_call_does_not_retry(tmp_path):
    counter = tmp_path / "direct"
    t = ua.task(flaky, retries=3)
    with pytest.raises(ValueError, match="attempt 1"):
        t(str(counter), 1)
    assert attempts(counter) == 1


def test_decorated_task_submit(ua_backend):
    assert ua.submit(decorated_square, 5).result() == square(5)
    assert ua.submit(decorated_square_parens, 6).result() == square(6)


def test_function_form_submit_and_map(ua_backend):
    t = ua.task(square)
    assert ua.submit(t, 4).result() == square(4)
    assert list(ua.map(t, range(6))) == list(map(square, range(6)))


def test_task_with_default_resource_options(ua_backend):
    t = ua.task(square, cpus=1, gpus=0, memory=None, resources=None)
    assert ua.submit(t, 3).result() == 9
    assert list(ua.map(t, [1, 2])) == [1, 4]


def test_task_lambda(ua_backend):
    t = ua.task(lambda x: x + 10, retries=1)
    assert t(1) == 11
    assert ua.submit(t, 5).result() == 15


def test_task_in_executor_submit(ua_backend):
    assert ua_backend.submit(ua.task(square, retries=1), 11).result() == 121


# --------------------------------------------------------------------------- retries
def test_retries_enough_succeeds(ua_backend, tmp_path):
    counter = tmp_path / "c"
    t = ua.task(flaky, retries=2)
    assert ua.submit(t, str(counter), 2).result() == 3
    assert attempts(counter) == 3


def test_retries_too_few_raises_original_error(ua_backend, tmp_path):
    counter = tmp_path / "c"
    t = ua.task(flaky, retries=1)
    with pytest.raises(ValueError, match=r"attempt \d failed"):
        ua.submit(t, str(counter), 2).result()
    # retries=N means at most N + 1 attempts
    assert attempts(counter) == 2


def test_no_retries_by_default(ua_backend, tmp_path):
    counter = tmp_path / "c"
    t = ua.task(flaky)
    with pytest.raises(ValueError, match="attempt 1 failed"):
        ua.submit(t, str(counter), 1).result()
    assert attempts(counter) == 1


def test_retries_not_used_on_success(ua_backend, tmp_path):
    counter = tmp_path / "c"
    t = ua.task(flaky, retries=3)
    assert ua.submit(t, str(counter), 0).result() == 1
    assert attempts(counter) == 1


def test_decorated_retries(ua_backend, tmp_path):
    counter = tmp_path / "c"
    assert ua.submit(decorated_flaky, str(counter)).result() == 3
    assert attempts(counter) == 3


def test_retry_on_matching_exception_is_retried(ua_backend, tmp_path):
    counter = tmp_path / "c"
    t = ua.task(flaky, retries=2, retry_on=(ValueError,))
    assert ua.submit(t, str(counter), 2, ValueError).result() == 3
    assert attempts(counter) == 3


def test_retry_on_other_exception_raised_at_once(ua_backend, tmp_path):
    counter = tmp_path / "c"
    t = ua.task(flaky, retries=3, retry_on=(ValueError,))
    with pytest.raises(KeyError, match="attempt 1 failed"):
        ua.submit(t, str(counter), 2, KeyError).result()
    assert attempts(counter) == 1


def test_retry_on_matches_subclasses(ua_backend, tmp_path):
    counter = tmp_path / "c"
    t = ua.task(flaky, retries=1, retry_on=(LookupError,))
    assert ua.submit(t, str(counter), 1, KeyError).result() == 2
    assert attempts(counter) == 2


def test_retries_apply_in_map(ua_backend, tmp_path):
    counters = [str(tmp_path / f"item-{i}") for i in range(4)]
    t = ua.task(flaky, retries=1)
    assert list(ua.map(t, counters, [1] * 4)) == [2] * 4
    assert [attempts(c) for c in counters] == [2] * 4


@pytest.mark.parametrize("bad", [-1, -5])
def test_negative_retries_rejected(ua_backend, bad):
    with pytest.raises(ValueError, match="retries"):
        t = ua.task(square, retries=bad)
        ua.submit(t, 1).result()


def test_unknown_task_option_rejected():
    with pytest.raises(ua.errors.InvalidOptionError, match="bogus"):
        ua.task(square, bogus=1)


# --------------------------------------------------------------------------- unsupported options
def test_timeout_option_honoured(ua_backend):
    """timeout is honoured on every backend (its behaviour: tests/test_timeout.py)."""
    t = ua.task(square, timeout=5)
    assert t(3) == 9  # calling directly is still just the function
    assert ua.submit(t, 3).result() == 9


def test_gpus_option_unsupported_without_gpu(ua_backend):
    t = ua.task(square, gpus=1)
    with pytest.raises(ua.errors.UnsupportedOptionError, match="(?i)gpu") as info:
        ua.submit(t, 3)
    assert isinstance(info.value, ValueError)
    assert ua.submit(square, 4).result() == 16


def test_unsupported_option_via_executor_submit(ua_backend):
    t = ua.task(square, gpus=1)
    with pytest.raises(ua.errors.UnsupportedOptionError, match="(?i)gpu"):
        ua_backend.submit(t, 3)
    assert ua_backend.submit(square, 5).result() == 25


def test_unsupported_option_in_map(ua_backend):
    t = ua.task(square, gpus=1)
    with pytest.raises(ua.errors.UnsupportedOptionError, match="(?i)gpu"):
        list(ua.map(t, range(3)))
    assert list(ua.map(square, range(3))) == [0, 1, 4]


def test_unsupported_option_does_not_run_task(ua_backend, tmp_path):
    counter = tmp_path / "c"
    t = ua.task(flaky, gpus=1)
    with pytest.raises(ua.errors.UnsupportedOptionError):
        ua.submit(t, str(counter), 0)
    assert not os.path.exists(counter)
