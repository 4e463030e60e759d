"""``serial``: every task runs in the calling thread, in submission order, one at a time.

It is the reference the other backends are tested against, and the one to debug
with (``breakpoint()`` inside a task works). Arguments and results still make a
pickle round trip, exactly as on a worker process, so a task that mutates its
arguments, or returns an unpicklable object, behaves here as it will on a cluster.
Large buffers (:mod:`unidist_api.data`) skip it: a task reads the caller's arrays
through read-only views, without a copy, as a worker reads an object store; ``put``
takes one snapshot copy, and a result is copied once into the caller's own memory.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from ..data import Embedded, Packed, load_result
from ..errors import UnsupportedOptionError
from ..futures import Future
from ..serialization import FunctionCache, pack_arguments, pack_value
from ..task import TaskOptions
from ..worker import InitializerFailed, run_initializer, run_pickled
from .base import Backend, Task, complete, resolve_arguments

log = logging.getLogger(__name__)


class SerialBackend(Backend):
    name = "serial"
    honours_timeout = True

    def __init__(
        self,
        *,
        address: str | None,
        workers: int | None,
        initializer: Callable[..., Any] | None,
        initargs: tuple[Any, ...],
        options: Mapping[str, Any],
    ) -> None:
        super().__init__(
            address=address,
            workers=workers,
            initializer=initializer,
            initargs=initargs,
            options=options,
        )
        self._lock = threading.RLock()  # re-entrant: a task may submit to its own executor
        self._functions = FunctionCache()
        self._initialized = False
        self._announced = False  # the INFO line of the first use is logged

    @property
    def workers(self) -> int:
        return 1

    def check_options(self, options: TaskOptions) -> None:
        """As every backend, and ``timeout`` only from the main thread (SIGALRM stops it)."""
        super().check_options(options)
        thread = threading.current_thread()
        if options.timeout is not None and thread is not threading.main_thread():
            raise UnsupportedOptionError(
                f"the task option timeout={options.timeout!r} needs the main thread on the "
                "'serial' backend, which runs the task in the caller's thread and stops it "
                f"with a signal, but this is thread {thread.name!r}; "
                "submit from the main thread, or use the 'local' backend (which stops tasks "
                "on its workers)"
            )

    def submit(self, task: Task) -> Future[Any]:
        """Run ``task`` now; the first one runs the initializer first (its failure breaks
        the executor: that task fails with BrokenExecutorError, later calls raise it)."""
        future: Future[Any] = Future(self)
        if not self._announced:
            self._announce()
        with self._lock:
            if self.init_data is not None and not self._initialized:
                self._initialized = True  # runs as on a worker: unpickled, shared globals
                try:
                    run_initializer(self.init_data)
                except InitializerFailed as failed:  # this task is pending at the break
                    future.set_exception(self.break_executor(failed))
                    return future
            try:
                args, kwargs = resolve_arguments(task, _value)
            except BaseException as exc:  # an input future failed: so does this task
                future.set_exception(exc)
                return future
            fn_data = self._functions.get(task.fn)
            payload = pack_arguments(task.fn, args, kwargs)
            options = task.options
            outcome = run_pickled(
                fn_data, payload, task.mode, options.retries, options.retry_on, options.timeout
            )
        complete(future, outcome)
        return future

    def put(self, obj: Any) -> Future[Any]:
        if not self._announced:
            self._announce()
        future: Future[Any] = Future(self)
        data = pack_value(obj, "the object passed to put")
        if isinstance(data, Packed):  # a snapshot: the caller may change obj afterwards
            data = data.detached()
        future.set_serialized_result(data, load_result)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._functions.clear()

    def _announce(self) -> None:
        """Log, once, what runs the tasks (at the first submit or put: it starts nothing)."""
        self._announced = True
        log.info(
            "serial: tasks run in this process (pid %d), in the calling thread, one at a "
            "time; no worker process is started",
            os.getpid(),
        )


def _value(future: Future[Any]) -> Any:
    """An input future's value as the task receives it: still packed when it can be."""
    if not future.done():  # a future of another executor
        return future.result()
    data = future.serialized_result()  # raises the input's exception if it failed
    return future.result() if data is None else Embedded(data)
