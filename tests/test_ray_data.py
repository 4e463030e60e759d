"""``ray``'s data plane (backends/ray/data.py): large buffers ride in Ray's object store.

A large buffer of a ``put`` object, of a task's arguments or of an input future is read
on the worker where Ray's object store maps it (a shared mapping: zero-copy), never as
a private copy; a result in the caller is its own private copy; and a value passed from
task to task is never unpickled in the caller. Ray only; Linux (``/proc/self/maps``);
no timings.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import pytest

import unidist_api as ua
from unidist_api.data import LARGE

pytestmark = [
    pytest.mark.ua_exclude("serial", "local", "dask", reason="Ray's object store"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps"),
]

N = 2 * LARGE // 8  # float64 items in 2 MiB


def make(n: int, seed: float = 1.0) -> np.ndarray:
    return np.arange(n, dtype=np.float64) * seed


def mapping(arr: np.ndarray) -> str:
    """How this process maps ``arr``'s memory: ``"shared <path>"`` or ``"private <path>"``."""
    address = arr.__array_interface__["data"][0]
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            low, high = (int(bound, 16) for bound in fields[0].split("-"))
            if low <= address < high:
                kind = "shared" if fields[1][3] == "s" else "private"
                return f"{kind} {fields[5].strip() if len(fields) > 5 else ''}".strip()
    return "unmapped"


def where(arr: np.ndarray) -> tuple[str, bool, float]:
    """On the worker: how it maps its input, whether it may write it, and its sum."""
    return mapping(arr), arr.flags.writeable, float(arr.sum())


def where_nested(value: dict[str, Any]) -> list[str]:
    return [mapping(arr) for arr in value["arrays"]]


class Refuses:
    """Holds an array; unpickling it in the process ``caller`` raises (it must not go there)."""

    def __init__(self, caller: int, arr: np.ndarray) -> None:
        self.caller, self.arr = caller, arr

    def __reduce__(self) -> tuple[Any, tuple[int, np.ndarray]]:
        return (_rebuild_refuses, (self.caller, self.arr))


def _rebuild_refuses(caller: int, arr: np.ndarray) -> Refuses:
    if os.getpid() == caller:
        raise RuntimeError("a value meant for the next task was unpickled in the caller")
    return Refuses(caller, arr)


def make_refuses(caller: int, n: int) -> Refuses:
    return Refuses(caller, make(n))


def sum_refuses(value: Refuses) -> float:
    return float(value.arr.sum())


def identity(value: Any) -> Any:
    return value


def fail_at(i: int, n: int) -> np.ndarray:
    if i == 13:
        raise ValueError(f"item {i} fails")
    return make(n, float(i))


# --------------------------------------------------------------------------- on the worker
def test_a_large_put_is_read_in_the_object_store(ua_backend):
    arr = make(N)
    handle = ua_backend.put(arr)
    seen = ua_backend.gather([ua_backend.submit(where, handle) for _ in range(4)])
    for kind, writable, total in seen:
        assert kind.startswith("shared"), kind  # Ray's store, not a private copy
        assert not writable and total == float(arr.sum())


def test_a_large_argument_is_read_in_the_object_store(ua_backend):
    arr = make(N, 3.0)
    kind, writable, total = ua_backend.submit(where, arr).result()
    assert kind.startswith("shared") and not writable and total == float(arr.sum())
    nested = ua_backend.submit(where_nested, {"arrays": [make(N), make(N, 2.0)]}).result()
    assert all(kind.startswith("shared") for kind in nested), nested


def test_a_large_input_future_is_read_in_the_object_store(ua_backend):
    first = ua_backend.submit(make, N, 2.0)
    kind, writable, total = ua_backend.submit(where, first).result()
    assert kind.startswith("shared") and not writable and total == float(make(N, 2.0).sum())


def test_a_small_argument_is_the_tasks_private_copy(ua_backend):
    kind, writable, _ = ua_backend.submit(where, np.ones(1000)).result()
    assert kind.startswith("private") and writable


# --------------------------------------------------------------------------- in the caller
def test_a_large_result_is_the_callers_private_copy(ua_backend):
    futures = [ua_backend.submit(make, N, float(i)) for i in range(3)]
    values = [futures[0].result(), *ua.gather(futures[1:])]  # one load, one bulk fetch
    for i, value in enumerate(values):
        assert mapping(value).startswith("private"), mapping(value)
        assert value.flags.writeable
        np.testing.assert_array_equal(value, make(N, float(i)))


def test_a_large_put_read_in_the_caller_is_its_private_copy(ua_backend):
    value = ua_backend.put(make(N)).result()
    assert mapping(value).startswith("private") and value.flags.writeable


def test_a_value_passed_on_never_enters_the_caller(ua_backend):
    made = ua_backend.submit(make_refuses, os.getpid(), N)
    assert ua_backend.submit(sum_refuses, made).result() == float(make(N).sum())
    assert ua_backend.gather([ua_backend.submit(sum_refuses, made)]) == [float(make(N).sum())]
    with pytest.raises(ua.errors.SerializationError, match="unpickled in the caller"):
        made.result()  # loading it here is refused: so the checks above can fail


def test_a_large_plain_pickle_stays_in_the_object_store(ua_backend):
    import ray  # the engine's own handle: the packed value as Ray keeps it

    small, large = ua_backend.submit(identity, b"x" * 100), ua_backend.submit(identity, N * [0.5])
    assert type(ray.get(small.handle)) is bytes  # the small-value path: one plain pickle
    kept = ray.get(large.handle)  # no Packed (no buffer out of band), and no bytes copy
    assert type(kept) is not bytes and memoryview(kept).nbytes >= LARGE
    assert small.result() == b"x" * 100 and large.result() == N * [0.5]


def test_a_failure_among_many_fetched_futures(ua_backend):
    futures = [ua_backend.submit(fail_at, i, N) for i in range(20)]
    with pytest.raises(ValueError, match="item 13 fails"):
        ua.gather(futures)
    for i, future in enumerate(futures):
        if i == 13:
            assert isinstance(future.exception(), ValueError)
        else:
            np.testing.assert_array_equal(future.result(), make(N, float(i)))
