"""The library's own exceptions, one tree (drawn in docs/errors.md).

Each error also derives from the builtin a user would catch without knowing us
(``ValueError``, ``ImportError``, ``TypeError``, ``RuntimeError``, ``TimeoutError``,
``ConnectionError``), so ``except ValueError`` keeps working. Engine errors are mapped
here at the backend boundary with ``raise ... from``; an exception raised *by a task*
is never wrapped: it comes back with its own type, carrying the remote traceback as
its ``__cause__`` (a :class:`RemoteTraceback`).
"""

from __future__ import annotations

import concurrent.futures as cf

__all__ = [
    "UnidistError",
    "UnknownBackendError",
    "BackendNotInstalledError",
    "InvalidOptionError",
    "UnsupportedOptionError",
    "SerializationError",
    "ExecutorShutdownError",
    "WorkerLostError",
    "BrokenExecutorError",
    "TaskTimeoutError",
    "ClusterConnectionError",
    "TaskError",
    "CheckpointError",
    "JournalInUseError",
    "NotAJournalError",
    "RemoteTraceback",
]


class UnidistError(Exception):
    """Base class of every error the library raises itself."""


class UnknownBackendError(UnidistError, ValueError):
    """A backend name that is not registered; the message lists the known names."""


class BackendNotInstalledError(UnidistError, ImportError):
    """The engine package of a backend is missing; the message names the extra to install."""


class InvalidOptionError(UnidistError, ValueError):
    """An option that does not exist, or a value it cannot take."""


class UnsupportedOptionError(InvalidOptionError):
    """A valid task option this backend cannot honour (raised at submit time, never ignored)."""


class SerializationError(UnidistError, TypeError):
    """A function, argument or result that cannot be pickled; the message names it."""


class ExecutorShutdownError(UnidistError, RuntimeError):
    """A call on an executor after ``shutdown()``."""


class WorkerLostError(UnidistError, RuntimeError):
    """A worker process died while running a task, more often than retries allow."""


class BrokenExecutorError(UnidistError, cf.BrokenExecutor):
    """The executor's ``initializer`` failed in a worker, so the executor is broken.

    As a ``concurrent.futures`` pool whose initializer fails: the tasks pending then fail
    with it (without running), and every later ``submit``, ``map``, ``pipeline``,
    ``reduce`` or ``put`` raises it at the call; ``shutdown()`` still works. Its
    ``__cause__`` is the initializer's own exception, whose ``__cause__`` is the
    :class:`RemoteTraceback` of where it was raised. Fix the initializer and create a new
    executor.
    """


class TaskTimeoutError(UnidistError, TimeoutError):
    """A task ran longer than its ``timeout`` option."""


class ClusterConnectionError(UnidistError, ConnectionError):
    """A cluster address that could not be reached within the connect timeout."""


class TaskError(UnidistError, RuntimeError):
    """A task raised an exception that could not be sent back as itself (unpicklable).

    The message holds the original type name and message.
    """


class CheckpointError(UnidistError, RuntimeError):
    """A checkpoint journal (``checkpoint=PATH``) that cannot be used; the message says why."""


class JournalInUseError(CheckpointError):
    """The journal is in use by another running map or pipeline (this process or another)."""


class NotAJournalError(CheckpointError, ValueError):
    """The file at the checkpoint path is not a journal (or is corrupt); it was left as it was."""


class RemoteTraceback(Exception):
    """Carries the traceback text of an exception raised in a task.

    Set as ``__cause__`` of the task's exception, so a traceback printed in the
    caller shows where the error happened on the worker.
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb
