# mypy: disallow-untyped-calls=False
"""Dask's failures as ours: a task's own exception stays itself, Dask's become our errors.

- A worker that died with the task more often than the scheduler's
  ``distributed.scheduler.allowed-failures`` allows (Dask's ``KilledWorker``) is
  ``WorkerLostError`` (the embedded cluster allows ``LOST_WORKER_RETRIES``, as every
  backend; a cluster we connect to keeps its own setting).
- The caller losing the scheduler (Dask cancels every future with the reason
  ``scheduler-connection-lost``) is ``ClusterConnectionError`` naming the scheduler.
- A value lost with its worker (a ``put`` object: Dask recomputes task results, not
  scattered data) is ``WorkerLostError``; an input cancelled is ``CancelledError``.
- A value asked for after ``shutdown`` is ``ExecutorShutdownError``; losing the
  connection while fetching one is ``ClusterConnectionError``.
"""

from __future__ import annotations

import concurrent.futures as cf
import re
from typing import Any

from distributed import Future as DaskFuture
from distributed import KilledWorker

from ...errors import ClusterConnectionError, ExecutorShutdownError, WorkerLostError
from ...futures import Future
from ...serialization import unloadable
from ..base import fail_from_engine, worker_lost

__all__ = ["fail", "engine_error", "scatter_error"]


def fail(future: Future[Any], handle: DaskFuture[Any]) -> None:
    """Complete ``future`` with its Dask task's failure: the task's own exception, or ours."""
    exc = _exception_of(handle)
    error = engine_error(exc, handle, reading=False)
    if error is None:
        fail_from_engine(future, exc)
        return
    try:
        future.set_exception(error)
    except cf.InvalidStateError:
        pass


def _exception_of(handle: DaskFuture[Any]) -> BaseException:
    """Why a Dask future failed, or why Dask cancelled it (we did not ask)."""
    if handle.status == "error":
        exc: BaseException = handle.exception()
        return exc
    try:
        handle.result()
    except cf.CancelledError as cancelled:
        return cancelled
    return cf.CancelledError()


def engine_error(
    exc: BaseException, handle: DaskFuture[Any], *, reading: bool
) -> BaseException | None:
    """Our error for a failure of Dask itself (Dask's as its cause); None for the task's own.

    ``reading``: the task had finished, and fetching its value failed.
    """
    error: BaseException
    closed = handle.client.status in ("closing", "closed")
    if isinstance(exc, KilledWorker):
        error = worker_lost(
            str(exc.task).rpartition("-")[0] or str(exc.task),
            exc.allowed_failures + 1,
            "dask: KilledWorker; the cluster's distributed.scheduler.allowed-failures",
            limit=exc.allowed_failures,
        )
    elif closed and (reading or isinstance(exc, cf.CancelledError)):
        error = ExecutorShutdownError(
            "the executor was shut down before this value was read; read it before shutdown()"
        )
    elif isinstance(exc, cf.CancelledError):
        reason = str(getattr(exc, "reason", ""))
        if reason == "scheduler-connection-lost":  # no worker died: the caller lost the scheduler
            address = getattr(handle.client.scheduler, "address", None) or "its address"
            error = ClusterConnectionError(
                f"lost the connection to the Dask scheduler at {address} while this task was "
                "pending (the scheduler stopped, or the network between this process and it "
                "failed); check that the scheduler runs and is reachable, then run the work again"
            )
        elif "lost" in reason or "forgotten" in reason:
            error = WorkerLostError(
                "this value, or one this task needs, was lost with the worker holding it "
                "(Dask recomputes task results, but not put objects: put it again)"
            )
        else:
            error = cf.CancelledError("an input of this task was cancelled")
    elif reading and isinstance(exc, OSError):
        error = ClusterConnectionError(
            f"lost touch with the Dask cluster while fetching this task's value: {exc}"
        )
    else:
        return None
    error.__cause__ = exc
    return error


def scatter_error(exc: Exception) -> Exception:
    """``put``'s error when the worker could not unpickle the object, else ``exc`` itself.

    A Dask worker's error in unpickling scattered data comes back as a plain
    ``Exception`` holding the repr of the original, e.g. ``ModuleNotFoundError(...)``.
    (A packed value is unpickled only by the tasks that use it, which name it then; this
    covers a worker that cannot even load the packed form.)
    """
    found = re.fullmatch(r"ModuleNotFoundError\((['\"])No module named '([^']+)'\1\)", str(exc))
    if type(exc) is not Exception or found is None:
        return exc
    missing = ModuleNotFoundError(f"No module named {found.group(2)!r}", name=found.group(2))
    return unloadable("the object passed to put", missing, where="a Dask worker")
