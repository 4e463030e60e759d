"""How a value crosses an engine: a small pickle plus its large buffers, out of band.

Values are pickled by our cloudpickle with protocol 5 (PEP 574). A buffer of at least
:data:`LARGE` bytes (a NumPy array's data, or anything else that pickles out of band)
is left out of the pickle: :func:`pack` returns a :class:`Packed`, the pickle (the
*header*) and those buffers, and each engine carries the buffers as its own (Ray's
object store, Dask frames, shared-memory files on ``local``) without copying them
into a pickle stream. A value without large buffers stays one ``bytes`` pickle, the
cheapest thing every engine moves.

The contract's read-only rule lives here: a task's inputs are rebuilt over read-only
views of the buffers (:func:`load_input`), zero-copy where the engine allows, so a
retried attempt sees them unmodified; smaller parts are unpickled again for each
attempt, a private copy. A result in the caller (:func:`load_result`) is writable and
the caller's own: a buffer is copied once unless the engine handed over memory that is
already private and writable.
"""

from __future__ import annotations

import mmap
import pickle
from collections.abc import Callable
from pickle import PickleBuffer
from typing import Any

__all__ = ["LARGE", "Packed", "Wire", "pack", "load_input", "load_result", "Embedded", "is_large"]

#: A buffer of at least this many bytes travels out of band and arrives read-only.
LARGE = 1 << 20


class Packed:
    """A pickle (``header``) and the large buffers it refers to, in order.

    Pickling a Packed (as Ray and Dask do when they move it) hands each buffer to the
    pickler as a :class:`pickle.PickleBuffer`, which engines that speak protocol 5
    store and send out of band, without a copy into the stream.
    """

    __slots__ = ("header", "buffers")

    def __init__(self, header: bytes, *buffers: Any) -> None:
        self.header = header
        self.buffers = buffers

    def __reduce_ex__(self, protocol: Any) -> tuple[type[Packed], tuple[Any, ...]]:
        if isinstance(protocol, int) and protocol < 5:  # a link without out-of-band buffers
            return (Packed, (self.header, *[bytes(b) for b in self.buffers]))
        return (Packed, (self.header, *[PickleBuffer(b) for b in self.buffers]))

    def embedded(self, protocol: Any = 5) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        """How :class:`Embedded` pickles this value: rebuilt as the value itself, read-only."""
        if isinstance(protocol, int) and protocol < 5:
            return (_rebuild, (self.header, *[bytes(b) for b in self.buffers]))
        return (_rebuild, (self.header, *[PickleBuffer(b) for b in self.buffers]))

    def detached(self) -> Packed:
        """A copy whose buffers are its own, not the packed object's memory (a snapshot)."""
        return Packed(self.header, *[bytes(b) for b in self.buffers])

    @property
    def nbytes(self) -> int:
        return len(self.header) + sum(memoryview(b).nbytes for b in self.buffers)

    def __sizeof__(self) -> int:  # Dask's memory accounting falls back to sys.getsizeof
        return self.nbytes

    def __repr__(self) -> str:
        return f"<Packed {len(self.header)} B + {len(self.buffers)} buffer(s), {self.nbytes} B>"


Wire = "bytes | Packed"
"""What travels: a plain pickle, or a :class:`Packed` when the value has large buffers."""


def is_large(buffer: PickleBuffer) -> bool:
    """Whether a buffer the pickler offers goes out of band (at least :data:`LARGE` bytes)."""
    try:
        return buffer.raw().nbytes >= LARGE
    except BufferError:  # not contiguous: it cannot travel out of band anyway
        return False


def pack(obj: Any) -> bytes | Packed:
    """Pickle ``obj`` with cloudpickle; large buffers stay out of the pickle, uncopied.

    The buffers refer to ``obj``'s own memory: whoever carries the Packed must copy
    them (into its store, a file, a socket) before ``obj`` can change, or share them
    read-only.
    """
    from .pickler import dumps

    buffers: list[PickleBuffer] = []

    def out_of_band(buffer: PickleBuffer) -> bool:
        if is_large(buffer):
            buffers.append(buffer)
            return False
        return True  # in band: unpickling makes a private copy

    header = dumps(obj, buffer_callback=out_of_band)
    if not buffers:
        return header
    return Packed(header, *buffers)


def load_input(data: bytes | Packed) -> Any:
    """Rebuild a task's input: large buffers as read-only views (zero-copy), the rest fresh."""
    if not isinstance(data, Packed):
        return pickle.loads(data)
    views = [memoryview(b).toreadonly() for b in data.buffers]
    return pickle.loads(data.header, buffers=views)


def load_result(data: bytes | Packed, *, private: bool = False) -> Any:
    """Rebuild a result for the caller: writable, and its own (at most one copy).

    ``private``: the engine handed over memory nobody else sees (a buffer received
    from a socket, a copy-on-write mapping); a writable buffer is then used as is.
    Otherwise (a shared object store, the producing task's memory) each buffer is
    copied once.
    """
    if not isinstance(data, Packed):
        return pickle.loads(data)
    buffers = [b if private and not memoryview(b).readonly else _copy(b) for b in data.buffers]
    return pickle.loads(_writable(data.header), buffers=buffers)


def _copy(buffer: Any) -> Any:
    """A writable copy of a large buffer, in memory of its own.

    Anonymous private memory asked for in huge pages where the system has them: a
    fresh ``bytearray`` of tens of MB spends more time in page faults than in the copy
    itself (measured here: 40 MB in 16 ms as a bytearray, 5 ms this way).
    """
    view = buffer.raw() if isinstance(buffer, PickleBuffer) else memoryview(buffer)
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    if not hasattr(mmap, "MAP_ANONYMOUS"):  # not a POSIX system
        return bytearray(view)
    area = mmap.mmap(-1, view.nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        area.madvise(mmap.MADV_HUGEPAGE)
    memoryview(area)[:] = view
    return area


_READONLY_BUFFER = pickle.READONLY_BUFFER  # the opcode after a read-only buffer


def _writable(header: bytes) -> bytes:
    """``header`` without its READONLY_BUFFER opcodes, so every buffer loads writable.

    A task that returns a read-only array (one of its inputs, a view) pickles it with
    that opcode, which would make the caller's copy read-only. Rare, so the cheap test
    comes first; frames are dropped with the opcodes (framing is optional in a pickle).
    """
    if _READONLY_BUFFER not in header:
        return header
    import pickletools

    ops = list(pickletools.genops(header))
    if not any(op.name == "READONLY_BUFFER" for op, _, _ in ops):
        return header
    ends = [pos for _, _, pos in ops[1:]] + [len(header)]
    return b"".join(
        header[pos:end]
        for (op, _, pos), end in zip(ops, ends, strict=True)
        if op.name not in ("READONLY_BUFFER", "FRAME")
    )


class Embedded:
    """A packed value inside another task's arguments; unpickles to the value itself.

    Lets a result go on to another task without an unpickle and re-pickle in the
    caller. Its large buffers go out of band with the arguments' own, and arrive as
    read-only views, like every large input.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes | Packed) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        data = self.data
        if not isinstance(data, Packed):
            return (pickle.loads, (data,))
        return data.embedded(protocol)


def _rebuild(header: bytes, *buffers: Any) -> Any:
    return pickle.loads(header, buffers=[memoryview(b).toreadonly() for b in buffers])
