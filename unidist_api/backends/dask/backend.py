# mypy: disallow-untyped-calls=False
"""``DaskBackend``: submit, put, cancel, fetch and shutdown on a Dask cluster.

- **A task** is one ``client.submit(run, ...)`` (:func:`~.worker.run`) with ``pure=False``
  (never deduplicated) and a readable unique key (``<function>-<32 hex digits>``: a random
  prefix per executor and a counter, cheaper than a uuid per task). Input futures of this
  executor go in as Dask futures, so their values move worker to worker; futures of
  other executors go in as their packed values (:mod:`.data`).
- **Retries** (``retries``/``retry_on``) happen inside ``run_native``, per item of a batch,
  with fresh arguments, only for ``retry_on``: Dask's ``retries=`` would retry any
  exception and a whole batch, so it is not used. A worker that dies is Dask's business:
  the task is rescheduled until ``distributed.scheduler.allowed-failures`` + 1 workers
  died with it, then fails with ``WorkerLostError`` (:mod:`.errors`).
- **priority**: Dask's ``priority=`` (with ``fifo_timeout=0``: equal ones stay FIFO), and,
  once a task has one, the admission gate (:mod:`..admission`), since a Dask worker runs
  the tasks it took before a higher-priority one arrived.
- **fetch** (``fetches`` is set) asks for many values at once: ``gather`` waits for all its
  futures and brings over the values not read yet in one ``client.gather``, and
  ``result()`` on an unfinished future waits and loads in one call from the caller's
  thread, as Dask's own ``Future.result()`` does, instead of waiting for the completion
  and then asking; a future finished that way is completed by ``fetch``. A task that
  failed is left to the completion thread, and a gather that fails (a value that cannot
  be loaded here, a lost connection) leaves every value to ``result()``, which reads
  each alone: errors are the same either way. ``result()`` on a finished future nobody
  fetched is one round trip; ``shutdown`` first brings over, in one batch, the values of
  finished tasks not read yet, so futures work after it.
- **cancel** succeeds only while the scheduler has not handed the task to a worker (it may
  then queue there, as on ``local``): Dask cannot stop a running task, only discard its
  result. The scheduler itself picks and cancels the unstarted ones, in one step
  (:mod:`.cancel`), so a task reported cancelled never ran. Dask then also drops the
  tasks that take it as input; they fail with ``CancelledError``, as on ``local``.
- **initializer**: a ``WorkerPlugin`` (:class:`~.worker.Initializer`) registered when the
  client starts (first submit or put). When it raises on a worker, ``register_plugin``
  raises it here: the executor is broken (that submit's future fails with
  BrokenExecutorError, every later call raises it), the plugin is unregistered and the
  private cluster stopped. A worker that joins later (a replacement) and whose plugin
  fails is only logged by Dask, and runs tasks uninitialized. An embedded executor with
  an initializer gets its own cluster, since its state would otherwise leak into other
  executors' tasks; on a running cluster, every worker runs the initializers of all the
  executors connected to it.
- **dashboard** (option, default off): the embedded cluster's scheduler serves Dask's
  dashboard (bokeh, the ``dashboard`` extra) on 127.0.0.1 at a free port; its URL is
  logged and in ``describe()``. Without it, no dashboard URL is shown anywhere (Dask's
  would answer 404). A cluster we connect to has its own dashboard, or none: refused.
- **Logging**: one INFO line on the ``unidist_api`` logger when an executor starts,
  joins or connects to its cluster: the address, workers, their resources, the dashboard.
- **Shutdown** waits (``wait=True``), closes the client and stops the cluster we started
  once its last user is gone; ``wait=False`` does the same in the background. At
  interpreter exit, before ``atexit`` handlers run, tasks not finished are dropped and
  everything we started is stopped (Dask gives a worker busy with a task 4 s before it
  kills it, and says so on stderr). Embedded workers also exit when this process dies.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import importlib.metadata
import importlib.util
import itertools
import logging
import os
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dask.config
from dask.utils import funcname
from distributed import Client
from distributed import Future as DaskFuture

from ...data import Embedded, Packed
from ...errors import (
    BackendNotInstalledError,
    BrokenExecutorError,
    ExecutorShutdownError,
    InvalidOptionError,
)
from ...exit import on_exit
from ...futures import Future
from ...serialization import FunctionCache, dumps_value
from ...task import DEFAULT_OPTIONS, TaskOptions
from ...worker import InitializerFailed
from ..admission import Gate
from ..base import Backend, Task, bool_option, packed_value, positive_option, prepare_native
from .cancel import cancel_unfinished, cancel_unstarted, started
from .cluster import EmbeddedCluster, embedded_resources
from .complete import Completion
from .connect import DEFAULT_CONNECT_TIMEOUT, connect
from .data import FAILED, Result, for_graph, gather, pack_put
from .errors import scatter_error
from .resources import Offers, describe_resources, resource_request
from .timeouts import StuckTasks
from .worker import STUCK_TOPIC, Initializer, QuietTaskFailures, run

__all__ = ["DaskBackend", "check_bokeh"]

log = logging.getLogger(__name__)


class DaskBackend(Backend):
    name = "dask"
    honours_timeout = True
    takes_address = True
    fetches = True
    option_names = frozenset({"connect_timeout", "threads_per_worker", "dashboard"})

    def __init__(
        self,
        *,
        address: str | None,
        workers: int | None,
        initializer: Callable[..., Any] | None,
        initargs: tuple[Any, ...],
        options: Mapping[str, Any],
    ) -> None:
        super().__init__(
            address=address,
            workers=workers,
            initializer=initializer,
            initargs=initargs,
            options=options,
        )
        self.address = address or dask.config.get("scheduler-address", None)
        self._connect_timeout = positive_option(
            "dask", options, "connect_timeout", DEFAULT_CONNECT_TIMEOUT
        )
        self._threads = int(positive_option("dask", options, "threads_per_worker", 1, integer=True))
        self._dashboard = bool_option("dask", options, "dashboard", False)
        if self._dashboard:
            if self.address is not None:
                raise InvalidOptionError(
                    f"dashboard=True starts a dashboard for the embedded cluster, but this "
                    f"executor connects to the scheduler at {self.address!r}, which serves "
                    "its own dashboard (if it has bokeh); drop the option"
                )
            check_bokeh()
        self._started_at: str | None = None  # the embedded cluster's address, once started
        self._lock = threading.Lock()
        self._client: Client | None = None
        self._cluster: EmbeddedCluster | None = None  # the embedded cluster we use, if any
        self._plugin: str | None = None  # our initializer's plugin name
        self._closed = False
        self._threads_seen = 0  # worker threads of a running cluster, when last asked
        embedded = (
            embedded_resources(self._workers or os.cpu_count() or 1, self._threads)
            if self.address is None
            else None
        )
        self._offers = Offers(embedded, lambda: self._get_client().scheduler_info(n_workers=-1))
        self._functions = FunctionCache()
        self._key_prefix = uuid.uuid4().hex[:20]  # task keys: this, then a counter
        self._key_count = itertools.count()
        self._completion = Completion()
        self._stuck = StuckTasks(self._completion, lambda: self._client)
        #: Holds tasks beyond ``workers`` and starts them by priority, once a task has one.
        self._gate = Gate(lambda: self.workers, self._in_engine)

    @property
    def workers(self) -> int:
        if self.address is None:
            return (self._workers or os.cpu_count() or 1) * self._threads
        if self._workers:
            return self._workers
        if not self._closed:
            self._threads_seen = sum(self._get_client().nthreads().values())
        return max(1, self._threads_seen)

    def engine_address(self) -> str | None:
        return self.address if self.address is not None else self._started_at

    # -- Backend interface -----------------------------------------------------------------
    def check_options(self, options: TaskOptions) -> None:
        if options is DEFAULT_OPTIONS:
            return
        request = resource_request(options)
        if request:
            self._offers.check(request)

    def submit(self, task: Task) -> Future[Any]:
        fn_data, payload, inputs = prepare_native(task, self._functions)
        if isinstance(payload, Packed):  # Dask pickles arguments later, on its event loop:
            payload = payload.detached()  # a snapshot now, as every other argument is
        wire = for_graph(payload)
        future: Future[Any] = Future(self)
        try:
            client = self._get_client()
        except BrokenExecutorError as broken:  # the initializer failed on starting
            future.set_exception(broken)
            return future
        priority = task.options.priority
        if self._gate.engaged or priority:  # admitted by priority (backends/admission.py)
            self._gate.admit_when_ready(
                future,
                inputs,
                priority,
                functools.partial(self._send, client, future, task, fn_data, wire, inputs),
            )
        else:
            self._send(client, future, task, fn_data, wire, inputs)
        return future

    def _send(
        self,
        client: Client,
        future: Future[Any],
        task: Task,
        fn_data: bytes,
        wire: Any,
        inputs: list[Future[Any]],
    ) -> None:
        """Hand the task to Dask (``fifo_timeout=0``: equal priorities keep submission order,
        on the scheduler's queue and on a worker's, which would otherwise run the tasks of
        one 100 ms window newest first)."""
        if future.done():  # cancelled while it waited for its turn
            return
        options = task.options
        key = f"{funcname(task.fn)}-{self._key_prefix}{next(self._key_count):012x}"
        self._stuck.note(future, options.timeout, inputs)
        completion = self._completion
        with completion.lock:  # before Dask can report it done
            completion.unfinished[key] = future
        try:
            handle = client.submit(
                run,
                fn_data,
                wire,
                task.mode,
                options.retries,
                _retry_on(options),
                options.timeout,
                *[self._input(dep) for dep in inputs],
                key=key,
                pure=False,
                resources=None if options is DEFAULT_OPTIONS else resource_request(options),
                priority=options.priority,
                fifo_timeout=0,
            )
        except BaseException:
            with completion.lock:
                completion.unfinished.pop(key, None)
            raise
        future.handle = handle
        completion.submitted(future, handle)

    def put(self, obj: Any) -> Future[Any]:
        data = pack_put(obj)
        key = f"put-{uuid.uuid4().hex}"
        client = self._get_client()
        try:
            handle = client.scatter({key: data}, hash=False)[key]
        except Exception as exc:
            error = scatter_error(exc)
            if error is exc:
                raise
            raise error from exc
        future: Future[Any] = Future(self, handle=handle)
        result = Result(handle, put=True)
        with self._completion.lock:
            self._completion.unread[key] = result
        future.set_serialized_result(result, Result.read)
        return future

    def cancel(self, future: Future[Any]) -> bool:
        handle: DaskFuture[Any] | None = future.handle
        if handle is None:  # waiting for its turn in the gate (or failed to start)
            self._gate.withdraw(future)
            return True
        if handle.status == "cancelled":
            return True
        if handle.status != "pending":
            return False
        with self._completion.lock:
            if handle.key in self._completion.cancelled:  # by shutdown, a moment ago
                return True
        return bool(cancel_unstarted(self._client, self._completion, [handle]))

    def running(self, future: Future[Any]) -> bool:
        handle: DaskFuture[Any] | None = future.handle
        return (
            handle is not None
            and handle.status == "pending"
            and bool(started(self._client, [handle]))
        )

    def fetch(self, futures: Sequence[Future[Any]], timeout: float | None) -> None:
        """Wait for ``futures``; bring over the values not read yet in one ``client.gather``.

        With a ``timeout`` (Dask's gather has none), only those finished by then are
        loaded. A future Dask finished before its callback ran is completed here.
        """
        if timeout is not None:
            cf.wait(futures, timeout)
        wanted: list[tuple[Future[Any], Result | None]] = []
        completion = self._completion
        with completion.lock:
            for future in futures:
                handle = future.handle
                if handle is None:
                    continue
                if not future.done():
                    if timeout is None:
                        wanted.append((future, None))
                    continue
                result = completion.unread.get(handle.key)
                if result is not None and result.unread:
                    wanted.append((future, result))
        waiting = [future for future, result in wanted if result is None]  # not done yet
        client = self._client
        values = None
        if wanted and client is not None:
            values = gather(client, [future.handle for future, _ in wanted])
        if values is not None:
            waiting = []
            for (future, result), value in zip(wanted, values, strict=True):
                if value is FAILED:
                    if result is None:
                        waiting.append(future)
                    continue
                if result is None:
                    completion.fetched(future, value)
                else:
                    result.keep(value)
                    future.set_loaded(value)
        if waiting:  # their callbacks bring the failure (or shutdown does)
            cf.wait(waiting)

    def describe(self) -> dict[str, Any]:
        client = self._get_client()
        info = client.scheduler_info(n_workers=-1)
        workers = info["workers"].values()
        threads = sum(worker["nthreads"] for worker in workers)
        resources = sorted({describe_resources(worker["resources"]) for worker in workers})
        where = self.address or f"embedded LocalCluster at {info['address']}"
        facts = {
            "address": where,
            "workers": self.workers,
            "worker processes": f"{len(workers)} ({threads} threads)",
            "worker resources": "; ".join(resources) or "none declared",
        }
        cluster = self._cluster
        if self.address is None:
            facts["dashboard"] = (
                cluster.dashboard
                if cluster and cluster.dashboard
                else "off (turn it on with dashboard=True)"
            )
        return facts

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
        if cancel_futures:
            for future in self._gate.held():  # first: none is sent while the rest are cancelled
                future.cancel()
            cancel_unfinished(self._client, self._completion)
        if wait:
            cf.wait(self._gate.held())  # they get their turn as the tasks before them finish
            self._drain_and_close()
        else:
            self._gate.flush()
            threading.Thread(
                target=self._drain_and_close, daemon=True, name="unidist-api-dask-shutdown"
            ).start()

    # -- starting ----------------------------------------------------------------------------
    def _get_client(self) -> Client:
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self.broken is not None:
                raise self.broken_error()
            if self._closed:
                raise ExecutorShutdownError("this 'dask' executor has been shut down")
            if self._client is not None:
                return self._client
            try:
                client = self._client = self._start()
            except InitializerFailed as failed:
                error = self.break_executor(failed)  # under the lock: no second start
            else:
                _track(self)
                return client
        raise error  # outside the handler: its cause is the initializer's exception alone

    def _start(self) -> Client:
        """Connect to ``address`` or start (or join) an embedded cluster; install the plugins."""
        client = None
        try:
            if self.address is not None:
                client = connect(self.address, self._connect_timeout)
                _log_connected(client, self.address)
            else:
                self._cluster = cluster = EmbeddedCluster.acquire(
                    self._workers or os.cpu_count() or 1,
                    self._threads,
                    private=self.init_data is not None,
                    dashboard=self._dashboard,
                )
                self._started_at = cluster.address
                client = Client(cluster.cluster, set_as_default=False)
                client.register_plugin(QuietTaskFailures())
                _log_embedded(cluster)
            if self.init_data is not None:
                name = f"unidist-api-initializer-{uuid.uuid4().hex}"
                try:
                    client.register_plugin(Initializer(self.init_data), name=name)
                except InitializerFailed:
                    if self.address is not None:  # later workers of that cluster: not them
                        _unregister(client, name)
                    raise
                self._plugin = name
            self._completion.watch(client)
            client.subscribe_topic(STUCK_TOPIC, self._stuck.on_stuck)
        except BaseException:
            self._release(client, self._cluster)
            self._cluster = None
            raise
        return client

    # -- tasks ------------------------------------------------------------------------------
    def _in_engine(self) -> list[Future[Any]]:
        """The unfinished futures whose tasks Dask has (for the gate)."""
        with self._completion.lock:
            return list(self._completion.unfinished.values())

    def _input(self, dep: Future[Any]) -> Any:
        """What a task receives for an input future: our Dask future, or another's value."""
        return dep.handle if dep._backend is self else packed_value(dep)

    # -- stopping ---------------------------------------------------------------------------
    def _drain_and_close(self) -> None:
        with self._completion.lock:
            unfinished = list(self._completion.unfinished.values())
        cf.wait(unfinished)
        self._stuck.join()  # let a worker's replacement be asked for first
        self._fetch_unread()
        self._close()

    def _fetch_unread(self) -> None:
        """Bring values nobody has read yet to this process, before the cluster goes away."""
        with self._completion.lock:
            unread = [
                result
                for result in self._completion.unread.values()
                if result.unread and not result.put
            ]
        client = self._client
        if client is None or not unread:
            return
        values = gather(client, [result.handle for result in unread])
        if values is None:  # one of them cannot be brought over: find out which, one at a time
            values = [FAILED] * len(unread)
        for result, value in zip(unread, values, strict=True):
            if value is FAILED:
                result.fetch()
            else:
                result.keep(value)

    def _close(self) -> None:
        """Stop what we started, without waiting; tasks not finished fail."""
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
            cluster, self._cluster = self._cluster, None
        _untrack(self)
        for future in self._completion.close():
            try:
                future.set_exception(
                    ExecutorShutdownError(
                        "the executor was shut down (or the program ended) before this task "
                        "finished"
                    )
                )
            except cf.InvalidStateError:
                pass
        if client is not None and cluster is None and self._plugin is not None:
            _unregister(client, self._plugin)  # later workers of a cluster we only joined
        self._release(client, cluster)
        self._functions.clear()

    @staticmethod
    def _release(client: Client | None, cluster: EmbeddedCluster | None) -> None:
        try:
            if client is not None:
                client.close()
        finally:
            if cluster is not None:
                cluster.release()


def check_bokeh() -> None:
    """Raise BackendNotInstalledError unless a bokeh Dask's dashboard can use is installed."""
    from distributed.versions import BOKEH_REQUIREMENT  # bokeh>=3.1.0 (without importing it)

    found = None
    if importlib.util.find_spec("bokeh") is not None:
        try:
            found = importlib.metadata.version("bokeh")
        except importlib.metadata.PackageNotFoundError:
            found = None
    if found is None or not BOKEH_REQUIREMENT.specifier.contains(found, prereleases=True):
        have = "bokeh is not installed" if found is None else f"bokeh {found} is installed"
        raise BackendNotInstalledError(
            f"dashboard=True needs {BOKEH_REQUIREMENT} for Dask's dashboard, but {have}: "
            'pip install "unidist-api[dashboard]" (or pip install "bokeh>=3.1")'
        )


def _log_embedded(cluster: EmbeddedCluster) -> None:
    """The INFO line of an executor that started or joined an embedded cluster."""
    resources = describe_resources(cluster.resources)
    log.info(
        "dask: %s an embedded LocalCluster, scheduler at %s: %d worker processes "
        "on 127.0.0.1 with %d thread(s) each, each worker offers %s; %s",
        "started" if cluster.users == 1 else "joined",
        cluster.address,
        cluster.workers,
        cluster.threads,
        resources,
        f"dashboard at {cluster.dashboard}" if cluster.dashboard else "no dashboard",
    )


def _log_connected(client: Client, address: str) -> None:
    """The INFO line of an executor that connected to a running scheduler."""
    if not log.isEnabledFor(logging.INFO):
        return  # it costs a round trip
    try:
        workers = list(client.scheduler_info(n_workers=-1)["workers"].values())
    except Exception:  # the line is for information: never fail the start over it
        log.info("dask: connected to the scheduler at %s", address)
        return
    threads = sum(worker.get("nthreads", 0) for worker in workers)
    memory = sum(worker.get("memory_limit") or 0 for worker in workers)
    resources = sorted({describe_resources(worker.get("resources") or {}) for worker in workers})
    log.info(
        "dask: connected to the scheduler at %s: %d workers, %d threads, memory limit "
        "%.1f GiB in all, worker resources %s",
        address,
        len(workers),
        threads,
        memory / 2**30,
        "; ".join(resources) or "none declared",
    )


def _unregister(client: Client, plugin: str) -> None:
    """Have workers that join the cluster later not run our initializer."""
    try:
        client.unregister_worker_plugin(plugin)
    except Exception:
        pass


def _retry_on(options: TaskOptions) -> Any:
    """``retry_on`` for the task: builtins as they are, others by value like the arguments."""
    retry_on = options.retry_on
    if all(kind.__module__ == "builtins" for kind in retry_on):
        return retry_on
    return Embedded(dumps_value(retry_on, "the retry_on option"))


# -- nothing we started outlives the interpreter ---------------------------------------------------
_open: set[DaskBackend] = set()
_open_lock = threading.Lock()
_exit_hook = False


def _track(backend: DaskBackend) -> None:
    """Stop ``backend`` at interpreter exit unless it is closed before.

    The hook runs with threading's exit hooks, before ``atexit`` handlers (which would
    wait for running tasks) and before Dask's callback thread is stopped.
    """
    global _exit_hook
    with _open_lock:
        _open.add(backend)
        if not _exit_hook:
            _exit_hook = True
            on_exit(stop=_close_all)


def _untrack(backend: DaskBackend) -> None:
    with _open_lock:
        _open.discard(backend)


def _close_all() -> None:
    with _open_lock:
        backends = list(_open)
    for backend in backends:
        try:
            backend._close()
        except Exception:  # stop the others all the same
            logging.getLogger(__name__).warning("stopping a dask executor failed", exc_info=True)
