"""The small internal interface that ``map``, ``pipeline`` and ``reduce`` run on.

An :class:`~unidist_api.executor.Executor` owns one :class:`Runner` over its backend;
the streaming modules receive that runner, never the executor, so they depend on
four things: submit a prepared task, check its options, how many tasks run at once,
and load many finished results in one engine call.

The runner also owns shutting down, because maps outlive the call that made them:
it knows each map still running (:class:`Stream`), so that ``shutdown(wait=True)``
runs an unconsumed map's input to its end (the stdlib's map submitted it all at the
call), and after ``shutdown(wait=False)`` a map made before still runs as it is
consumed, the engine stopping when the last such map is done (docs/semantics.md).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any, Protocol

from .backends.base import Backend, Task
from .errors import ExecutorShutdownError
from .futures import Future
from .task import DEFAULT_OPTIONS, TaskOptions

__all__ = ["Runner", "Stream"]


class Stream(Protocol):
    """What the runner needs of a running ``map`` (``mapping._Stream``)."""

    def unconsumed(self) -> bool:
        """Never iterated, and with no ``buffersize``: its whole input is to run."""

    def drain(self) -> None:
        """Run the rest of the input, dropping the results (failures included)."""

    def gone(self) -> bool:
        """Its iterator was garbage-collected: nobody will consume it."""

    def finish(self, cancel: bool) -> None:
        """Submit no more (``cancel``: and cancel what has not started); unregister."""


class Runner:
    """Submits prepared tasks to one backend until its executor shuts down."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.closed = False
        self._streams: set[Stream] = set()  # maps still running
        # reentrant: a map dropped without being advanced unregisters from a weakref
        # callback, which runs wherever a garbage collection does, maybe inside a block
        self._lock = threading.RLock()
        self._deferred = False  # shut down with wait=False while maps ran: stop after them
        self._drains: list[threading.Thread] = []
        self._close_lock = threading.Lock()

    @property
    def workers(self) -> int:
        """How many tasks can run at once (sizes the default buffers)."""
        return self.backend.workers

    @property
    def memory_budget(self) -> int:
        """Bytes ``map`` and ``pipeline`` may hold in the caller (the ``memory_budget`` option)."""
        return self.backend.memory_budget

    def check_open(self) -> None:
        """Raise BrokenExecutorError once the initializer failed, ExecutorShutdownError
        after shutdown (in this order, as ``concurrent.futures``)."""
        if self.backend.broken is not None:
            raise self.backend.broken_error()
        if self.closed:
            raise ExecutorShutdownError(
                f"this {self.backend.name!r} executor has been shut down; create a new "
                "ua.Executor (or use the module functions, which start a new one)"
            )

    def check_options(self, options: TaskOptions) -> None:
        """Refuse, now, task options the backend cannot honour (free for the defaults)."""
        if options is not DEFAULT_OPTIONS:
            self.backend.check_options(options)

    def submit(self, task: Task, stream: Stream | None = None) -> Future[Any]:
        """Submit ``task``; after shutdown only for a map made before it (``stream``)."""
        if self.closed and (stream is None or stream not in self._streams):
            self.check_open()
        return self.backend.submit(task)

    def load_ready(self, needed: Future[Any], others: Iterable[Future[Any]]) -> None:
        """Before ``needed`` is read: load it with the finished ``others``, in one engine
        call (``Backend.fetch``).

        On Ray and Dask a value is fetched on its first ``result()``, one round trip each;
        when several tasks have finished, one bulk fetch serves them all. Nothing is
        fetched while ``needed`` is in hand already (loaded by an earlier bulk fetch): a
        round trip then would only delay a value that is here.
        """
        backend = self.backend
        if backend.fetches and needed.unloaded():
            done = [needed, *(future for future in others if future.unloaded())]
            if len(done) > 1:
                backend.fetch(done, None)

    # -- maps that outlive their call ------------------------------------------------------
    def register(self, stream: Stream) -> None:
        with self._lock:
            self.check_open()
            self._streams.add(stream)

    def unregister(self, stream: Stream) -> None:
        """``stream`` submits no more; the last one out after ``shutdown(wait=False)``
        stops the engine."""
        with self._lock:
            if stream not in self._streams:
                return
            self._streams.discard(stream)
            stop = self._deferred and not self._streams
            if stop:
                self._deferred = False
        if stop:
            self.backend.shutdown(wait=False)

    def dropped(self, stream: Stream) -> None:
        """An unconsumed map was garbage-collected: after a shutdown, run it out now."""
        with self._lock:
            drain_now = self._deferred and stream in self._streams
        if drain_now:
            self._drain_in_background(stream)

    def _drain_in_background(self, stream: Stream) -> None:
        thread = threading.Thread(
            target=_drain, args=(stream,), daemon=True, name="unidist-api map drain"
        )
        self._drains.append(thread)
        thread.start()

    def close(self, wait: bool, cancel_futures: bool) -> None:
        """``Executor.shutdown``: the first call shuts down, later ones return at once."""
        with self._close_lock:
            if self.closed:
                return
            self.closed = True
        self.shutdown(wait=wait, cancel_futures=cancel_futures)

    @property
    def settled(self) -> bool:
        """Closed, and no map made before ``shutdown(wait=False)`` still runs."""
        with self._lock:
            return self.closed and not self._deferred

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        """After ``closed`` was set: settle the maps, then stop the backend."""
        with self._lock:
            streams = list(self._streams)
        if cancel_futures or not streams:
            for stream in streams:
                stream.finish(cancel=True)
            self.backend.shutdown(wait=wait, cancel_futures=cancel_futures)
        elif wait:
            try:
                for stream in streams:
                    if stream.unconsumed():
                        _drain(stream)
                    else:  # being consumed: what it submitted runs, then it stops there
                        stream.finish(cancel=False)
            except BaseException:  # interrupted: stop everything, at once
                for stream in streams:
                    stream.finish(cancel=True)
                self.backend.shutdown(wait=False, cancel_futures=True)
                raise
            self.backend.shutdown(wait=True)
        else:
            with self._lock:
                self._deferred = True
                live = bool(self._streams)
            for stream in streams:
                if stream.unconsumed() and stream.gone():
                    self._drain_in_background(stream)
            if not live:
                self.backend.shutdown(wait=False)

    def at_exit(self, interrupted: bool) -> None:
        """Interpreter exit after ``shutdown(wait=False)`` while maps ran: unless
        ``interrupted``, let them and what they submitted finish (as the stdlib does)."""
        with self._lock:
            deferred, self._deferred = self._deferred, False
            streams = list(self._streams)
        if not deferred:
            return
        if not interrupted:
            for thread in list(self._drains):
                thread.join()
        for stream in streams:
            if not interrupted and stream.unconsumed():
                _drain(stream)  # as the stdlib's map, which had submitted it all
            stream.finish(cancel=interrupted)
        self.backend.shutdown(wait=not interrupted, cancel_futures=interrupted)


def _drain(stream: Stream) -> None:
    try:
        stream.drain()
    finally:
        stream.finish(cancel=False)
