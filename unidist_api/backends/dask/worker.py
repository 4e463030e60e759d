# mypy: disallow-untyped-calls=False
"""What runs on a Dask worker: the task wrapper and our worker plugins.

- :func:`run` wraps :func:`~unidist_api.worker.run_native`, which unpacks the arguments
  and input values again for each attempt (small parts a fresh copy, large buffers
  read-only views of what Dask received), and packs the value here, on the worker
  (:func:`~.data.pack_result`): an unpicklable result fails the task there, by name,
  instead of failing later in Dask's transfer (or hanging, when a task on another worker
  needs it). Dask keeps that packed value and moves its large buffers as frames.
- **timeout**: :mod:`unidist_api.timeouts` interrupts an attempt past its timeout with an
  asynchronous exception in its thread; a thread blocked in a C call ignores that, so
  after a grace :func:`stuck_reporter` tells the owning client (event topic
  :data:`STUCK_TOPIC`), which has this worker process exit through :func:`exit_worker`
  (:mod:`.timeouts`).
- **initializer** is a named ``WorkerPlugin`` per executor (:class:`Initializer`): Dask
  runs it once in every worker process, present or future, before the worker takes tasks,
  in the thread that runs tasks, so the worker stays responsive while it runs. When it
  raises, its :class:`~unidist_api.worker.InitializerFailed` is what ``register_plugin``
  raises in the caller (a worker that joins later only logs it).
- **Logs**: embedded workers do not log each failed task (:class:`QuietTaskFailures`):
  the caller gets the exception.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from distributed import Worker, WorkerPlugin, get_worker

from ...worker import load_function, run_initializer, run_native, timeout_message
from .data import Blob, Wire, pack_result

__all__ = ["run", "exit_worker", "Initializer", "QuietTaskFailures", "STUCK_TOPIC"]

STUCK_TOPIC = "unidist-api-stuck-task"  # workers report there a timed-out task they cannot stop


def run(
    fn_data: bytes,
    payload: Wire | Blob,
    mode: int,
    retries: int,
    retry_on: tuple[type[BaseException], ...],
    timeout: float | None,
    *inputs: Wire,
) -> Wire:
    """Run one task on a Dask worker; its value is packed here (large buffers as frames)."""
    on_stuck = None if timeout is None else stuck_reporter(fn_data, timeout)
    # large arguments come in a frame of their own (a Blob): pickle reads the view as is
    arguments = payload.data if isinstance(payload, Blob) else payload
    try:
        value = run_native(
            fn_data, arguments, mode, retries, retry_on, *inputs, timeout=timeout, on_stuck=on_stuck
        )
    except BaseException as exc:
        # run_native raises from inside its handler, so the exception's __context__ leads
        # back to itself; Dask pickles contexts (tblib) and would recurse forever.
        exc.__context__ = None
        raise
    return pack_result(fn_data, value)


def stuck_reporter(fn_data: bytes, timeout: float) -> Callable[[], None]:
    """The hook for an attempt the interrupt did not stop: tell the caller's client.

    Dask runs tasks in threads, where the interrupt (an asynchronous exception) waits
    for the thread to run Python again; a thread blocked in a C call (``time.sleep``)
    does not. The client that owns the task then fails it and replaces this worker
    (:class:`~.timeouts.StuckTasks`).
    """
    worker = get_worker()
    key = worker.get_current_task()
    name = getattr(load_function(fn_data), "__qualname__", None) or str(key)

    def report() -> None:
        worker.log_event(
            STUCK_TOPIC,
            {"key": key, "worker": worker.address, "message": timeout_message(name, timeout)},
        )

    return report


async def exit_worker() -> None:
    """Run by ``Client.run`` in a worker whose thread is stuck: end its process now.

    A coroutine function: ``Client.run(wait=False)`` takes no other kind.
    """
    os._exit(1)


class Initializer(WorkerPlugin):
    """Runs an executor's ``initializer(*initargs)`` once in every worker process."""

    def __init__(self, init_data: bytes) -> None:
        self.init_data = init_data

    async def setup(self, worker: Worker) -> None:
        # in the thread that runs the tasks, so the worker answers its scheduler meanwhile
        executor = worker.executors["default"]
        await asyncio.get_running_loop().run_in_executor(executor, run_initializer, self.init_data)


class QuietTaskFailures(WorkerPlugin):
    """Stops embedded workers from logging each failed task: the caller gets the exception."""

    name = "unidist-api-quiet-task-failures"  # one per cluster
    idempotent = True

    def setup(self, worker: Worker) -> None:
        logging.getLogger("distributed.worker").addFilter(_not_a_task_failure)


def _not_a_task_failure(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Compute Failed")
