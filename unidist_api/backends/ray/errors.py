"""Ray's errors as ours: a task's own exception, a lost worker, Ray stopping.

A task's exception travels through Ray inside :class:`TaskFailed`, pickled by our
cloudpickle (so a class the workers got by value comes back as the caller's very class),
and ``result()`` raises it with its remote traceback. Everything else Ray raises is
mapped to one of our errors, with Ray's as its ``__cause__``: a task whose worker (or
node) died more often than ``LOST_WORKER_RETRIES`` allow fails with WorkerLostError,
which names the task. A task whose executor's initializer failed on its worker brings
:class:`~unidist_api.worker.InitializerFailed`: that breaks the executor (found by the
initializer's token in :data:`initializers`) and the task fails with BrokenExecutorError.
"""

from __future__ import annotations

import concurrent.futures as cf
import traceback
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ray
import ray.exceptions as rex

from ...errors import ExecutorShutdownError, UnidistError, WorkerLostError
from ...futures import RemoteFailure
from ...serialization import dumps, loads, task_name
from ...worker import InitializerFailed, failure_details, sendable
from ..base import LOST_WORKER_RETRIES, broken_error, worker_lost

if TYPE_CHECKING:
    from ..base import Backend

__all__ = ["LOST_WORKER", "TaskFailed", "engine_error", "task_error", "initializers"]

#: The ray executors with an initializer, by its token (which InitializerFailed carries).
initializers: weakref.WeakValueDictionary[str, Backend] = weakref.WeakValueDictionary()

#: Ray's errors for a task whose worker (or node) died more often than max_retries allow.
LOST_WORKER = (
    rex.WorkerCrashedError,
    rex.NodeDiedError,
    rex.LocalRayletDiedError,
    rex.OutOfMemoryError,
)


def task_error(err: BaseException, ref: Any) -> RemoteFailure:
    """What ``ray.get`` raised, as the task's own failure or one of our errors."""
    if isinstance(err, rex.RayTaskError):
        cause = err.cause
        if isinstance(cause, TaskFailed):
            return cause.failure(ref)
        if isinstance(cause, rex.RayError):  # e.g. an input of the task was lost
            return task_error(cause, ref)
        if isinstance(cause, BaseException):  # Ray's own code on the worker failed
            return RemoteFailure(cause, str(err))  # Ray's text holds the remote traceback
    return RemoteFailure(engine_error(err))


def engine_error(err: BaseException, fn: Callable[..., Any] | None = None) -> BaseException:
    """A Ray failure that is not the task's own, as one of our errors (cause: Ray's).

    ``fn`` is the task's function, to name it (None where only the ObjectRef is known).
    """
    mapped: BaseException
    if isinstance(err, rex.TaskCancelledError):
        mapped = cf.CancelledError("Ray cancelled this task (or one of its inputs)")
    elif isinstance(err, LOST_WORKER):
        mapped = worker_lost(
            "?" if fn is None else task_name(fn),
            LOST_WORKER_RETRIES + 1,
            f"ray: {type(err).__name__}",
        )
    elif isinstance(err, rex.ObjectLostError):
        mapped = WorkerLostError(
            f"Ray lost a value this task needs, or its result, with the worker or node "
            f"holding it: {type(err).__name__}: {err}. Put the object again, or resubmit"
        )
    elif isinstance(err, rex.RaySystemError):
        mapped = ExecutorShutdownError(f"Ray stopped before this task finished: {err}")
    else:
        mapped = UnidistError(f"Ray could not run this task: {type(err).__name__}: {err}")
    mapped.__cause__ = err
    return mapped


class TaskFailed(Exception):
    """A task's exception on its way through Ray, pickled by our cloudpickle.

    ``task`` is the failing task's id: a task that fails because an input failed
    carries that input's failure, whose batch results are not its own.
    """

    def __init__(self, data: bytes, task: str) -> None:
        super().__init__(data, task)
        self.data, self.task = data, task

    @classmethod
    def carrying(cls, exc: BaseException) -> TaskFailed:
        """On the worker: wrap ``exc`` (an unpicklable one becomes TaskError)."""
        state = exc.__dict__
        if "_ua_traceback" not in state:  # raised outside run_native (the initializer)
            state["_ua_traceback"] = "".join(traceback.format_exception(exc))
        data = dumps(sendable(exc))
        return cls(data, ray.get_runtime_context().get_task_id() or "")

    def failure(self, ref: Any) -> RemoteFailure:
        """In the caller: the task's exception, traceback and (its own) partial results."""
        exc = loads(self.data)
        if isinstance(exc, InitializerFailed):  # nothing of the task ran: the executor broke
            backend = initializers.get(exc.token)
            if backend is None:  # gone (a future holds its backend: hardly ever)
                return RemoteFailure(broken_error("ray", None, exc.error()))
            return RemoteFailure(backend.break_executor(exc))
        tb, partial = failure_details(exc)
        if ref is None or ref.task_id().hex() != self.task:
            partial = None
        return RemoteFailure(exc, tb, partial)
