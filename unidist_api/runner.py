"""The small internal interface that ``map``, ``pipeline`` and ``reduce`` run on.

An :class:`~unidist_api.executor.Executor` owns one :class:`Runner` over its backend;
the streaming modules receive that runner, never the executor, so they depend on
four things: submit a prepared task, check its options, how many tasks run at once,
and load many finished results in one engine call.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .backends.base import Backend, Task
from .errors import ExecutorShutdownError
from .futures import Future
from .task import DEFAULT_OPTIONS, TaskOptions

__all__ = ["Runner"]


class Runner:
    """Submits prepared tasks to one backend until its executor shuts down."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.closed = False

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

    def submit(self, task: Task) -> Future[Any]:
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
