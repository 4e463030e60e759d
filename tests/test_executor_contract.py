"""The ``concurrent.futures.Executor`` contract, on every backend.

Each test runs one documented behaviour of the stdlib executors on ours and, in the
same test, on ``ProcessPoolExecutor`` (or plain Python where Python 3.11 has no such
feature, e.g. ``map(buffersize=)``), and compares the two: never numbers copied from
a run. Written from the documentation and CPython's own tests, sharing no code.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os

import pytest

import unidist_api as ua


def stdlib_pool(workers: int = 2) -> cf.ProcessPoolExecutor:
    return cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def square(x):
    return x * x


def touch(path):
    with open(path, "w") as f:
        f.write("ran")
    return path


def ran(paths):
    return sorted(os.path.basename(p) for p in paths if os.path.exists(p))


# --------------------------------------------------------------------------- construction
def test_positional_int_is_max_workers(ua_backend):
    with stdlib_pool(3) as stdlib:
        expected = stdlib._max_workers
    with ua.use(ua_backend):
        ours = ua.Executor(3)  # this backend, as the use() block says; not started
    try:
        assert (ours.backend, ours.settings.workers) == (ua_backend.backend, expected)
        if ours.backend != "serial":  # serial runs one task at a time, whatever it is given
            assert ours.workers == expected
    finally:
        ours.shutdown()
    with pytest.raises(TypeError):
        cf.ProcessPoolExecutor(2, max_workers=3)  # the stdlib refuses both forms at once
    with pytest.raises(TypeError, match="max_workers"):
        ua.Executor(2, max_workers=3)
