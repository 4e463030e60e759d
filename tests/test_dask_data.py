"""The dask data plane (unidist_api/backends/dask/data.py): large buffers travel as frames.

What is checked without timings: a packed value with large buffers is serialized by
Dask as separate frames that are the buffers themselves (also on the scheduler's links,
which pickle with protocol 4), it is rebuilt over the received frames without a copy,
Dask counts its bytes, and, end to end on the dask backend, results gathered through the
scheduler, put objects and values passed task to task stay in that form.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from dask.sizeof import sizeof
from distributed.protocol.serialize import deserialize, serialize

import unidist_api as ua
from unidist_api.backends.dask import data as dask_data
from unidist_api.data import LARGE, Packed, load_input, pack

DaskPacked = dask_data.DaskPacked

BIG = LARGE // 8  # float64 items in exactly 1 MiB
ONLY_DASK = pytest.mark.ua_exclude("serial", "local", "ray", reason="dask's data plane")


def make(n: int, seed: float = 1.0) -> np.ndarray:
    return np.arange(n, dtype=np.float64) * seed


def total(arr: np.ndarray) -> float:
    return float(arr.sum())


def what_arrived(arr: np.ndarray) -> tuple[bool, float]:
    return arr.flags.writeable, float(arr.sum())


def packed(n: int = 2 * BIG) -> tuple[np.ndarray, DaskPacked]:
    arr = make(n, 3.0)
    data = dask_data.pack_result(b"", arr)
    assert isinstance(data, DaskPacked)
    return arr, data


# --------------------------------------------------------------------------- serialization
@pytest.mark.parametrize("protocol", [None, 4], ids=["default", "scheduler-protocol-4"])
def test_buffers_are_frames_of_their_own_not_copies(protocol):
    arr, data = packed()
    context = None if protocol is None else {"pickle-protocol": protocol}
    header, frames = serialize(data, on_error="raise", context=context)
    assert header["serializer"] == "dask"
    assert len(frames) == 2
    assert bytes(frames[0]) == data.header and len(frames[0]) < 1000  # the small pickle
    buffer = np.frombuffer(frames[1], dtype=np.float64)
    assert buffer.nbytes == arr.nbytes
    assert np.shares_memory(buffer, arr)  # the array's own memory, not a copy


def test_a_plain_packed_would_be_copied_in_band_at_protocol_4():
    # why DaskPacked exists: Dask's pickle serializer, on a link through the scheduler
    arr = make(2 * BIG)
    plain = pack(arr)
    assert type(plain) is Packed
    _, frames = serialize(plain, on_error="raise", context={"pickle-protocol": 4})
    assert len(frames) == 1 and len(frames[0]) > arr.nbytes  # the buffer went into the pickle


def test_large_pickled_arguments_are_a_frame_of_their_own():
    # a task's arguments pickled into plain bytes (no large buffers): as a Blob, Dask's
    # task pickle carries them out of band, so neither the client nor the scheduler (in
    # this process when embedded) copies them into another pickle
    payload = os.urandom(dask_data.BLOB_SIZE)
    wire = dask_data.for_graph(payload)
    assert isinstance(wire, dask_data.Blob)
    assert dask_data.for_graph(payload[:100]) == payload[:100]  # small ones stay bytes
    _, frames = serialize(wire, on_error="raise", serializers=["pickle"])
    assert len(frames) == 2 and len(frames[0]) < 1000
    assert np.shares_memory(
        np.frombuffer(frames[1], dtype=np.uint8), np.frombuffer(payload, dtype=np.uint8)
    )
    back = deserialize(*serialize(wire, on_error="raise", serializers=["pickle"]))
    assert bytes(back.data) == payload


@ONLY_DASK
def test_tasks_read_large_pickled_arguments_in_place(ua_backend):
    items = [os.urandom(1000) for _ in range(300)]  # ~300 kB pickled: a Blob
    assert ua_backend.submit(len, b"".join(items)).result() == 300_000
    assert list(ua_backend.map(len, items, chunksize=300)) == [1000] * 300
    assert ua_backend.submit(sorted, items).result() == sorted(items)


def test_received_frames_are_loaded_without_a_copy():
    arr, data = packed()
    header, frames = serialize(data, on_error="raise")
    received = [bytes(frames[0]), bytearray(frames[1])]  # what a socket read gives: writable
    value = deserialize(header, received)
    assert isinstance(value, DaskPacked) and value.received
    loaded = dask_data.load(value)
    assert loaded.flags.writeable
    assert np.array_equal(loaded, arr)
    assert np.shares_memory(loaded, np.frombuffer(received[1], dtype=np.float64))
    again = dask_data.load(value)  # the same frames twice: the second is a copy
    assert np.array_equal(again, arr) and not np.shares_memory(again, loaded)


def test_read_only_frames_are_copied_for_the_caller():
    arr, data = packed()
    header, frames = serialize(data, on_error="raise")
    value = deserialize(header, [bytes(frames[0]), bytes(frames[1])])  # e.g. a spill file
    loaded = dask_data.load(value)
    assert loaded.flags.writeable and np.array_equal(loaded, arr)


def test_a_worker_loads_frames_as_read_only_views():
    arr, data = packed()
    header, frames = serialize(data, on_error="raise")
    frame = bytearray(frames[1])
    value = load_input(deserialize(header, [bytes(frames[0]), frame]))
    assert not value.flags.writeable and np.array_equal(value, arr)
    assert np.shares_memory(value, np.frombuffer(frame, dtype=np.float64))


def test_a_fortran_ordered_array_travels_as_one_flat_frame():
    arr = np.asfortranarray(make(2 * BIG).reshape(512, -1))
    data = dask_data.pack_result(b"", arr)
    header, frames = serialize(data, on_error="raise")
    assert memoryview(frames[1]).format == "B" and memoryview(frames[1]).ndim == 1
    loaded = dask_data.load(deserialize(header, [bytes(frames[0]), bytearray(frames[1])]))
    assert loaded.flags.f_contiguous and np.array_equal(loaded, arr)


def test_small_values_stay_one_pickle():
    assert type(dask_data.pack_result(b"", make(1000))) is bytes
    assert type(dask_data.pack_put(make(1000))) is bytes
    assert isinstance(dask_data.pack_put(make(2 * BIG)), DaskPacked)


def test_dask_counts_the_bytes_it_holds():
    arr, data = packed()
    assert sizeof(data) == data.nbytes
    assert arr.nbytes <= data.nbytes < arr.nbytes + 1000


def test_pickling_keeps_the_type():
    import pickle

    _, data = packed()
    again = pickle.loads(pickle.dumps(data, protocol=5))
    assert type(again) is DaskPacked and not again.received


# --------------------------------------------------------------------------- on the cluster
@ONLY_DASK
def test_a_large_result_comes_through_the_scheduler_as_frames(ua_backend):
    future = ua_backend.submit(make, 3 * BIG, 2.0)
    client = future.handle.client
    assert not client.direct_to_workers  # the caller gathers through the scheduler
    data = future.handle.result()  # what Dask hands over, before we load it
    assert isinstance(data, DaskPacked) and data.received
    assert all(not memoryview(b).readonly for b in data.buffers)  # frames, not pickled bytes
    value = future.result()
    assert value.flags.writeable and np.array_equal(value, make(3 * BIG, 2.0))


@ONLY_DASK
def test_gathered_results_are_each_the_callers_own(ua_backend):
    futures = [ua_backend.submit(make, 2 * BIG, float(i)) for i in range(3)]
    values = ua_backend.gather(futures)
    again = ua_backend.gather([ua_backend.submit(make, 2 * BIG, 5.0), futures[0]])
    for i, value in enumerate(values):
        assert value.flags.writeable and np.array_equal(value, make(2 * BIG, float(i)))
    assert again[1] is values[0]  # loaded once
    values[1][:] = -1.0  # the caller's own: tasks still see the value as returned
    seen = ua_backend.submit(what_arrived, futures[1]).result()
    assert seen == (False, float(make(2 * BIG).sum()))


@ONLY_DASK
def test_a_put_object_is_stored_as_frames_and_counted(ua_backend):
    arr = make(3 * BIG)
    handle = ua_backend.put(arr)
    key = handle.handle.key
    client = handle.handle.client

    def stored(dask_worker):  # on the worker holding it
        value = dask_worker.data[key] if key in dask_worker.data else None
        if value is None:
            return None
        return type(value).__name__, [memoryview(b).readonly for b in value.buffers]

    found = [v for v in client.run(stored).values() if v is not None]
    assert found == [("DaskPacked", [False])]
    nbytes = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.tasks[key].nbytes)
    assert arr.nbytes <= nbytes < arr.nbytes + 1000
    assert ua_backend.submit(what_arrived, handle).result() == (False, float(arr.sum()))
    value = handle.result()
    assert value.flags.writeable and np.array_equal(value, arr)


@ONLY_DASK
def test_a_value_passed_task_to_task_stays_packed_on_the_workers(ua_backend):
    first = ua_backend.submit(make, 4 * BIG, 3.0)
    second = ua_backend.submit(total, first)
    assert second.result() == float(make(4 * BIG, 3.0).sum())
    key = first.handle.key
    client = first.handle.client
    kinds = client.run(
        lambda dask_worker: (
            type(dask_worker.data[key]).__name__ if key in dask_worker.data else None
        )
    )
    assert "DaskPacked" in kinds.values()


_CALLER = os.getpid()


def _rebuild_on_workers_only(pid: int) -> str:
    if os.getpid() == pid:
        raise RuntimeError("this value cannot be loaded in the caller")
    return "loaded"


class LoadsOnWorkersOnly:
    def __reduce__(self):
        return (_rebuild_on_workers_only, (_CALLER,))


def loads_on_workers_only(_: int) -> LoadsOnWorkersOnly:
    return LoadsOnWorkersOnly()


@ONLY_DASK
def test_a_result_the_caller_cannot_load_fails_its_future_in_a_gather(ua_backend):
    good = ua_backend.submit(make, 2 * BIG)
    bad = ua_backend.submit(loads_on_workers_only, 1)
    with pytest.raises(ua.errors.SerializationError, match="could not be deserialized"):
        ua_backend.gather([good, bad])
    assert np.array_equal(good.result(), make(2 * BIG))


@ONLY_DASK
def test_the_embedded_scheduler_runs_in_a_process_of_its_own(ua_backend):
    # in the caller's process it held every task's arguments and shared the caller's GIL
    # (backends/dask/scheduler.py); it still ends with the caller (test_shutdown.py)
    client = ua_backend.put(1).handle.client
    scheduler_pid = client.run_on_scheduler(os.getpid)
    assert scheduler_pid != os.getpid()
    assert os.getppid() != scheduler_pid
    import psutil

    assert psutil.Process(scheduler_pid).ppid() == os.getpid()


def _stdout_is_stderr():
    return os.path.samestat(os.fstat(1), os.fstat(2))


@ONLY_DASK
def test_what_the_scheduler_prints_never_fills_a_pipe(ua_backend):
    # its stdout was a pipe we read its address from and nobody reads later: a print of
    # more than the pipe holds (code run on the scheduler) would block it for good
    client = ua_backend.put(1).handle.client
    assert client.run_on_scheduler(_stdout_is_stderr)
