"""The loky pool of the ``local`` backend: how one starts, and how every one stops.

Workers start with native thread pools (OpenBLAS, MKL, OpenMP, ...) limited to their
share of the CPUs, as joblib, Dask and Ray do: two workers each running a BLAS call
on every core would oversubscribe the machine and burn CPU waiting. At interpreter
exit every pool still running is stopped at once (queued tasks cancelled). When a
pool breaks (a worker died), its other workers are killed a moment later: result
files they may still write are removed once they are gone (:class:`LostResults`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ...exit import arm, on_exit
from ..base import hash_seed
from .worker import start_worker

if TYPE_CHECKING:
    from .backend import LocalBackend

__all__ = [
    "new_pool",
    "worker_env",
    "is_broken",
    "stop_at_exit",
    "forget",
    "finishing",
    "LostResults",
    "THREAD_VARS",
]

log = logging.getLogger(__name__)

#: Environment variables that size native thread pools; each worker gets
#: ``cpu_count // workers`` unless the caller's environment or the ``env`` option says.
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMBA_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def worker_env(workers: int, env: Mapping[str, str] | None) -> dict[str, str]:
    """The environment variables set in every worker: thread limits, one hash seed
    for the pool (:func:`~..base.hash_seed`), then ``env``."""
    threads = str(max((os.cpu_count() or 1) // max(workers, 1), 1))
    found = {var: os.environ.get(var, threads) for var in THREAD_VARS}
    found["PYTHONHASHSEED"] = hash_seed()
    found.update(env or {})
    return found


def new_pool(
    workers: int,
    init_data: bytes | None,
    env: Mapping[str, str] | None,
    init_note: str | None = None,
    *,
    replacing: bool = False,
) -> Any:
    """A loky pool; ``init_note``: where a worker whose initializer fails leaves a note.

    Logs at INFO that it started (``replacing``: in place of a broken one).
    """
    import loky  # deferred: loky is imported when the backend is first used

    variables = worker_env(workers, env)
    pool = loky.ProcessPoolExecutor(
        max_workers=workers,
        initializer=start_worker,
        initargs=(os.getpid(), init_data, init_note),
        env=variables,
    )
    log.info(
        "local: %s a process pool (loky) of %d worker processes on this machine, children "
        "of pid %d, native thread pools limited to OMP_NUM_THREADS=%s each%s",
        "a worker process died: started a new" if replacing else "started",
        workers,
        os.getpid(),
        variables.get("OMP_NUM_THREADS", "?"),
        "; an initializer runs in each" if init_data is not None else "",
    )
    return pool


def is_broken(exc: BaseException) -> bool:
    """Whether loky reports a broken pool: a worker died (TerminatedWorkerError is one)."""
    import loky

    return isinstance(exc, loky.BrokenProcessPool)


# -- result files of lost attempts ----------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie writes nothing any more
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(") ")[2][:1] != "Z"
    except OSError:
        return True


class LostResults:
    """Result files of attempts lost with a broken pool, removed again once it is gone.

    loky fails a broken pool's futures before it kills the pool's other workers, so a
    worker may still write its attempt's result after the caller removed that path.
    """

    LIMIT = 30.0  # seconds to wait for a broken pool's workers to be gone

    def __init__(self, remove: Callable[[list[str]], None]) -> None:
        self._remove = remove
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[Any, list[str]]] = {}  # id(pool) -> (pool, paths)

    def add(self, pool: Any, path: str) -> None:
        self._remove([path])  # now, and again when the pool's workers are gone
        with self._lock:
            entry = self._pending.get(id(pool))
            if entry is None:
                pids = [p.pid for p in list(getattr(pool, "_processes", {}).values())]
                entry = self._pending[id(pool)] = (pool, [])
                threading.Thread(
                    target=self._sweep,
                    args=(id(pool), pids),
                    daemon=True,
                    name="unidist-api-local-sweep",
                ).start()
            entry[1].append(path)

    def _sweep(self, key: int, pids: list[int]) -> None:
        deadline = time.monotonic() + self.LIMIT
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._lock:
            _, paths = self._pending.pop(key, (None, []))
        self._remove(paths)


# -- stopping at interpreter exit ----------------------------------------------------------
_running: weakref.WeakSet[LocalBackend] = weakref.WeakSet()
finishing: list[Any] = []  # worker processes of pools shut down with wait=False
_exit_hook = False


def stop_at_exit(backend: LocalBackend) -> None:
    """At interpreter exit, cancel queued tasks and stop the workers at once.

    Executors still open have been shut down with ``wait=True`` by then (unless the
    program was interrupted: unidist_api/exit.py). loky's own exit hook waits for every
    queued task to finish; ours is registered after it with the same mechanism, so it
    runs first (threading's exit hooks run in reverse order).
    """
    global _exit_hook
    _running.add(backend)
    if not _exit_hook:
        _exit_hook = True
        on_exit(finish=_finish_pools, stop=_stop_all)
    else:
        arm()  # before the hook of the pool loky has just started


def forget(backend: LocalBackend) -> None:
    """``backend`` was shut down: nothing to stop at exit."""
    _running.discard(backend)


def _finish_pools(interrupted: bool) -> None:
    """Pools shut down with ``wait=False`` finish their queued tasks first, as the stdlib's."""
    if not interrupted:
        for process in finishing:
            process.join()


def _stop_all() -> None:
    for backend in list(_running):
        backend._close(wait=True, cancel=True, kill=True)
    for process in finishing:
        if process.is_alive():
            process.terminate()
    for process in finishing:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
