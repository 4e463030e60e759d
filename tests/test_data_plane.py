"""The data plane (docs/semantics.md, "Large values"): large buffers arrive read-only,
small values are each task's own copy, results are the caller's own and writable.

A buffer of at least ``ua.data.LARGE`` (1 MiB) bytes that pickles out of band (a
contiguous NumPy array) inside a task's arguments, a ``put`` object or an input future
arrives read-only on every backend, so a task that writes into one fails the same way
everywhere; each test compares what a task saw with the serial backend, the reference.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import unidist_api as ua
from unidist_api.data import LARGE

BIG = LARGE // 8  # float64 items in exactly 1 MiB
SMALL = 1000


def big(seed: float = 1.0, n: int = 2 * BIG) -> np.ndarray:
    return np.arange(n, dtype=np.float64) * seed


# --------------------------------------------------------------------------- tasks
def inspect(arr: np.ndarray) -> tuple[bool, float, tuple[int, ...], str]:
    """What a task sees of an array: writable?, its sum, shape, dtype."""
    return arr.flags.writeable, float(arr.sum()), arr.shape, str(arr.dtype)


def try_write(arr: np.ndarray) -> str:
    """Write into the array; the outcome (the error's type and text, or "written")."""
    try:
        arr[0] = -1.0
    except ValueError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "written"


def write_copy(arr: np.ndarray) -> float:
    """The documented way to modify a large input: copy it first."""
    mine = arr.copy()
    mine[:] = 2.0
    return float(mine.sum())


def inspect_nested(value: dict[str, list[np.ndarray]]) -> list[bool]:
    return [arr.flags.writeable for arr in value["arrays"]]


def inspect_kw(*, arr: np.ndarray) -> bool:
    return arr.flags.writeable


def make(n: int, seed: float = 1.0) -> np.ndarray:
    return np.arange(n, dtype=np.float64) * seed


def identity(value: object) -> object:
    return value


def mutate_then_fail_once(marker: str, small: np.ndarray, large: np.ndarray) -> list[float]:
    """First attempt: change what it can of its inputs, then raise; the retry reports them."""
    seen = [float(small.sum()), float(large.sum())]
    if not os.path.exists(marker):
        open(marker, "w").close()
        small[:] = 0.0  # the attempt's own copy
        try_write(large)  # read-only: refused
        raise RuntimeError("first attempt fails")
    return seen


class Holder:
    """A class of this (test) module, shipped by value, holding a large array."""

    def __init__(self, arr: np.ndarray) -> None:
        self.arr = arr


def make_holder(n: int) -> Holder:
    return Holder(make(n))


def after(_gate: object, value: object) -> object:
    """What a task that first waited for ``_gate`` sees of ``value``."""
    if isinstance(value, np.ndarray):
        return inspect(value)
    return value


# --------------------------------------------------------------------------- arguments
def test_large_argument_arrives_read_only(ua_backend, ua_serial):
    arr = big()
    seen = ua_backend.submit(inspect, arr).result()
    assert seen == ua_serial.submit(inspect, arr).result()
    assert seen == (False, float(arr.sum()), arr.shape, "float64")
    assert arr.flags.writeable  # the caller's own array is untouched


def test_writing_into_a_large_argument_fails_the_same_everywhere(ua_backend, ua_serial):
    arr = big()
    outcome = ua_backend.submit(try_write, arr).result()
    assert outcome == ua_serial.submit(try_write, arr).result()
    assert outcome.startswith("ValueError") and "read-only" in outcome
    assert arr[0] == 0.0


def test_a_large_array_that_is_not_contiguous_arrives_read_only_too(ua_backend, ua_serial):
    """A column block (``np.split(axis=1)``) or a strided view is large too: NumPy pickles it
    in band, as a writable copy, unless it is made contiguous first."""
    grid = np.arange(4 * BIG, dtype=np.float64).reshape(-1, 8)
    column_block, strided = np.split(grid, 2, axis=1)[0], big(n=8 * BIG)[::4]
    for arr in (column_block, strided):
        assert not arr.flags.c_contiguous and arr.nbytes >= LARGE
        seen = ua_backend.submit(inspect, arr).result()
        assert seen == ua_serial.submit(inspect, arr).result()
        assert seen == (False, float(arr.sum()), arr.shape, "float64")
        assert ua_backend.put(arr).result().tolist() == arr.tolist()  # values kept
        assert ua_backend.submit(inspect, ua_backend.put(arr)).result()[0] is False


def test_a_copy_of_a_large_input_is_writable(ua_backend):
    arr = big()
    assert ua_backend.submit(write_copy, arr).result() == 2.0 * arr.size


def test_small_argument_is_the_tasks_own_copy(ua_backend, ua_serial):
    arr = np.ones(SMALL)
    assert ua_backend.submit(try_write, arr).result() == "written"
    assert ua_serial.submit(try_write, arr).result() == "written"
    assert arr[0] == 1.0  # the task wrote into its copy, not into the caller's array


def test_the_threshold_is_one_mebibyte(ua_backend, ua_serial):
    below, at = np.ones(BIG - 1), np.ones(BIG)
    seen = [ua_backend.submit(inspect, arr).result()[0] for arr in (below, at)]
    assert seen == [ua_serial.submit(inspect, arr).result()[0] for arr in (below, at)]
    assert seen == [True, False]


def test_large_arrays_inside_containers_and_keywords(ua_backend, ua_serial):
    value = {"arrays": [big(), np.ones(SMALL), big(2.0)]}
    seen = ua_backend.submit(inspect_nested, value).result()
    assert seen == ua_serial.submit(inspect_nested, value).result() == [False, True, False]
    assert ua_backend.submit(inspect_kw, arr=big()).result() is False


def test_shape_dtype_and_order_survive(ua_backend):
    fortran = np.asfortranarray(np.arange(2 * BIG, dtype=np.float32).reshape(512, -1))
    ints = np.arange(3 * BIG, dtype=np.int16).reshape(3, -1)
    for arr in (fortran, ints):
        back = ua_backend.submit(identity, arr).result()
        assert back.dtype == arr.dtype and back.shape == arr.shape
        assert back.flags.f_contiguous == arr.flags.f_contiguous
        np.testing.assert_array_equal(back, arr)


def test_large_items_of_a_map_arrive_read_only(ua_backend, ua_serial):
    items = [big(float(i)) for i in range(4)] + [np.ones(SMALL)]
    seen = list(ua_backend.map(inspect, items))
    assert seen == list(ua_serial.map(inspect, items))
    assert [s[0] for s in seen] == [False] * 4 + [True]


@pytest.mark.parametrize("waits", [False, True], ids=["queued", "waiting-for-an-input"])
def test_arguments_are_taken_at_submit(ua_backend, ua_serial, waits):
    """Changing an argument after submit does not reach the task, large or small."""
    busy = [ua_backend.submit(time.sleep, 0.3) for _ in range(ua_backend.workers)]
    gate = ua_backend.submit(time.sleep, 0.3) if waits else None
    arr, items = big(), [1, 2]
    seen_arr = ua_backend.submit(after, gate, arr)
    seen_items = ua_backend.submit(after, gate, items)
    arr[:] = 7.0
    items.append(3)
    assert seen_arr.result() == ua_serial.submit(after, None, big()).result()
    assert seen_arr.result() == (False, float(big().sum()), arr.shape, "float64")
    assert seen_items.result() == [1, 2]
    ua.wait(busy)


# --------------------------------------------------------------------------- put
def test_put_large_is_read_only_and_a_snapshot(ua_backend, ua_serial):
    arr = big()
    handle = ua_backend.put(arr)
    arr[:] = 7.0  # after put: tasks still see the value as it was put
    seen = ua_backend.submit(inspect, handle).result()
    reference = ua_serial.submit(inspect, ua_serial.put(big())).result()
    assert seen == reference == (False, float(big().sum()), arr.shape, "float64")
    assert ua_backend.submit(try_write, handle).result().startswith("ValueError")


def test_put_small_is_each_tasks_own_copy(ua_backend):
    handle = ua_backend.put(np.ones(SMALL))
    assert ua_backend.submit(try_write, handle).result() == "written"
    assert ua_backend.submit(inspect, handle).result()[:2] == (True, float(SMALL))


def test_put_handle_read_in_the_caller_is_writable(ua_backend):
    handle = ua_backend.put(big())
    value = handle.result()
    assert value.flags.writeable
    value[0] = 5.0  # the caller's own: tasks still see what was put
    assert ua_backend.submit(inspect, handle).result()[1] == float(big().sum())


# --------------------------------------------------------------------------- futures
def test_large_input_future_goes_worker_to_worker_read_only(ua_backend, ua_serial):
    first = ua_backend.submit(make, 3 * BIG, 2.0)
    seen = ua_backend.submit(inspect, first).result()
    reference = ua_serial.submit(inspect, ua_serial.submit(make, 3 * BIG, 2.0)).result()
    assert seen == reference == (False, float(make(3 * BIG, 2.0).sum()), (3 * BIG,), "float64")


def test_chain_of_large_values(ua_backend):
    value = ua_backend.submit(make, 2 * BIG)
    for _ in range(3):
        value = ua_backend.submit(write_copy, value)
        value = ua_backend.submit(make, 2 * BIG, value)
    expected = make(2 * BIG, 2.0 * 2 * BIG)
    np.testing.assert_array_equal(value.result(), expected)


def test_small_input_future_is_the_tasks_own_copy(ua_backend):
    first = ua_backend.submit(make, SMALL)
    assert ua_backend.submit(try_write, first).result() == "written"
    assert ua_backend.submit(inspect, first).result()[:2] == (True, float(make(SMALL).sum()))


def test_input_future_inside_a_container(ua_backend, ua_serial):
    futures = [ua_backend.submit(make, 2 * BIG), ua_backend.submit(make, SMALL)]
    seen = ua_backend.submit(inspect_nested, {"arrays": futures}).result()
    assert (
        seen
        == ua_serial.submit(inspect_nested, {"arrays": [make(2 * BIG), make(SMALL)]}).result()
        == [False, True]
    )


# --------------------------------------------------------------------------- retries
def test_a_retried_attempt_sees_its_original_inputs(ua_backend, tmp_path):
    small, large = np.ones(SMALL), big()
    fn = ua.task(mutate_then_fail_once, retries=1)
    seen = ua_backend.submit(fn, str(tmp_path / "failed"), small, large).result()
    assert seen == [float(small.sum()), float(large.sum())]
    assert (tmp_path / "failed").exists()


def test_a_retried_attempt_sees_its_original_input_futures(ua_backend, tmp_path):
    small, large = ua_backend.submit(make, SMALL), ua_backend.put(big())
    fn = ua.task(mutate_then_fail_once, retries=1)
    seen = ua_backend.submit(fn, str(tmp_path / "failed"), small, large).result()
    assert seen == [float(make(SMALL).sum()), float(big().sum())]


# --------------------------------------------------------------------------- results
def test_large_result_is_writable_in_the_caller(ua_backend):
    future = ua_backend.submit(make, 4 * BIG, 3.0)
    value = future.result()
    assert value.flags.writeable
    np.testing.assert_array_equal(value, make(4 * BIG, 3.0))
    value[:] = 0.0  # the caller's own
    assert future.result() is value


def test_returned_input_is_writable_in_the_caller(ua_backend):
    arr = big()
    back = ua_backend.submit(identity, arr).result()
    assert back.flags.writeable and back is not arr
    back[0] = 9.0
    assert arr[0] == 0.0  # not the caller's original either


def test_gathered_large_results_are_writable(ua_backend):
    futures = [ua_backend.submit(make, 2 * BIG, float(i)) for i in range(4)]
    values = ua.gather(futures)
    assert all(v.flags.writeable for v in values)
    for i, value in enumerate(values):
        np.testing.assert_array_equal(value, make(2 * BIG, float(i)))


def test_map_results_are_writable(ua_backend):
    values = list(ua_backend.map(make, [2 * BIG, SMALL, 2 * BIG]))
    assert [v.flags.writeable for v in values] == [True, True, True]


def test_pipeline_of_large_values(ua_backend, ua_serial):
    stages = (make, write_copy)
    got = list(ua_backend.pipeline(*stages)([2 * BIG, 3 * BIG, SMALL]))
    assert got == list(ua_serial.pipeline(*stages)([2 * BIG, 3 * BIG, SMALL]))
    assert got == [2.0 * 2 * BIG, 2.0 * 3 * BIG, 2.0 * SMALL]


def test_reduce_of_large_values(ua_backend, ua_serial):
    arrays = [big(float(i)) for i in range(5)]
    total = ua_backend.reduce(np.add, arrays)
    np.testing.assert_array_equal(total, ua_serial.reduce(np.add, arrays))
    assert total.flags.writeable


def test_class_shipped_by_value_keeps_its_identity(ua_backend):
    holder = ua_backend.submit(make_holder, 2 * BIG).result()
    assert type(holder) is Holder
    assert holder.arr.flags.writeable
    np.testing.assert_array_equal(holder.arr, make(2 * BIG))


def test_bytes_and_bytearray_are_not_shared(ua_backend, ua_serial):
    data = [b"x" * (2 * LARGE), bytearray(2 * LARGE)]
    seen = [type(v).__name__ for v in ua_backend.submit(identity, data).result()]
    assert seen == [type(v).__name__ for v in ua_serial.submit(identity, data).result()]
    assert seen == ["bytes", "bytearray"]


@pytest.mark.parametrize("what", ["argument", "put"])
def test_unpicklable_large_value_is_named_at_submit(ua_backend, what):
    value = {"arr": big(), "lock": __import__("threading").Lock()}
    with pytest.raises(ua.errors.SerializationError, match="lock"):
        if what == "put":
            ua_backend.put(value)
        else:
            ua_backend.submit(identity, value)
    assert ua_backend.submit(identity, 3).result() == 3  # still usable


def _load_refused(pid: int) -> str:
    if os.getpid() == pid:
        raise RuntimeError("this value does not load in the caller")
    return "loaded"


class RefusesCaller:
    """Pickles anywhere, but does not unpickle in the process ``pid`` (the caller)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __reduce__(self) -> tuple[object, tuple[int]]:
        return (_load_refused, (self.pid,))


def make_refusing(pid: int, n: int) -> dict[str, object]:
    return {"arr": make(n), "refuses": RefusesCaller(pid)}


@pytest.mark.parametrize("n", [SMALL, 2 * BIG], ids=["small", "large"])
def test_a_result_the_caller_cannot_load_is_a_serialization_error(ua_backend, n):
    future = ua_backend.submit(make_refusing, os.getpid(), n)
    with pytest.raises(ua.errors.SerializationError, match="does not load in the caller"):
        future.result()
    with pytest.raises(ua.errors.SerializationError):  # the same error again, not a hang
        future.result()
    assert ua_backend.submit(identity, 5).result() == 5  # still usable


def test_results_load_after_their_executor_shut_down(ua_backend):
    """Finished futures keep their values after shutdown, as in concurrent.futures."""
    ex = ua.Executor(ua_backend.backend, workers=ua_backend.workers)
    large, small = ex.submit(make, 2 * BIG, 3.0), ex.submit(make, SMALL)
    ua.wait([large, small])
    ex.shutdown()
    value = large.result()
    assert value.flags.writeable
    np.testing.assert_array_equal(value, make(2 * BIG, 3.0))
    np.testing.assert_array_equal(small.result(), make(SMALL))
