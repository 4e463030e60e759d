"""Telling workers things without ``ray.cancel``: the cancel board and stuck marks.

``ray.cancel`` can crash the calling process when it lands while the task finishes (a
race in Ray's task manager, ray-project/ray#54846), which is exactly when map and
pipeline cancel what they no longer need, so we never call it. Two signals instead,
both small keys in Ray's internal key-value store (the GCS, reachable from the caller
and from every worker of the cluster):

- **The cancel board** (one key per driver job): the ids of the tasks the caller
  cancelled and that have not finished yet. ``cancel()`` only posts the id there and is
  True for any unfinished task; a worker reads the board when it starts a task, at most
  every ``REFRESH`` seconds (one GCS round trip, ~0.4 ms), and skips a task listed on it.
  Best effort: a task that starts before the worker's next read, or was running, runs to
  the end and its result is dropped. A running task is never interrupted.
- **Stuck marks**: a worker whose task is past its ``timeout`` and stuck where the
  interrupt cannot reach (one long C call) marks the task, then ends its own process;
  Ray runs the task again (a lost worker), and that attempt, seeing the mark, fails at
  once with TaskTimeoutError instead of running.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import ray
from ray.experimental import internal_kv

__all__ = ["CancelBoard", "cancelled_here", "REFRESH", "mark_stuck_and_exit", "stuck_key",
           "was_stuck"]

BOARD_PREFIX = "unidist-api-cancel:"
STUCK_PREFIX = "unidist-api-stuck:"
REFRESH = 0.2  # seconds a worker trusts its last read of the cancel board


def _job_key() -> str:
    """The board's key for this process's job (the driver's, and its workers' alike)."""
    return BOARD_PREFIX + ray.get_runtime_context().get_job_id()


# -- in the caller ------------------------------------------------------------------------------
class CancelBoard:
    """The caller's side: task ids to skip, posted to the GCS by one thread (``post``)."""

    def __init__(self) -> None:
        try:
            self.key: str | None = _job_key()
        except Exception:  # a Ray without job ids here (e.g. a client): no cancelling
            self.key = None
        self._lock = threading.Lock()
        self._ids: set[str] = set()
        self._dirty = False  # changed since the last post
        self._posted = False  # the key exists in the GCS

    def add(self, task_id: str) -> bool:
        """List a task to skip; False if this board cannot work (no key)."""
        if self.key is None:
            return False
        with self._lock:
            self._ids.add(task_id)
            self._dirty = True
        return True

    def discard(self, task_id: str) -> None:
        """Forget a task that finished (skipped or not): the board stays small."""
        if self._ids:  # unlocked peek: the common case is an empty board
            with self._lock:
                if task_id in self._ids:
                    self._ids.discard(task_id)
                    self._dirty = True

    @property
    def dirty(self) -> bool:
        return self._dirty

    def post(self) -> None:
        """Write the board to the GCS if it changed (from one thread only: order kept)."""
        with self._lock:
            if not self._dirty or self.key is None:
                return
            self._dirty = False
            value = ",".join(self._ids).encode()
        try:
            if value:
                internal_kv._internal_kv_put(self.key, value)
                self._posted = True
            elif self._posted:
                internal_kv._internal_kv_del(self.key)
                self._posted = False
        except Exception:  # Ray stopping: the tasks go with it
            logging.getLogger(__name__).debug("posting the cancel board failed", exc_info=True)

    def close(self) -> None:
        if self._posted and self.key is not None:
            self._posted = False
            try:
                internal_kv._internal_kv_del(self.key)
            except Exception:
                pass


# -- on the worker ------------------------------------------------------------------------------
_board: tuple[float, frozenset[str]] = (-1e9, frozenset())  # (read at, ids) in this process
_board_key: str | None = None  # a Ray worker process serves one job: its key never changes


def cancelled_here() -> bool:
    """Whether the caller cancelled the task this worker is starting (see the module doc)."""
    global _board, _board_key
    now = time.monotonic()
    read_at, ids = _board
    if now - read_at > REFRESH:
        try:
            if _board_key is None:
                _board_key = _job_key()
            value = internal_kv._internal_kv_get(_board_key)
        except Exception:  # the GCS unreachable for a moment: run the task (best effort)
            value = None
        ids = frozenset(value.decode().split(",")) if value else frozenset()
        _board = (now, ids)
    return bool(ids) and (ray.get_runtime_context().get_task_id() or "") in ids


def mark_stuck_and_exit(key: str) -> None:
    """The watchdog's hook for an attempt the SIGALRM could not stop: mark it, then exit."""
    try:
        internal_kv._internal_kv_put(key, b"1")
    finally:
        os._exit(1)  # Ray replaces the process and runs the task again: see was_stuck


def stuck_key() -> str:
    """The stuck mark's key of the task this worker runs (taken in the task's thread)."""
    return STUCK_PREFIX + (ray.get_runtime_context().get_task_id() or "")


def was_stuck(key: str) -> bool:
    """Whether an earlier attempt of this task left a stuck mark (taken away here).

    Only retries look (one GCS round trip): a first attempt has no earlier one.
    """
    worker = getattr(ray._private.worker.global_worker, "core_worker", None)
    attempt = getattr(worker, "get_current_task_attempt_number", None)  # private, may go
    if attempt is not None and not attempt():
        return False
    return bool(internal_kv._internal_kv_del(key))
