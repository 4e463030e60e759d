"""How values cross Ray: what a task returns, what ``put`` stores, how the caller loads.

Every value that crosses Ray (results, ``put`` objects, inputs from other backends) is
packed by our cloudpickle (:mod:`unidist_api.data`), not by Ray's own copy of it, so a
class the workers got by value (defined in ``__main__`` or a test module) comes back as
the caller's very class, and an unpicklable value is named in a SerializationError. A
value without large buffers is one plain ``bytes`` pickle (which Ray stores and moves as
cheaply as an int; a wrapper object would cost a pickling by Ray on top, ~35 us a task);
one with buffers of 1 MiB or more is a :class:`~unidist_api.data.Packed`, which Ray
pickles with protocol 5, storing the buffers out of band in its object store: workers
read them as zero-copy read-only views, and the caller copies each once. So
``ray.get(future.handle)`` gives that packed form, or a view of a large plain pickle
(below); :func:`loaded` rebuilds the value.

A plain pickle of 1 MiB or more (a large value without out-of-band buffers: a long list,
a ``bytes`` object, a strided array) goes to Ray as :class:`InStore`, so that Ray keeps
the pickle itself out of band as well: it is unpickled straight from the object store,
where Ray would first copy a ``bytes`` value out of it (``to_pybytes``).
"""

from __future__ import annotations

from pickle import PickleBuffer
from typing import Any

import ray
import ray.exceptions as rex

from ...data import LARGE, Packed, load_result, pack
from ...errors import ExecutorShutdownError
from ...futures import RemoteFailure
from ...serialization import pack_value
from .errors import task_error

__all__ = ["InStore", "for_ray", "load", "loaded", "packed_object", "returned", "store"]


class InStore:
    """A large plain pickle on its way into Ray, which stores it out of band (protocol 5).

    Ray gives it back as a read-only view of its object store, which unpickles as the
    ``bytes`` would (:func:`~unidist_api.data.load_input`, ``load_result``).
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, tuple[Any, ...]]:
        if isinstance(protocol, int) and protocol < 5:
            return (bytes, (self.data,))
        return (_view, (PickleBuffer(self.data),))


def _view(buffer: Any) -> Any:
    return buffer  # what Ray hands back for an out-of-band buffer: a view of its store


def for_ray(wire: bytes | Packed) -> bytes | Packed | InStore:
    """What Ray is given for packed data (a task's payload, an input, a value)."""
    if type(wire) is bytes and len(wire) >= LARGE:
        return InStore(wire)
    return wire


def packed_object(obj: Any) -> bytes | Packed:
    """The object passed to ``put``, packed (SerializationError names it if it cannot be)."""
    return pack_value(obj, "the object passed to put")


def store(wire: bytes | Packed) -> Any:
    """Store a packed ``put`` object in Ray's object store once; its ObjectRef."""
    return ray.put(for_ray(wire))


def returned(value: Any) -> bytes | Packed | InStore:
    """On the worker: what a task returns to Ray for its value."""
    return for_ray(pack(value))


def loaded(data: Any) -> Any:
    """In the caller: the value of what ``ray.get`` gave for a task or a ``put``."""
    return load_result(data)


def load(ref: Any) -> Any:
    """A task's value, fetched on the first ``result()``; a failure as RemoteFailure."""
    if not ray.is_initialized():  # else ray.get would start or join some other Ray
        raise RemoteFailure(
            ExecutorShutdownError(
                "Ray was stopped (at interpreter exit) before this result was fetched"
            )
        )
    try:
        data = ray.get(ref)
    except rex.RayError as err:
        raise task_error(err, ref) from None
    return loaded(data)
