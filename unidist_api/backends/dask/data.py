# mypy: disallow-untyped-calls=False
"""How values cross Dask: packed values whose large buffers travel as Dask frames.

Every value is packed (:mod:`unidist_api.data`): a small value is one ``bytes`` pickle,
which Dask moves as one frame. A value with large buffers is a :class:`DaskPacked`, a
:class:`~unidist_api.data.Packed` with a ``dask_serialize``/``dask_deserialize`` pair
registered here: its frames are the header (the small pickle) and each buffer as it is,
so no buffer is ever copied into a pickle stream, on any link. That matters because
Dask's pickle serializer uses protocol 4 on every link through the scheduler (``put``'s
scatter, and a client's gather, which goes through the scheduler): a plain Packed would
fall back there to in-band copies. Dask pickles the type by reference, so a worker that
meets a DaskPacked imports this module, and with it the serializers.

- **A task's value** is packed on the worker (:func:`pack_result`) and stays there,
  referring to the task's own memory, until a task elsewhere or the caller asks; a task
  given it as input on another worker receives its frames, and
  :func:`~unidist_api.data.load_input` rebuilds it over read-only views of them
  (zero-copy).
- **A task's arguments** (the payload, with the packed values of other executors'
  futures) travel in Dask's task graph, which Dask pickles with protocol 5 and out-of-band
  buffers (``ToPickle``) from the client to the scheduler and on to the worker: a plain
  Packed's buffers become frames there by themselves.
- **put** packs the object here (an error names it) and scatters it once, under a key of
  its own (two puts of equal objects are two objects): the frames go from the object's
  own memory to the worker, without a copy in this process. It lives on one worker until
  tasks elsewhere copy it; if that worker dies, Dask cannot recompute it: reading it, or
  a task needing it, fails with ``WorkerLostError``. Read a put handle's value before
  ``shutdown`` (it is not brought over).
- **In the caller**, a value stays on the cluster until read (:class:`Result`) or fetched
  in bulk (:func:`gather`). Frames received from a socket are memory nobody else has, so
  :func:`load` rebuilds a result over them when they are writable: no copy at all, and
  the caller's own.
- **Memory accounting**: Dask counts a DaskPacked as its bytes (header and buffers).
"""

from __future__ import annotations

import asyncio
from pickle import PickleBuffer
from typing import Any, TypeAlias

from dask.sizeof import sizeof
from distributed import Client
from distributed import Future as DaskFuture
from distributed.protocol.serialize import dask_deserialize, dask_serialize

from ...data import Packed, load_result, pack
from ...futures import RemoteFailure
from ...serialization import pack_value
from ...worker import unpicklable_result
from .errors import engine_error

__all__ = [
    "DaskPacked",
    "Blob",
    "for_graph",
    "Wire",
    "pack_result",
    "pack_put",
    "load",
    "Result",
    "gather",
    "FAILED",
]

Wire: TypeAlias = "bytes | Packed"
"""A packed value as it travels: one pickle, or a pickle and its large buffers."""


class DaskPacked(Packed):
    """A :class:`~unidist_api.data.Packed` that Dask moves as frames: header, then buffers.

    ``received``: built from frames Dask received (a socket's or a spill file's memory,
    nobody else's), so the first load in the caller may keep writable buffers as they are.
    """

    __slots__ = ("received",)

    def __init__(self, header: bytes, *buffers: Any) -> None:
        super().__init__(header, *buffers)
        self.received = False

    def __reduce_ex__(self, protocol: Any) -> tuple[type[Packed], tuple[Any, ...]]:
        _, args = super().__reduce_ex__(protocol)  # pickled after all: the type stays
        return (DaskPacked, args)


def _serialize(value: DaskPacked) -> tuple[dict[str, Any], list[Any]]:
    # flat byte views, as Dask's own serializers give (it slices frames above its shard size)
    return {}, [value.header, *[PickleBuffer(b).raw() for b in value.buffers]]


def _deserialize(header: dict[str, Any], frames: list[Any]) -> DaskPacked:
    head = frames[0]
    value = DaskPacked(head if isinstance(head, bytes) else bytes(head), *frames[1:])
    value.received = True
    return value


def _sizeof(value: DaskPacked) -> int:
    return value.nbytes


dask_serialize.register(DaskPacked)(_serialize)
dask_deserialize.register(DaskPacked)(_deserialize)
sizeof.register(DaskPacked)(_sizeof)  # Dask's memory accounting: the bytes it holds


class Blob:
    """A task's large pickled arguments, which Dask moves as one frame of their own.

    Dask pickles a task (with protocol 5 and out-of-band buffers) on its way to the
    scheduler, which runs in this process when the cluster is embedded, and again on
    its way to the worker. Plain ``bytes`` would be copied into that pickle each time,
    and the scheduler would unpickle a copy it keeps until the task is released; a
    ``PickleBuffer`` becomes a frame instead, which the scheduler holds as received.
    """

    __slots__ = ("data",)

    def __init__(self, data: Any) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> tuple[type[Blob], tuple[Any, ...]]:
        if protocol >= 5:
            return (Blob, (PickleBuffer(self.data),))
        return (Blob, (bytes(self.data),))


BLOB_SIZE = 64 * 1024  # bytes: arguments pickled larger than this travel as a Blob


def for_graph(payload: bytes | Packed) -> bytes | Packed | Blob:
    """The arguments as they go in Dask's task graph (large ones as their own frame)."""
    if isinstance(payload, bytes) and len(payload) >= BLOB_SIZE:
        return Blob(payload)
    return payload


def _for_dask(data: bytes | Packed) -> bytes | Packed:
    """``data`` in the form Dask moves as frames (a plain pickle stays as it is)."""
    if type(data) is Packed:
        return DaskPacked(data.header, *data.buffers)
    return data


def pack_result(fn_data: bytes, value: Any) -> bytes | Packed:
    """On the worker: a task's value, packed; an unpicklable one fails the task by name."""
    try:
        data = pack(value)
    except Exception as exc:
        raise unpicklable_result(fn_data, value, exc) from None
    return _for_dask(data)


def pack_put(obj: Any) -> bytes | Packed:
    """The object of a ``put``, packed in the caller (SerializationError names it)."""
    return _for_dask(pack_value(obj, "the object passed to put"))


def load(data: bytes | Packed) -> Any:
    """A value Dask handed to the caller, rebuilt: writable, the caller's own.

    Received frames are used as they are, once: a second load of the same frames (two
    gathers sharing Dask's response) copies, so no two values share memory.
    """
    if isinstance(data, DaskPacked) and data.received:
        data.received = False
        return load_result(data, private=True)
    return load_result(data)


UNREAD: Any = object()
FAILED: Any = object()  # what gather gives for a task that failed or was cancelled


def gather(client: Client, handles: list[DaskFuture[Any]]) -> list[Any] | None:
    """The values of ``handles`` (waiting for them) in one gather; None if it fails.

    A task that failed or was cancelled gives ``FAILED``; the gather fails when a value
    cannot be brought over (lost touch) or loaded here (``result()`` then says which).
    """
    try:
        found = client.gather(dict(enumerate(handles)), errors="skip")
    except (Exception, asyncio.CancelledError):
        return None
    failed = ("error", "cancelled")
    try:
        return [
            FAILED if handle.status in failed or index not in found else load(found[index])
            for index, handle in enumerate(handles)
        ]
    except Exception:  # e.g. a value of a class this process cannot import
        return None


class Result:
    """A finished task's (or put's) value: on the cluster until read or fetched."""

    __slots__ = ("handle", "put", "_value", "_failure", "__weakref__")

    def __init__(self, handle: DaskFuture[Any], *, put: bool = False) -> None:
        self.handle = handle
        self.put = put  # a put's value is not brought over at shutdown
        self._value: Any = UNREAD
        #: why reading failed, when fetched at shutdown: the task's failure (RemoteFailure)
        #: or a value this process cannot load, raised again by ``read``
        self._failure: Exception | None = None

    @property
    def unread(self) -> bool:
        return self._value is UNREAD and self._failure is None

    def read(self) -> Any:
        """The value (the loader of ``Future.set_serialized_result``); works from any thread."""
        if self._failure is not None:
            raise self._failure
        if self._value is not UNREAD:
            return self._value
        try:
            data = self.handle.result()
        except Exception as exc:
            if self._value is not UNREAD:  # shutdown brought it over, then closed the
                return self._value  # client under this read
            if self._failure is not None:
                raise self._failure from None
            error = engine_error(exc, self.handle, reading=True)
            if error is None:
                raise  # e.g. a value this process cannot unpickle
            raise RemoteFailure(error) from None
        return load(data)

    def keep(self, value: Any) -> None:
        self._value = value

    def fetch(self) -> None:
        """Bring the value over now (shutdown does, before the cluster goes away)."""
        try:
            self._value = self.read()
        except Exception as failure:  # the task's, or a value that cannot be loaded here
            self._failure = failure
