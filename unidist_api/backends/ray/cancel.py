"""Cancelling Ray tasks exactly, without ``ray.cancel``: claims; and stuck marks.

``ray.cancel`` can crash the calling process when it lands while the task finishes (a
race in Ray's task manager, ray-project/ray#54846), which is exactly when map and
pipeline cancel what they no longer need, so we never call it. Instead:

- **Claims.** Each task is claimed once, by whoever comes first: the worker that starts
  it, or the caller that cancels it. ``cancel()`` is True only when the caller's claim
  won, so the task never runs (the worker that gets to it skips it), and False when a
  worker's did: the task has started, as ``ProcessPoolExecutor.cancel()`` of a running
  call. A claim is a directory made (``mkdir``: atomic, one system call, ~5 us) in a
  directory the caller makes in /dev/shm, for every worker on the caller's machine (its
  mode tells whose it is: ``0o700`` a worker's, ``0o500`` the caller's); a worker
  on another machine (no such directory there) claims a key of Ray's key-value store
  with a put-if-absent (one GCS round trip), and a caller connected to a cluster claims
  there too. A retried attempt (a lost worker) finds its own earlier claim and runs.
  The caller removes a task's claims when its future completes, the directory when it
  stops using Ray.
- **Stuck marks**: a worker whose task is past its ``timeout`` and stuck where the
  interrupt cannot reach (one long C call) marks the task, then ends its own process;
  Ray runs the task again (a lost worker), and that attempt, seeing the mark, fails at
  once with TaskTimeoutError instead of running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import uuid

import ray
from ray.experimental import internal_kv

__all__ = ["Claims", "claimed_by_caller", "mark_stuck_and_exit", "stuck_key", "was_stuck"]

CLAIM_PREFIX = "unidist-api-claim:"
STUCK_PREFIX = "unidist-api-stuck:"
_WORKER, _CALLER = b"r", b""  # a claim's value in the store: a worker's, or the caller's
_WORKER_MODE, _CALLER_MODE = 0o700, 0o500  # a claim directory's mode: whose it is


_DIR_PREFIX = "unidist-api-claims-"  # then the caller's pid namespace, pid and a token


def _pid_space() -> int:
    """This process's PID namespace (0 if unknown): pids are judged only within one."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _claims_root() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def _remove_stale(root: str) -> None:
    """Remove the claim directories of callers that died without removing theirs."""
    try:
        names = [name for name in os.listdir(root) if name.startswith(_DIR_PREFIX)]
    except OSError:
        return
    space = _pid_space()
    for name in names:
        try:
            their_space, pid = (int(part) for part in name[len(_DIR_PREFIX) :].split("-")[:2])
            if their_space != space or not space:
                continue  # pids of another namespace mean nothing here
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        except (ValueError, OSError):  # not ours to judge (another user's, say)
            continue


# -- in the caller ------------------------------------------------------------------------------
class Claims:
    """The caller's side: claims tasks it cancels, removes those of finished tasks.

    ``spec`` is what a task carries to its worker: ``(directory, key prefix)``.
    ``in_store`` says whether the caller also claims in Ray's key-value store (it is
    connected to a cluster, whose nodes may be other machines).
    """

    def __init__(self, in_store: bool) -> None:
        token = uuid.uuid4().hex
        root = _claims_root()
        _remove_stale(root)
        self.directory = os.path.join(root, f"{_DIR_PREFIX}{_pid_space()}-{os.getpid()}-{token}")
        os.mkdir(self.directory, 0o700)
        self.prefix = f"{CLAIM_PREFIX}{token}:"
        self.spec = (self.directory, self.prefix)
        self.in_store = in_store
        self._lock = threading.Lock()
        self._keys: set[str] = set()  # claims in the store (ours or a worker's) to remove

    def cancel(self, task_id: str) -> bool:
        """Claim the task for the caller: True if it has not started (nor will it).

        Connected to a cluster, the store's claim comes first: a store that cannot be
        reached leaves no claim at all (so no worker skips a task reported as running).
        """
        key = self.prefix + task_id
        if self.in_store:
            try:
                existed = internal_kv._internal_kv_put(key, _CALLER, overwrite=False)
            except Exception:  # the GCS unreachable: we cannot know, so it may run
                logging.getLogger(__name__).debug("claiming a task failed", exc_info=True)
                return False
            with self._lock:
                self._keys.add(key)
            if existed:
                return False  # a worker on another machine claimed it: it runs
        try:
            os.mkdir(os.path.join(self.directory, task_id), _CALLER_MODE)
        except FileExistsError:
            return False  # a worker on this machine claimed it: it runs
        except OSError:  # the directory is gone: we stopped using Ray
            return False
        return True

    def started(self, task_id: str) -> bool:
        """Whether a worker on this machine claimed the task (it runs, or ran)."""
        try:
            return bool(os.stat(os.path.join(self.directory, task_id)).st_mode & 0o200)
        except OSError:
            return False

    def finished(self, task_id: str) -> None:
        """The task's future completed: its claims go (one in the store, which a worker
        on another machine made, is removed by :meth:`sweep`, off the caller's thread)."""
        try:
            os.rmdir(os.path.join(self.directory, task_id))
        except FileNotFoundError:  # no worker here claimed it: one elsewhere may have
            if self.in_store:
                with self._lock:
                    self._keys.add(self.prefix + task_id)
        except OSError:
            pass

    def sweep(self) -> None:
        """Remove the store's claims of finished tasks (the completer thread)."""
        if not self.in_store or not self._keys:
            return
        with self._lock:
            keys, self._keys = self._keys, set()
        for key in keys:
            try:
                internal_kv._internal_kv_del(key)
            except Exception:  # Ray stopping: its store goes with it
                return

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        if self.in_store:
            with contextlib.suppress(Exception):
                internal_kv._internal_kv_del(self.prefix, del_by_prefix=True)


# -- on the worker ------------------------------------------------------------------------------
def claimed_by_caller(spec: tuple[str, str]) -> bool:
    """Claim the task this worker starts; True if the caller claimed it first (cancelled).

    An earlier attempt's claim (Ray runs a task again when its worker was lost) is this
    task's own: it runs.
    """
    directory, prefix = spec
    task_id = _task_id()
    path = directory + "/" + task_id
    try:
        os.mkdir(path, _WORKER_MODE)
    except FileExistsError:
        try:
            return not os.stat(path).st_mode & 0o200  # the caller's has no write bit
        except OSError:  # removed meanwhile: the caller is done with it
            return True
    except FileNotFoundError:  # another machine than the caller's: the key-value store
        return _claimed_in_store(prefix + task_id)
    return False


def _task_id() -> str:
    """The running task's id (hex), as the caller's ``ObjectRef.task_id().hex()``."""
    current = getattr(ray._private.worker.global_worker, "current_task_id", None)  # 3x faster
    if current is not None:
        return str(current.hex())
    return ray.get_runtime_context().get_task_id() or ""


def _claimed_in_store(key: str) -> bool:
    try:
        if not internal_kv._internal_kv_put(key, _WORKER, overwrite=False):
            return False
        return internal_kv._internal_kv_get(key) == _CALLER
    except Exception:  # the GCS unreachable: run it (the caller could not claim it either)
        return False


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
