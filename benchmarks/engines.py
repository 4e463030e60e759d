"""The shared engines: each started once per run, warmed up, used by ours and raw alike.

- local: our ``ua.Executor("local", workers=2)`` and, as the raw reference, loky's
  reusable executor (``loky.get_reusable_executor(max_workers=2)``).
- dask: one ``LocalCluster`` (2 worker processes of 1 thread, on 127.0.0.1); the raw
  reference is ``Client(cluster)`` (the default client), ours is
  ``ua.Executor("dask", address=<its scheduler>, workers=2)``.
- ray: one ``ray.init(address="local", num_cpus=2)`` in this process; ours
  (``ua.Executor("ray", workers=2)``) uses that Ray and never stops it.
- serial: ours only, as a reference point.

An engine that cannot start is reported and left out; the others go on. If the engine
starts but ours on it does not, the raw contenders still run, and ours is a stand-in
whose every call raises that error, so its rows say why they are missing.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Callable
from typing import Any

import unidist_api as ua

from .measure import TIMEOUT, bounded, log
from .tasks import burn, inc

__all__ = ["Engines", "WORKERS"]

WORKERS = 2
STOP_TIMEOUT = 60.0


class Engines:
    """Start with :meth:`start`, stop everything with :meth:`close` (also on errors)."""

    def __init__(self, backends: list[str]) -> None:
        self.wanted = backends
        self.ours: dict[str, ua.Executor] = {}
        self.errors: dict[str, str] = {}
        self.loky: Any = None  # the raw loky executor
        self.cluster: Any = None  # the Dask LocalCluster
        self.client: Any = None  # the raw Dask client
        self.ray: Any = None  # the ray module, once ray.init() succeeded
        self.ray_inc: Any = None  # ray.remote(inc)
        self.ray_burn: Any = None

    def has(self, backend: str) -> bool:
        """Whether the engine runs (ours on it may still have failed: see ``ours``)."""
        return backend in self.ours

    def start(self) -> None:
        for backend in self.wanted:
            log(f"starting {backend}")
            try:
                getattr(self, f"_start_{backend}")()
                bounded(functools.partial(self._warm_raw, backend), TIMEOUT)
            except Exception as exc:
                self.errors[backend] = f"{type(exc).__name__}: {exc}"
                log(f"{backend} could not start, skipped: {self.errors[backend]}")
                continue
            ex: ua.Executor | None = None
            try:
                ex = ua.Executor(backend, **self._ours_options(backend))
                bounded(functools.partial(_warm, ex), TIMEOUT)
                self.ours[backend] = ex
            except Exception as exc:
                error = f"ours on {backend} did not start: {type(exc).__name__}: {exc}"
                self.errors[f"ours {backend}"] = error
                log(error)
                if ex is not None:
                    try:
                        bounded(functools.partial(ex.shutdown, wait=False), STOP_TIMEOUT)
                    except Exception:
                        pass
                self.ours[backend] = _Broken(error)  # type: ignore[assignment]

    def _ours_options(self, backend: str) -> dict[str, Any]:
        if backend == "serial":
            return {}
        if backend == "dask":
            return {"address": self.cluster.scheduler_address, "workers": WORKERS}
        return {"workers": WORKERS}

    def _start_serial(self) -> None:
        pass

    def _start_local(self) -> None:
        import loky

        self.loky = loky.get_reusable_executor(max_workers=WORKERS)

    def _start_dask(self) -> None:
        from distributed import Client, LocalCluster

        # the scheduler's HTTP server moves off a busy 8787 by itself; no need to warn
        warnings.filterwarnings("ignore", message="Port 8787 is already in use")
        self.cluster = LocalCluster(
            n_workers=WORKERS,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
        self.client = Client(self.cluster)

    def _start_ray(self) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray

        ray.init(
            address="local", num_cpus=WORKERS, include_dashboard=False, logging_level=logging.ERROR
        )
        self.ray = ray
        self.ray_inc = ray.remote(inc)
        self.ray_burn = ray.remote(burn)

    def _warm_raw(self, backend: str) -> None:
        """Every worker process started and every code path run once."""
        if backend == "local":
            [f.result() for f in [self.loky.submit(inc, i) for i in range(20)]]
        elif backend == "dask":
            self.client.gather([self.client.submit(inc, i, pure=False) for i in range(20)])
        elif backend == "ray":
            self.ray.get([self.ray_inc.remote(i) for i in range(20)])

    def close(self) -> None:
        """Stop what we started: our executors, then the engines.

        Each step gets at most ``STOP_TIMEOUT`` seconds (an executor whose engine lost its
        workers would wait for its tasks forever), and one failing does not skip the rest.
        """
        steps: list[tuple[str, Callable[[], Any]]] = [
            (f"ours on {backend}", functools.partial(ex.shutdown, wait=True))
            for backend, ex in self.ours.items()
            if not isinstance(ex, _Broken)
        ]
        if self.loky is not None:
            steps.append(
                ("loky", functools.partial(self.loky.shutdown, wait=True, kill_workers=True))
            )
        if self.client is not None:
            steps.append(("the dask client", self.client.close))
        if self.cluster is not None:
            steps.append(("the dask cluster", self.cluster.close))
        if self.ray is not None:
            steps.append(("ray", self.ray.shutdown))
        for name, stop in steps:
            try:
                bounded(stop, STOP_TIMEOUT)
            except BaseException as exc:  # noqa: B036 (stop the others all the same)
                log(f"stopping {name} failed: {type(exc).__name__}: {exc}")
        self.ours.clear()
        self.loky = self.client = self.cluster = self.ray = None


def _warm(ex: ua.Executor) -> None:
    ex.gather([ex.submit(inc, i) for i in range(20)])
    list(ex.map(inc, range(20_000)))


class _Broken:
    """Stands for ours on an engine where ours did not start: every call raises why."""

    workers = WORKERS

    def __init__(self, error: str) -> None:
        self.error = error

    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(self.error)

        return fail
