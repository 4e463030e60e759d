"""One task of the ``local`` backend as sent to the pool, and what its failures become.

A :class:`Call` keeps a task's pickled call, so a task whose worker died is sent again
as it was, with the shared files it reads (held until it finishes) and the result
path of its current attempt. A task with a timeout gets a note path from
:class:`StuckNotes`: a stuck attempt writes the note before ending its worker, which
tells that timeout from any other reason the pool broke (loky reports only a broken
pool). :func:`pool_failure` turns loky's errors into the library's own.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from typing import Any

from ...errors import ExecutorShutdownError
from ..base import task_name, worker_lost
from .pool import is_broken

__all__ = ["Call", "StuckNotes", "pool_failure"]


class Call:
    """A task's pickled call, kept so a task whose worker died is sent again as is."""

    __slots__ = ("fn", "args", "held", "lost", "stuck", "timeout", "result")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        held: list[str],
        stuck: str | None = None,
        timeout: float | None = None,
    ) -> None:
        self.fn = fn  # for the error's task name
        self.args = args  # run_call's arguments, but the result path
        self.held = held  # shared files the task reads, released when it finishes
        self.lost = 0  # how often its worker died
        self.stuck = stuck  # with a timeout: where the task leaves a note if it gets stuck
        self.timeout = timeout  # the task's timeout option, for the error's message
        self.result: str | None = None  # where the current attempt writes a large result


class StuckNotes:
    """The folder of note files left by stuck tasks, and by a worker whose initializer
    failed (made on first need)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dir: str | None = None
        self._closed = False

    def path(self) -> str | None:
        """A fresh note path; None once closed (no new pool would run the task)."""
        with self._lock:
            if self._dir is None:
                if self._closed:
                    return None
                self._dir = tempfile.mkdtemp(prefix="unidist-api-stuck-")
            return os.path.join(self._dir, uuid.uuid4().hex)

    @staticmethod
    def take(path: str) -> bool:
        """Remove the note a stuck task left at ``path``; False if there is none."""
        try:
            os.unlink(path)
        except OSError:
            return False
        return True

    def close(self) -> None:
        with self._lock:
            folder, self._dir, self._closed = self._dir, None, True
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def pool_failure(exc: BaseException, call: Call) -> BaseException:
    """The error a task gets when the pool failed it (its own come back as outcomes)."""
    from loky.process_executor import ShutdownExecutorError

    if isinstance(exc, ShutdownExecutorError):
        stopped = ExecutorShutdownError("the executor was shut down before this task finished")
        stopped.__cause__ = exc
        return stopped
    if is_broken(exc):
        lost = worker_lost(
            task_name(call.fn), call.lost, f"local: the pool broke, {type(exc).__name__}"
        )
        lost.__cause__ = exc
        return lost
    return exc
