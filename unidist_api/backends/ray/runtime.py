"""The process's one Ray: started or connected on first need, shared and counted.

Ray allows one ``ray.init`` per process, yet several executors may exist at once, so
every ``RayBackend`` shares one :class:`Runtime`, counted: the last executor to shut
down stops what we started. Two executors asking for different clusters at once are
refused. ``workers`` sizes the private Ray only for the executor that starts it; one
that joins it later keeps its own ``workers`` for sizing map and pipeline buffers, but
its tasks share that Ray's CPUs. If the program already called ``ray.init()`` itself,
that connection is used and left alone.

Before we stop a Ray we started, the results the program still holds are fetched, so
``result()`` works after ``shutdown()``; after that we make no Ray call, which would
start (or join) another Ray by itself. How the Ray is started or joined is in
:mod:`.connect`.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures as cf
import contextlib
import logging
import math
import threading
import time
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import ray

from ...errors import ExecutorShutdownError, InvalidOptionError
from ...exit import arm, exit_on_sigterm_at_once
from ...futures import Future
from .cancel import Claims
from .complete import Completer, RayFuture
from .connect import connect, start_local
from .worker import _run_task

if TYPE_CHECKING:
    from .backend import RayBackend

__all__ = ["Runtime", "acquire", "release", "describe_resources", "NODES_MAX_AGE"]

NODES_MAX_AGE = 60.0  # seconds the cluster's node resources are cached

log = logging.getLogger(__name__)


class Runtime:
    """Our use of the process's Ray, shared by every RayBackend and counted.

    ``target`` is the address connected to (None: the private local Ray); ``ours``
    says we called ``ray.init`` and so call ``ray.shutdown``. ``address`` is where it
    runs (the private Ray's GCS ``127.0.0.1:port``, else ``target`` or the program's own
    Ray's GCS address), ``dashboard`` the private Ray's dashboard URL, if it has one. All
    its state is guarded by the module's ``_lock``.
    """

    def __init__(
        self,
        target: str | None,
        ours: bool,
        address: str | None = None,
        dashboard: str | None = None,
    ) -> None:
        self.target = target
        self.ours = ours
        self.address = address or target
        self.dashboard = dashboard
        self.users = 0
        self.closed = False
        self.closing = False  # no users left; close when the last pending task finishes
        self.pending: set[Future[Any]] = set()
        self.unread: weakref.WeakSet[Future[Any]] = weakref.WeakSet()  # values still in Ray
        #: Futures not watched yet, oldest first: ``(submitted at, weak reference)``.
        self.unwatched: collections.deque[tuple[float, weakref.ref[RayFuture[Any]]]] = (
            collections.deque()
        )
        self.watch_lock = threading.Lock()  # orders watching against closing
        self.remote = ray.remote(_run_task)
        # a private Ray runs on this machine alone: claims need no key-value store there
        self.claims = Claims(in_store=target is not None or not ours)
        self._nodes: list[dict[str, float]] = []
        self._nodes_at = -math.inf
        self.completer = Completer(self)

    @property
    def where(self) -> str:
        if not self.ours:
            return "the Ray this program started with ray.init()"
        return self.target or f"a private local Ray at {self.address or '127.0.0.1'}"

    def track(self, future: RayFuture[Any]) -> None:
        """A submitted task: pending until done, watched once something waits for it."""
        with _lock:
            self.pending.add(future)
        self.unwatched.append((time.monotonic(), weakref.ref(future)))

    def watch(self, future: RayFuture[Any]) -> None:
        """Have ``future`` completed as soon as its task finishes."""
        with self.watch_lock:
            if not self.closed:  # else Ray may be stopped: no more Ray calls
                self.completer.watch(future)

    def untrack(self, future: Future[Any]) -> bool:
        """``future``'s task is over; True when that leaves a closing runtime idle.

        The caller then calls :meth:`close`, once it has completed the future.
        """
        with _lock:
            self.pending.discard(future)
            return self.closing and not self.pending

    def close(self) -> None:
        """Stop using Ray now (the last pending task of a closing runtime finished)."""
        _close(self)

    def unfinished(self, backend: RayBackend) -> list[Future[Any]]:
        with _lock:
            return [future for future in self.pending if future._backend is backend]

    # -- the cluster's resources ----------------------------------------------------
    def nodes(self, max_age: float = NODES_MAX_AGE) -> list[dict[str, float]]:
        """The resources of each live node, cached for ``max_age`` seconds."""
        now = time.monotonic()
        if now - self._nodes_at > max_age:
            nodes = ray.nodes()  # type: ignore[no-untyped-call]
            self._nodes = [dict(node["Resources"]) for node in nodes if node["Alive"]]
            self._nodes_at = now
        return self._nodes

    def total(self, name: str) -> float:
        return sum(node.get(name, 0.0) for node in self.nodes())

    def fits(self, needs: dict[str, float]) -> bool:
        """Whether some live node has all of ``needs`` (refreshed once before saying no)."""
        for max_age in (NODES_MAX_AGE, 1.0):
            if any(
                all(node.get(name, 0.0) >= amount for name, amount in needs.items())
                for node in self.nodes(max_age)
            ):
                return True
        return False

    def largest_offer(self, needs: dict[str, float]) -> str:
        best = {
            name: max((node.get(name, 0.0) for node in self.nodes()), default=0.0)
            for name in ("CPU", "GPU", "memory", *needs)
        }
        return "the most any node has is " + describe_resources(best)


def describe_resources(amounts: Mapping[str, float]) -> str:
    """``CPU=2, memory=1.5 GiB, ...`` for messages and ``unidist-api info``."""
    parts = []
    for name, amount in amounts.items():
        if name in ("memory", "object_store_memory"):
            parts.append(f"{name}={amount / 2**30:.1f} GiB")
        else:
            parts.append(f"{name}={amount:g}")
    return ", ".join(parts)


_lock = threading.RLock()
_current: Runtime | None = None
_exit_hook_registered = False


def acquire(
    target: str | None, workers: int | None, timeout: float, dashboard: bool = False
) -> Runtime:
    """The process's runtime for ``target``, started or connected on first need.

    ``dashboard``: the private Ray we start serves Ray's dashboard (on 127.0.0.1).
    Logs at INFO what was started or joined.
    """
    global _current
    with _lock:
        runtime = _current
        if runtime is None or runtime.closed:
            if dashboard and ray.is_initialized():
                raise InvalidOptionError(
                    "dashboard=True starts a dashboard with the private Ray we start, but "
                    "this program already started Ray with ray.init(), which we use as it "
                    "is: pass include_dashboard=True to ray.init instead"
                )
            runtime = _current = _open(target, workers, timeout, dashboard)
            how = "started" if runtime.ours and target is None else "connected to"
        elif runtime.ours and runtime.target != target:
            want = target or "a private local Ray"
            raise InvalidOptionError(
                f"this process already uses {runtime.where} through another 'ray' executor, "
                f"and Ray allows one connection per process, so it cannot also use {want}; "
                "shut the other ray executors down first, or give them the same address"
            )
        elif dashboard and runtime.dashboard is None:
            raise InvalidOptionError(
                f"dashboard=True, but this process already uses {runtime.where} without a "
                "dashboard through another 'ray' executor, and Ray allows one per process: "
                "shut the other ray executors down first, or give them dashboard=True too"
            )
        else:
            how = "joined"
        if not runtime.ours:
            how = "uses"
        runtime.users += 1
        runtime.closing = False
    _log_start(runtime, how)
    return runtime


def _log_start(runtime: Runtime, how: str) -> None:
    """The INFO line of an executor that started, connected to or joined ``runtime``."""
    if not log.isEnabledFor(logging.INFO):
        return
    try:
        nodes = runtime.nodes()
    except Exception:  # the line is for information: never fail the start over it
        nodes = []
    totals = {
        name: sum(node.get(name, 0.0) for node in nodes)
        for name in ("CPU", "GPU", "memory", "object_store_memory")
    }
    if not totals["GPU"]:
        del totals["GPU"]
    what = runtime.where
    if runtime.ours and runtime.target is None:
        what = f"a private local Ray, GCS at {runtime.address}, every process on 127.0.0.1"
    elif runtime.address and runtime.address != runtime.target:
        what += f" (GCS at {runtime.address})"
    log.info(
        "ray: %s %s: %d node(s), %s; %s",
        how,
        what,
        len(nodes),
        describe_resources(totals),
        f"dashboard at {runtime.dashboard}"
        if runtime.dashboard
        else "no dashboard"
        if runtime.ours and runtime.target is None
        else "no dashboard known",
    )


def release(runtime: Runtime) -> None:
    """One executor less; the last one stops the runtime once its tasks are done."""
    with _lock:
        if runtime.closed:
            return
        runtime.users -= 1
        if runtime.users > 0:
            return
        if runtime.pending:  # shutdown(wait=False): its tasks still run, then Ray stops
            runtime.closing = True
            runtime.completer.wake()  # which watches them all
            return
    _close(runtime)


def _close(runtime: Runtime, *, exiting: bool = False) -> None:
    """Stop using Ray: fail unfinished futures, and stop Ray if we started it."""
    with _lock:
        if runtime.closed or (runtime.users and not exiting):
            return
        with runtime.watch_lock:
            runtime.closed = True
        dropped = list(runtime.pending)
        runtime.pending.clear()
        runtime.unwatched.clear()
        runtime.completer.stop()
        if not exiting:  # results the program still holds stay readable
            for future in list(runtime.unread):
                future.exception()
        runtime.claims.close()
        if runtime.ours:
            ray.shutdown(wait_for_processes=True)
    for future in dropped:
        if not future.done():
            error = ExecutorShutdownError("the executor was shut down before this task finished")
            with contextlib.suppress(cf.InvalidStateError):
                future.set_exception(error)


def _at_exit() -> None:
    """Registered after ``import ray``, so it runs before Ray's own exit hook."""
    runtime = _current
    if runtime is not None:
        _close(runtime, exiting=True)


def _open(target: str | None, workers: int | None, timeout: float, dashboard: bool) -> Runtime:
    global _exit_hook_registered
    if ray.is_initialized():  # the program's own ray.init(): use it, never stop it
        runtime = Runtime(None, ours=False, address=_gcs_address(), dashboard=_dashboard_url())
    elif target is None:
        address, url = start_local(workers, dashboard)
        runtime = Runtime(None, ours=True, address=address, dashboard=url)
    else:
        connect(target, timeout)
        runtime = Runtime(target, ours=True, address=target, dashboard=_dashboard_url())
    if not _exit_hook_registered:
        _exit_hook_registered = True
        atexit.register(_at_exit)
    arm()  # executors finish their work before anything Ray started at exit is stopped
    exit_on_sigterm_at_once()  # ray.init's SIGTERM handler exits through our exit hook
    return runtime


def _dashboard_url() -> str | None:
    """The dashboard URL of the Ray this process is connected to (not ours), if Ray knows one."""
    try:
        node: Any = ray._private.worker._global_node
        url = node.webui_url
    except Exception:  # a Ray Client connection, another Ray version: not known
        return None
    if not url:
        return None
    return str(url) if "://" in url else f"http://{url}"


def _gcs_address() -> str | None:
    """The GCS address of the Ray this process is connected to, if Ray says."""
    try:
        return str(ray.get_runtime_context().gcs_address)
    except Exception:  # a Ray Client connection has none to tell
        return None
