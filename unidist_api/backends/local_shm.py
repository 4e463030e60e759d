"""How large values cross ``local``: files in shared memory, not the loky pipe.

A packed value's large buffers (:mod:`unidist_api.data`) are written once into a file
in ``/dev/shm`` (a temporary directory where there is none), each at a 64-byte aligned
offset; what travels through the pipe is a :class:`SharedFile`: the path, the small
pickle header and where each buffer lies. A process that unpickles one maps the file
on first use: a worker read-only (its inputs are zero-copy read-only views, as joblib's
memmapping gives), the caller that owns the store copy-on-write (a result is writable
and private without a copy). Passed on to another task, a SharedFile travels as its
path again, so the caller never reads the buffers.

The :class:`SharedStore` (one per executor) removes a file once no future refers to it
and no task reads it, at shutdown, and, through loky's resource tracker, when the
caller dies without shutting down. A call's result file has a path the caller chose,
so the file of an attempt whose worker died is removed too.
"""

from __future__ import annotations

import mmap
import os
import shutil
import tempfile
import threading
import uuid
from pickle import PickleBuffer
from typing import Any

from ..data import Packed, load_input

__all__ = ["SharedFile", "SharedStore", "write_packed", "run_shared"]

ALIGN = 64


class SharedFile(Packed):
    """A packed value whose buffers live in a shared-memory file (mapped on first use)."""

    __slots__ = ("path", "spans", "owner", "_mapped")

    def __init__(self, path: str, header: bytes, spans: tuple[tuple[int, int], ...],
                 owner: int) -> None:
        self.header = header
        self.path = path
        self.spans = spans  # (offset, nbytes) of each buffer in the file
        self.owner = owner  # pid of the caller whose store holds the file
        self._mapped: tuple[memoryview, ...] | None = None

    @property
    def buffers(self) -> tuple[memoryview, ...]:  # type: ignore[override]
        mapped = self._mapped
        if mapped is None:
            mapped = self._mapped = self._map()
        return mapped

    def _map(self) -> tuple[memoryview, ...]:
        mine = os.getpid() == self.owner  # the caller: copy-on-write, a worker: read-only
        with open(self.path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            area = mmap.mmap(file.fileno(), size,
                             access=mmap.ACCESS_COPY if mine else mmap.ACCESS_READ)
        view = memoryview(area)
        return tuple(view[offset:offset + nbytes] for offset, nbytes in self.spans)

    @property
    def nbytes(self) -> int:
        return len(self.header) + sum(nbytes for _, nbytes in self.spans)

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, tuple[Any, ...]]:
        return (SharedFile, (self.path, self.header, self.spans, self.owner))

    def embedded(self, protocol: Any = 5) -> tuple[Any, tuple[Any, ...]]:
        return (_input, (self.path, self.header, self.spans, self.owner))

    def detached(self) -> Packed:
        return Packed(self.header, *[bytes(b) for b in self.buffers])


def _input(path: str, header: bytes, spans: tuple[tuple[int, int], ...], owner: int) -> Any:
    """A shared value embedded in a task's arguments, rebuilt read-only on the worker."""
    return load_input(SharedFile(path, header, spans, owner))


def write_packed(path: str, packed: Packed, owner: int) -> SharedFile:
    """Write ``packed``'s buffers into a new file at ``path`` (one copy each)."""
    spans = []
    offset = 0
    with open(path, "wb") as file:
        for buffer in packed.buffers:
            raw = buffer.raw() if isinstance(buffer, PickleBuffer) else memoryview(buffer)
            raw = raw if raw.ndim == 1 and raw.format == "B" else raw.cast("B")
            pad = -offset % ALIGN
            if pad:
                file.write(b"\0" * pad)
                offset += pad
            file.write(raw)
            spans.append((offset, raw.nbytes))
            offset += raw.nbytes
    return SharedFile(path, packed.header, tuple(spans), owner)


class SharedStore:
    """One executor's shared-memory files, and who still needs each one."""

    def __init__(self) -> None:
        shm = "/dev/shm"
        base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
        self.dir = tempfile.mkdtemp(prefix="unidist-api-", dir=base)
        self.owner = os.getpid()
        self._lock = threading.Lock()
        self._readers: dict[str, int] = {}
        self._dropped: set[str] = set()
        try:  # removed by loky's tracker process if this one dies without closing
            from loky.backend import resource_tracker

            resource_tracker.register(self.dir, "folder")
        except Exception:  # no tracker: shutdown and interpreter exit still remove it
            pass

    def new_path(self) -> str:
        return os.path.join(self.dir, uuid.uuid4().hex)

    def write(self, packed: Packed) -> SharedFile:
        return write_packed(self.new_path(), packed, self.owner)

    def acquire(self, paths: list[str]) -> None:
        with self._lock:
            for path in paths:
                self._readers[path] = self._readers.get(path, 0) + 1

    def release(self, paths: list[str]) -> None:
        with self._lock:
            for path in paths:
                left = self._readers.get(path, 1) - 1
                if left > 0:
                    self._readers[path] = left
                    continue
                self._readers.pop(path, None)
                if path in self._dropped:
                    self._dropped.discard(path)
                    _unlink(path)

    def drop(self, path: str) -> None:
        """No handle refers to ``path`` any more: remove it once no task reads it."""
        with self._lock:
            if path in self._readers:
                self._dropped.add(path)
            else:
                _unlink(path)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        try:
            from loky.backend import resource_tracker

            resource_tracker.unregister(self.dir, "folder")
        except Exception:
            pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def run_shared(result_path: str, owner: int, *call: Any) -> Any:
    """What a loky worker runs: the call (``worker.run_pickled``); a result with large
    buffers is written to ``result_path`` and only its :class:`SharedFile` goes back."""
    from ..worker import OK, run_pickled

    outcome = run_pickled(*call)
    status, data, _ = outcome
    if status == OK and isinstance(data, Packed) and not isinstance(data, SharedFile):
        return (OK, write_packed(result_path, data, owner), None)
    return outcome
