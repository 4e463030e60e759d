# mypy: disallow-untyped-calls=False
"""The embedded Dask cluster: a local cluster on 127.0.0.1 that we start, share and stop.

It is what Dask's ``LocalCluster`` builds (a ``SpecCluster`` of nannies, each starting
one worker process), except that its scheduler runs in a process of its own
(:mod:`.scheduler` says why).

Executors without an initializer share an embedded cluster of the same shape (workers,
threads, dashboard), counted by users: starting one costs seconds; the last to let go stops it. An
executor with an initializer gets its own, since its state would otherwise leak into
other executors' tasks. It sets ``distributed.scheduler.allowed-failures`` to
``LOST_WORKER_RETRIES`` (3, as on every backend).

``__main__``: Dask spawns worker processes, and a spawned process re-runs the parent's main
script (its top-level prints and, without an ``if __name__ == "__main__":`` guard, its
whole program). Tasks never need it (functions from ``__main__`` travel by value), so
embedded workers are started without it, as ``local``'s are.

It keeps its workers. When a worker process dies its nanny starts a new one, but Dask's
``SpecCluster`` closes a nanny for good when, ``distributed.deploy.lost-worker-timeout``
(15 s) after a loss, no worker of its name is registered, which happens when a worker
dies again while it restarts: under repeated worker deaths (a task that keeps crashing,
or killing them) the cluster ended with no worker at all, and every task waited forever.
So a thread checks every ``HEAL_EVERY`` seconds that the cluster still has all its
nannies and, if not, has ``LocalCluster.scale`` start the missing ones.
"""

from __future__ import annotations

import logging
import multiprocessing.spawn
import threading
from typing import Any, ClassVar

from distributed import Nanny, SpecCluster
from distributed.system import MEMORY_LIMIT

from ..base import LOST_WORKER_RETRIES
from .scheduler import SchedulerProcess

__all__ = ["EmbeddedCluster", "embedded_resources", "HEAL_EVERY"]

HEAL_EVERY = 1.0  # seconds between checks that the embedded cluster has all its workers


class EmbeddedCluster:
    """An embedded ``LocalCluster``, how many executors use it, and its healer thread."""

    _shared: ClassVar[dict[tuple[int, int, bool], EmbeddedCluster]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self, workers: int, threads: int, dashboard: bool, key: tuple[int, int, bool] | None
    ) -> None:
        self.resources = embedded_resources(workers, threads)
        self.key = key
        self.users = 0
        self.workers = workers
        self.threads = threads
        _keep_main_out_of_workers()
        worker = {
            "cls": Nanny,
            "options": {
                "nthreads": threads,
                "host": "127.0.0.1",
                "dashboard": False,
                "dashboard_address": None,
                "memory_limit": int(self.resources["MEMORY"]),
                "resources": self.resources,
                "silence_logs": logging.WARNING,
            },
        }
        self.cluster = SpecCluster(  # what LocalCluster builds, the scheduler outside
            scheduler={
                "cls": SchedulerProcess,
                "options": {"allowed_failures": LOST_WORKER_RETRIES, "dashboard": dashboard},
            },
            workers={i: worker for i in range(workers)},
            worker=worker,
            silence_logs=logging.WARNING,
        )
        #: the scheduler's ``tcp://127.0.0.1:port``
        self.address: str = self.cluster.scheduler_address
        #: the dashboard's URL (``http://127.0.0.1:port/status``), None without one
        self.dashboard: str | None = (self.cluster.dashboard_link or None) if dashboard else None
        self.healed = 0  # nannies started again after Dask closed them
        self._stop = threading.Event()
        threading.Thread(target=self._heal, daemon=True, name="unidist-api-dask-heal").start()

    @classmethod
    def acquire(
        cls, workers: int, threads: int, *, private: bool, dashboard: bool = False
    ) -> EmbeddedCluster:
        """A cluster of this shape: a new one if ``private``, else the shared one.

        ``users`` is 1 afterwards when this call started it.
        """
        with cls._lock:
            key = None if private else (workers, threads, dashboard)
            cluster = cls._shared.get(key) if key is not None else None
            if cluster is None:
                cluster = cls(workers, threads, dashboard, key)
                if key is not None:
                    cls._shared[key] = cluster
            cluster.users += 1
            return cluster

    def release(self) -> None:
        """One user fewer; the last one stops the cluster."""
        with self._lock:
            self.users -= 1
            if self.users:
                return
            if self.key is not None and self._shared.get(self.key) is self:
                del self._shared[self.key]
        self._stop.set()
        self.cluster.close()

    def _heal(self) -> None:
        """Start the nannies Dask closed (see the module doc) until the cluster stops."""
        while not self._stop.wait(HEAL_EVERY):
            missing = self.workers - len(self.cluster.workers)
            if missing <= 0:
                continue
            try:
                self.cluster.scale(self.workers)  # starts a nanny for each missing one
                self.healed += missing
            except Exception:  # stopping meanwhile: the next round (or none) tells
                logging.getLogger(__name__).debug("scaling the cluster failed", exc_info=True)


def embedded_resources(workers: int, threads: int) -> dict[str, float]:
    """What each embedded worker declares: its threads, and Dask's default memory share."""
    return {"CPU": float(threads), "MEMORY": float(MEMORY_LIMIT // workers)}


_WORKER_PROCESS = "Dask Worker process"  # how Dask's Nanny names the processes it spawns


def _keep_main_out_of_workers() -> None:
    """Spawn Dask's worker processes without re-running this program's ``__main__``."""
    spawn: Any = multiprocessing.spawn
    if getattr(spawn.get_preparation_data, "keeps_main_out", False):
        return
    original = spawn.get_preparation_data

    def get_preparation_data(name: str) -> dict[str, Any]:
        data: dict[str, Any] = original(name)
        if name.startswith(_WORKER_PROCESS):
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
        return data

    get_preparation_data.keeps_main_out = True  # type: ignore[attr-defined]
    spawn.get_preparation_data = get_preparation_data
