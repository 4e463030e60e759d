"""Shared-memory files: how a large value goes between the caller and local workers.

A packed value (:class:`~unidist_api.data.Packed`: a small pickle, the *header*, and
its large buffers) is written once to a file of the backend's folder in ``/dev/shm``
(RAM, never the disk; a temporary folder where there is none), and only the file's
path travels in the loky pipe. A worker maps the file read-only: its arrays are views
of the shared pages (``data.load_input`` semantics, zero-copy). The caller maps a
result copy-on-write: writable and its own, without a copy (``load_result(private=True)``).

File format, all integers little-endian::

    "UAv1" | u32 buffer count | u64 header length | (u64 offset, u64 size) per buffer
    | header | each buffer at its offset, a multiple of ALIGN

Only the calling process creates folders and removes files (:class:`Store`): a file
goes once no handle or future refers to it and no task reads it; everything goes at
shutdown, and loky's resource tracker removes the folder if the caller dies first.
"""

from __future__ import annotations

import itertools
import mmap
import os
import shutil
import struct
import tempfile
import threading
import weakref
from pickle import PickleBuffer
from typing import Any, cast

from ...data import Packed, load_input, load_result

__all__ = ["ALIGN", "Mapped", "FileRef", "Store", "write", "read", "load_shared", "load_mapped"]

MAGIC = b"UAv1"
ALIGN = 64  # buffer offsets: enough for any NumPy dtype (the mapping is page-aligned)
_PREFIX = struct.Struct("<4sIQ")  # magic, buffer count, header length
_ENTRY = struct.Struct("<QQ")  # offset and size of one buffer
SHM = "/dev/shm"
SHM_MIN_FREE = 1 << 30  # use /dev/shm only with this much room (Docker's default is 64 MB)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


# -- the file format -----------------------------------------------------------------------
def write(path: str, data: bytes | Packed) -> None:
    """Create the file ``path`` holding ``data``; a failed write leaves no file behind."""
    header, buffers = (data, ()) if isinstance(data, bytes) else (data.header, data.buffers)
    raws = [PickleBuffer(b).raw() for b in buffers]  # flat bytes in memory order
    position = _PREFIX.size + _ENTRY.size * len(raws) + len(header)
    table = [_PREFIX.pack(MAGIC, len(raws), len(header))]
    pieces: list[tuple[int, Any]] = []
    for raw in raws:
        position = -(-position // ALIGN) * ALIGN
        table.append(_ENTRY.pack(position, raw.nbytes))
        pieces.append((position, raw))
        position += raw.nbytes
    prefix = b"".join(table)
    pieces[:0] = [(0, prefix), (len(prefix), header)]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o600)
    try:
        for offset, piece in pieces:  # gaps between pieces read as zeros
            view = memoryview(piece)
            done = 0
            while done < view.nbytes:
                done += os.pwrite(fd, view[done:], offset + done)
    except BaseException:
        os.close(fd)
        _unlink(path)
        raise
    os.close(fd)


def _layout(mapping: mmap.mmap) -> tuple[slice, list[tuple[int, int]]]:
    """Where the header and each buffer lie in a mapped file."""
    magic, count, length = _PREFIX.unpack_from(mapping, 0)
    if magic != MAGIC:
        raise ValueError(f"not a unidist-api shared-memory file (magic {magic!r})")
    spans = [_ENTRY.unpack_from(mapping, _PREFIX.size + _ENTRY.size * i) for i in range(count)]
    start = _PREFIX.size + _ENTRY.size * count
    return slice(start, start + length), spans


def _map(fd: int, access: int) -> mmap.mmap:
    return mmap.mmap(fd, os.fstat(fd).st_size, access=access)


def read(path: str) -> Packed:
    """On a worker: the packed value of a file, every part a read-only view of one mapping."""
    fd = os.open(path, os.O_RDONLY | _CLOEXEC)
    try:
        mapping = _map(fd, mmap.ACCESS_READ)
    finally:
        os.close(fd)
    header, spans = _layout(mapping)
    view = memoryview(mapping)  # the mapping lives as long as a view of it
    header_view = cast(bytes, view[header])  # pickle.loads reads any buffer: no copy
    return Packed(header_view, *[view[start : start + size] for start, size in spans])


def load_shared(path: str) -> Any:
    """On a worker: a ``put`` object or an input future's value (large buffers read-only)."""
    return load_input(read(path))


class FileRef:
    """A value in a shared-memory file, inside a task's arguments: it unpickles to the value.

    Each unpickling (each attempt of the task) maps the file again, so small parts are
    the attempt's own and large buffers read-only views.
    """

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (load_shared, (self.path,))


class Mapped(Packed):
    """A value in one of the store's files, as the caller holds it (a result, a ``put``).

    Its buffers are read-only views of a shared mapping: what another backend is given
    when this future is an input there. Passed to a task of the same backend, only
    ``ref`` travels. The file stays while this object lives (:meth:`Store.adopt`);
    both mappings outlive the file, so the value stays loadable after shutdown.
    """

    __slots__ = ("path", "ref", "store", "_private", "_spans", "__weakref__")

    def __init__(
        self, path: str, store: Store, shared: mmap.mmap, private: mmap.mmap | None
    ) -> None:
        header, spans = _layout(shared)
        view = memoryview(shared)
        super().__init__(bytes(view[header]), *[view[a : a + n] for a, n in spans])
        self.path = path
        self.ref = FileRef(path)
        self.store = store
        self._private = private  # copy-on-write, for the caller's own value (taken once)
        self._spans = spans

    def take_private(self) -> Packed | None:
        """The value over the copy-on-write mapping (writable, private), the first time."""
        private, self._private = self._private, None
        if private is None:
            return None
        view = memoryview(private)
        return Packed(self.header, *[view[a : a + n] for a, n in self._spans])


def load_mapped(data: Mapped) -> Any:
    """The loader of a future holding a Mapped: the caller's value, without a copy."""
    own = data.take_private()
    if own is None:  # loaded before (not done by futures): copy from the shared mapping
        return load_result(data)
    return load_result(own, private=True)


# -- the caller's folder and its files ----------------------------------------------------
def _folder_base() -> str | None:
    """``/dev/shm`` when it is writable and roomy; else None (the system's temp folder)."""
    try:
        stats = os.statvfs(SHM)
        if os.access(SHM, os.W_OK | os.X_OK) and stats.f_bavail * stats.f_frsize >= SHM_MIN_FREE:
            return SHM
    except OSError:
        pass
    return None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _remove_folder(folder: str, tracked: bool) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    if tracked:
        from loky.backend import resource_tracker

        try:
            resource_tracker.unregister(folder, "folder")
        except Exception:  # the tracker is gone (interpreter exit): nothing to tell it
            pass


class Store:
    """The caller's folder of shared-memory files and who holds each file.

    Holders: the :class:`Mapped` object of a result or put (``adopt``, released when it
    is garbage) and each task that reads the file (``acquire``/``release``). A file
    goes when it has neither. The folder is registered with loky's resource tracker,
    which removes it if this process dies without removing it (SIGKILL).
    """

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix=f"unidist-api-{os.getpid()}-", dir=_folder_base())
        tracked = True
        try:
            from loky.backend import resource_tracker

            resource_tracker.register(self.dir, "folder")
        except Exception:
            tracked = False
        self._finalizer = weakref.finalize(self, _remove_folder, self.dir, tracked)
        self._lock = threading.RLock()  # reentrant: a Mapped may be collected while held
        self._readers: dict[str, int] = {}
        self._owned: set[str] = set()
        self._ids = itertools.count()
        self.closed = False

    def result_path(self) -> str:
        """A fresh path where a worker writes one attempt's large result."""
        return f"{self.dir}/r{next(self._ids)}"

    def share(self, data: bytes | Packed, kind: str) -> str:
        """Write ``data`` to a new file (no holder yet); OSError when there is no room."""
        path = f"{self.dir}/{kind}{next(self._ids)}"
        write(path, data)
        return path

    def adopt(self, path: str) -> Mapped:
        """Map a written file for the caller; it stays as long as the Mapped lives."""
        fd = os.open(path, os.O_RDONLY | _CLOEXEC)
        try:
            shared = _map(fd, mmap.ACCESS_READ)
            private = _map(fd, mmap.ACCESS_COPY)
        finally:
            os.close(fd)
        mapped = Mapped(path, self, shared, private)
        with self._lock:
            self._owned.add(path)
        weakref.finalize(mapped, self._disown, path)
        return mapped

    def keep(self, data: bytes | Packed) -> Mapped:
        """``data`` (a ``put`` object) in a new file, mapped for the caller."""
        path = self.share(data, "p")
        try:
            return self.adopt(path)
        except BaseException:
            _unlink(path)
            raise

    def acquire(self, path: str) -> None:
        """A task reads ``path``: keep it until :meth:`release`."""
        with self._lock:
            self._readers[path] = self._readers.get(path, 0) + 1

    def release(self, paths: list[str]) -> None:
        """The task that acquired ``paths`` finished (one release per acquire)."""
        with self._lock:
            for path in paths:
                left = self._readers[path] - 1
                if left:
                    self._readers[path] = left
                else:
                    del self._readers[path]
                    if path not in self._owned:
                        _unlink(path)

    def _disown(self, path: str) -> None:
        with self._lock:
            self._owned.discard(path)
            if path not in self._readers:
                _unlink(path)

    def discard(self, paths: list[str]) -> None:
        """Remove files nobody holds (the results of attempts whose worker died)."""
        for path in paths:
            _unlink(path)

    def files(self) -> list[str]:
        """The files in the folder now (for tests and diagnostics)."""
        try:
            return sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []

    def close(self) -> None:
        """Remove the folder and every file; mapped values stay readable."""
        self.closed = True
        self._finalizer()

    def close_after(self, thread: threading.Thread) -> None:
        """:meth:`close` once ``thread`` ends (loky's manager, after the last task)."""

        def wait_then_close() -> None:
            thread.join()
            self.close()

        threading.Thread(
            target=wait_then_close, daemon=True, name="unidist-api-local-close"
        ).start()
