"""``ua.Future``: a ``concurrent.futures.Future`` completed by a backend.

A backend completes a future from whatever thread its engine reports in (no thread
per future). Results may arrive *serialized*: :meth:`Future.set_serialized_result`
stores the bytes and they are unpickled once, on the first ``result()``, in the
thread that asks, so engine callback threads stay cheap and values nobody reads are
never unpickled.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from .data import Packed, load_result
from .errors import RemoteTraceback, SerializationError

__all__ = ["Future", "RemoteFailure", "ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION"]

T = TypeVar("T")

ALL_COMPLETED = cf.ALL_COMPLETED
FIRST_COMPLETED = cf.FIRST_COMPLETED
FIRST_EXCEPTION = cf.FIRST_EXCEPTION


class Owner(Protocol):
    """What a future needs of the backend that completes it (``backends.base.Backend``)."""

    fetches: ClassVar[bool]

    def fetch(self, futures: Sequence[Future[Any]], timeout: float | None) -> None: ...
    def cancel(self, future: Future[Any]) -> bool: ...
    def running(self, future: Future[Any]) -> bool: ...


class RemoteFailure(Exception):
    """Raised by a result loader when the task itself failed (engines with lazy fetch).

    Carries the task's own exception, its traceback text and a batch's partial results.
    """

    def __init__(
        self, exc: BaseException, tb: str | None = None, partial: list[Any] | None = None
    ) -> None:
        super().__init__(exc)
        self.exc, self.tb, self.partial = exc, tb, partial


class _Serialized:
    """A result still in pickled form; replaced by its value on first access."""

    __slots__ = ("data", "loads")

    def __init__(self, data: bytes, loads: Callable[[bytes], Any]) -> None:
        self.data = data
        self.loads = loads


class Future(cf.Future[T], Generic[T]):
    """The result of one task: a ``concurrent.futures.Future`` that also awaits in asyncio.

    ``handle`` is the engine's own object (a loky future, a Ray ``ObjectRef``, a Dask
    future, or ``None`` on serial) for power users; nothing in the contract needs it.
    """

    def __init__(self, backend: Owner | None = None, handle: Any = None) -> None:
        super().__init__()
        self.handle: Any = handle
        self._backend = backend
        #: For a failed batch task: the results of the items before the failing one.
        self.partial: list[Any] | None = None
        #: What the backend learnt of a finished task without loading its value, where
        #: its engine tells: the worker's own time for a batch, in seconds (Ray, for
        #: tasks that report failures), and the packed value's size, in bytes (Ray so,
        #: serial, local; Dask's client is not told).
        self._work: float | None = None
        self._nbytes: int | None = None
        #: A loaded result's packed form, kept (as an object store keeps the value) so
        #: that tasks given this future see the value as the task returned it, whatever
        #: the caller did to its own copy.
        self._packed: bytes | Packed | None = None

    # -- completion, called by backends -------------------------------------------
    def set_serialized_result(self, data: Any, loads: Callable[[Any], Any]) -> None:
        """Complete with a result loaded on first ``result()``: ``loads(data)``.

        ``data`` is a packed value (``loads=data.load_result``) or an engine handle whose
        value stays on the cluster until asked for; a loader raises
        :class:`RemoteFailure` when the task failed.
        """
        self.set_result(_Serialized(data, loads))  # type: ignore[arg-type]

    def set_remote_exception(self, exc: BaseException, tb: str | None) -> None:
        """Complete with a task's exception, attaching the remote traceback text.

        The traceback an engine restored on the exception (Dask: its worker's frames and
        ours) gives way to that text, which starts at the task's function as on every
        backend: the caller's traceback then shows only the caller's frames.
        """
        if tb:
            exc.__cause__ = RemoteTraceback(tb)
            exc.__traceback__ = None
        self.set_exception(exc)

    def set_loaded(self, value: Any) -> None:
        """For a backend's bulk ``fetch``: the value a serialized result loads to.

        A no-op unless the future is done with a result not loaded yet.
        """
        with self._condition:
            if self._state == cf._base.FINISHED and type(self._result) is _Serialized:
                self._result = value

    def _materialize(self) -> Any:
        with self._condition:
            value = self._result
            if type(value) is _Serialized:
                try:
                    self._result = value.loads(value.data)
                    if value.loads is load_result:
                        self._packed = value.data
                except RemoteFailure as failure:
                    exc = failure.exc
                    if failure.tb:
                        exc.__cause__ = RemoteTraceback(failure.tb)
                    self.partial = failure.partial
                    self._result = None
                    self._exception = exc
                    raise exc from exc.__cause__
                except Exception as exc:  # unpicklable in this process
                    err = SerializationError(
                        f"the task's result could not be deserialized in the caller: {exc!r}"
                    )
                    err.__cause__ = exc
                    self._result = None
                    self._exception = err
                    raise err from exc
            return self._result

    def take_result(self) -> Any:
        """``result()``, for a future nobody else holds (a batch of ``map`` or ``pipeline``):
        the packed form is not kept beside the value, which would hold each result twice, and
        the future keeps no reference to the value (``result()`` returns None after this)."""
        value = self.result()
        self._packed = None
        with self._condition:
            self._result = None  # the caller now holds the only reference
        return value

    def unloaded(self) -> bool:
        """Finished with a value still to be loaded (on Ray and Dask: still on the cluster)."""
        return self.done() and type(self._result) is _Serialized

    def serialized_result(self) -> bytes | Packed | None:
        """For backends: the result's packed form if not unpacked yet, else None.

        Raises the task's exception if it failed. Lets a value go on to another task
        without an unpickle and re-pickle in between.
        """
        value: Any = cf.Future.result(self, timeout=0)
        if type(value) is _Serialized and value.loads is load_result:
            return value.data
        return self._packed

    # -- concurrent.futures.Future API ------------------------------------------------
    def result(self, timeout: float | None = None) -> T:
        backend = self._backend
        if backend is not None and backend.fetches and not self.done():
            deadline = None if timeout is None else time.monotonic() + timeout
            backend.fetch([self], timeout)
            if deadline is not None:
                timeout = max(0.0, deadline - time.monotonic())
        value = super().result(timeout)
        if type(value) is _Serialized:
            return self._materialize()  # type: ignore[no-any-return]
        return value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        exc = super().exception(timeout)
        if exc is None and type(self._result) is _Serialized:
            try:
                self._materialize()  # the task may have failed: only loading tells
            except BaseException as error:
                return error
        return exc

    def known_exception(self) -> BaseException | None:
        """The exception of a finished future if known without loading its result."""
        return cf.Future.exception(self, timeout=0)

    def cancel(self) -> bool:
        """Cancel if the task has not started; running tasks are not interrupted."""
        if self.done():
            return self.cancelled()
        if self._backend is not None and not self._backend.cancel(self):
            return False
        if not super().cancel():
            return False
        with self._condition:  # no executor thread will wake cf.wait()/as_completed() waiters
            if self._state == cf._base.CANCELLED:
                self.set_running_or_notify_cancel()
        return True

    def running(self) -> bool:
        if super().running():
            return True
        return self._backend is not None and not self.done() and self._backend.running(self)

    def __await__(self) -> Generator[Any, None, T]:
        import asyncio  # imported here: asyncio costs ~40 ms and most users never await

        return asyncio.wrap_future(self).__await__()

    def __repr__(self) -> str:
        return super().__repr__().replace("<Future", "<ua.Future", 1)
