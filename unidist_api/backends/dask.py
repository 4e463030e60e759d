# mypy: disallow-untyped-calls=False
# (much of Dask's API is not annotated)
"""``dask``: tasks run on Dask distributed, in an embedded ``LocalCluster`` or a running cluster.

Without an address, the first task (or ``put``) starts a ``LocalCluster`` of ``workers``
worker processes (default ``os.cpu_count()``), bound to 127.0.0.1, without dashboard. With
``address="tcp://host:8786"`` (or, when ours is unset, Dask's own ``scheduler-address``
setting, e.g. ``DASK_SCHEDULER_ADDRESS``) a client connects to that scheduler, which we never
stop; an unreachable one, or one where no Dask scheduler answers (Dask's own handshake
has no time limit), raises ``ClusterConnectionError`` within ``connect_timeout`` seconds.
There, ``workers`` (if set) only sizes the buffers of ``map`` and ``pipeline``; unset, it is
the cluster's thread count.

Backend options:

- ``connect_timeout`` (seconds, default 30): how long to keep trying to reach ``address``.
- ``threads_per_worker`` (default 1): threads of each embedded worker process, so
  ``workers * threads_per_worker`` tasks run at once. A running cluster has its own.

How the contract maps onto Dask:

- **A task** is one ``client.submit(_run, ...)`` with ``pure=False`` (never deduplicated) and
  a readable unique key (``<function>-<32 hex digits>``: a random prefix per executor and
  a counter, cheaper than a uuid per task). Input futures of this executor go in as
  Dask futures, so their values move worker to worker; futures of other executors go in as
  values. ``_run`` wraps :func:`~unidist_api.worker.run_native`, which gives each attempt
  its own copy of the arguments, and pickles the value on the worker, as ``local`` does:
  an unpicklable result fails the task there, by name, instead of failing later in Dask's
  transfer (or hanging, when a task on another worker needs it). Dask keeps and moves
  that pickle.
- **Retries** (``retries``/``retry_on``) happen inside ``run_native``, per item of a batch,
  with fresh arguments, only for ``retry_on``: Dask's ``retries=`` would retry any
  exception and a whole batch, so it is not used. A worker that dies is Dask's business:
  the task is rescheduled until ``distributed.scheduler.allowed-failures`` + 1 workers
  died with it, then fails with ``WorkerLostError``. The embedded cluster sets it to
  ``LOST_WORKER_RETRIES`` (3, as on every backend); a cluster we connect to keeps its own.
- **timeout**: the worker interrupts a task past its timeout with an asynchronous
  exception in its thread; a thread blocked in a C call ignores that, so after a grace
  the worker reports the task (event topic ``unidist-api-stuck-task``) and this client
  fails its future with ``TaskTimeoutError``, cancels it and has that worker process exit
  (its nanny starts a new one; ``_on_stuck``; docs/reliability.md, "Task timeouts").
- **Completion** comes from the messages the scheduler sends our client: its handlers of
  "key-in-memory", "task-erred", "cancelled-keys" and "restart" also note our keys, and
  each batch of messages goes in one piece to our completion thread, which completes our
  futures (the value stays on the cluster until asked for). Dask's public
  ``add_done_callback`` would cost, per future, a coroutine on the client's event loop and
  a hop to Dask's callback thread: about a tenth of Dask's own cost per task. Those
  handlers are not public API: a client without them (another Dask version) gets one
  ``add_done_callback`` per future instead, and once a second the completion thread also
  completes any future whose Dask future is no longer pending, in case Dask finished one
  without a message (it does when the client loses its scheduler).
- **fetch** (``fetches`` is set) asks for many values at once: ``gather`` waits for all its
  futures and brings over the values not read yet in one ``client.gather``, and
  ``result()`` on an unfinished future waits and loads in one call from the caller's
  thread, as Dask's own ``Future.result()`` does, instead of waiting for the completion
  and then asking; a future finished that way is completed by ``fetch``. A task that
  failed is left to the completion thread, and a gather that fails (a value that cannot
  be unpickled here, a lost connection) leaves every value to ``result()``, which reads
  each alone: errors are the same either way. ``result()`` on a finished future nobody
  fetched is one round trip; ``shutdown`` first brings over, in one batch, the values of
  finished tasks not read yet, so futures work after it.
- **put** pickles the object here (an error names it) and scatters it once, under a key of
  its own (two puts of equal objects are two objects). It lives on one worker until tasks
  elsewhere copy it; if that worker dies, Dask cannot recompute it: reading it, or a task
  needing it, fails with ``WorkerLostError``. Read a put handle's value before
  ``shutdown`` (it is not brought over).
- **cancel** succeeds only while the scheduler has not handed the task to a worker (it may
  then queue there, as on ``local``): Dask cannot stop a running task, only discard its
  result. A tiny race remains: the scheduler may hand the task over while the cancel
  message travels. Dask then also drops the tasks that take it as input; they fail with
  ``CancelledError``, as on ``local``.
- **Resources**: ``cpus`` above 1, ``gpus``, ``memory`` and ``resources`` become Dask worker
  resources ``CPU``, ``GPU``, ``MEMORY`` (bytes) and the given names; a task that asks for
  none of them just takes a thread. Embedded workers declare ``CPU`` (their threads) and
  ``MEMORY`` (their memory limit, Dask's default share of the machine); GPUs need a cluster
  whose workers declare them (``dask worker --resources "GPU=1"``). A request no current
  worker offers is refused at submit; a cluster with no worker yet accepts it. A running
  cluster's worker resources are asked for at most every ``OFFERS_MAX_AGE`` seconds (and
  once more, at most once a second, before refusing), not once per task. Dask counts
  a resource only among the tasks that ask for it, so with several threads per worker a
  ``cpus=2`` task may share its worker with one-thread tasks.
- **initializer** is a named ``WorkerPlugin`` per executor: Dask runs it once in every
  worker process, present or future, before the worker takes tasks (in the thread that
  runs tasks, so the worker stays responsive while it runs); its exception is raised by the
  first submit. An embedded executor with an initializer gets its own cluster, since its
  state would otherwise leak into other executors' tasks; on a running cluster, every
  worker runs the initializers of all the executors connected to it. Executors without one
  share an embedded cluster of the same shape, counted by users: starting one costs seconds.
  The embedded cluster (:mod:`.dask_cluster`) restarts nannies Dask closes after
  repeated worker deaths, so it never ends up without workers.
- **Shutdown** waits (``wait=True``), closes the client and stops the cluster we started
  once its last user is gone; ``wait=False`` does the same in the background. At
  interpreter exit, before ``atexit`` handlers run, tasks not finished are dropped and
  everything we started is stopped (Dask gives a worker busy with a task 4 s before it
  kills it, and says so on stderr). Embedded workers also exit when this process dies.
- **``__main__``**: Dask spawns worker processes, and a spawned process re-runs the
  parent's main script (its top-level prints and, without an ``if __name__ ==
  "__main__":`` guard, its whole program). Tasks never need it (functions from ``__main__``
  travel by value), so embedded workers are started without it, as ``local``'s are.
- **Logs**: embedded workers do not log each failed task (the caller gets the exception).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
import itertools
import logging
import math
import os
import queue
import re
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import dask.config
from dask.typing import Key
from dask.utils import format_bytes, funcname
from distributed import Client, KilledWorker, Worker, WorkerPlugin, get_worker
from distributed import Future as DaskFuture

from ..data import Embedded, Packed, load_result, pack
from ..errors import (
    ClusterConnectionError,
    ExecutorShutdownError,
    TaskTimeoutError,
    UnsupportedOptionError,
    WorkerLostError,
)
from ..futures import Future, RemoteFailure
from ..serialization import FunctionCache, dumps_value, pack_value, unloadable
from ..task import DEFAULT_OPTIONS, TaskOptions
from ..worker import (
    load_function,
    run_initializer,
    run_native,
    timeout_message,
    unpicklable_result,
)
from .base import (
    Backend,
    Task,
    check_listening,
    fail_from_engine,
    packed_value,
    positive_option,
    prepare_native,
    worker_lost,
)
from .dask_cluster import EmbeddedCluster, embedded_resources
from .dask_data import for_dask

DEFAULT_CONNECT_TIMEOUT = 30.0
OFFERS_MAX_AGE = 5.0  # seconds a running cluster's worker resources are cached



class DaskBackend(Backend):
    name = "dask"
    honours_timeout = True
    takes_address = True
    fetches = True
    option_names = frozenset({"connect_timeout", "threads_per_worker"})

    def __init__(self, *, address: str | None, workers: int | None,
                 initializer: Callable[..., Any] | None, initargs: tuple[Any, ...],
                 options: Mapping[str, Any]) -> None:
        super().__init__(address=address, workers=workers, initializer=initializer,
                         initargs=initargs, options=options)
        self.address = address or dask.config.get("scheduler-address", None)
        self._connect_timeout = positive_option("dask", options, "connect_timeout",
                                                DEFAULT_CONNECT_TIMEOUT)
        self._threads = int(positive_option("dask", options, "threads_per_worker", 1,
                                            integer=True))
        self._lock = threading.Lock()
        self._client: Client | None = None
        self._cluster: EmbeddedCluster | None = None  # the embedded cluster we use, if any
        self._plugin: str | None = None  # our initializer's plugin name
        self._closed = False
        self._threads_seen = 0  # worker threads of a running cluster, when last asked
        # (when, resources of each worker) of a running cluster, for resource requests
        self._offers_seen: tuple[float, list[Mapping[str, float]]] = (-math.inf, [])
        self._functions = FunctionCache()
        self._key_prefix = uuid.uuid4().hex[:20]  # task keys: this, then a counter
        self._key_count = itertools.count()
        self._track_lock = threading.Lock()
        self._unfinished: dict[Key, Future[Any]] = {}  # our futures not completed yet
        self._cancelling: set[Key] = set()  # keys of tasks we asked Dask to cancel
        # completion from the client's report stream (None: one add_done_callback each)
        self._completions: queue.SimpleQueue[list[Key] | None] | None = None
        self._reported: list[Key] = []  # keys reported done, not handed over (event loop only)
        # finished tasks' and puts' values still on the cluster (loaded ones drop out), by key
        self._unread: weakref.WeakValueDictionary[Key, _Result] = weakref.WeakValueDictionary()
        self._restarting: list[threading.Thread] = []  # replacing workers with a stuck task
        self._timeouts = False  # a task with a timeout was submitted (see _dependents)

    @property
    def workers(self) -> int:
        if self.address is None:
            return (self._workers or os.cpu_count() or 1) * self._threads
        if self._workers:
            return self._workers
        if not self._closed:
            self._threads_seen = sum(self._get_client().nthreads().values())
        return max(1, self._threads_seen)

    # -- Backend interface -----------------------------------------------------------------
    def check_options(self, options: TaskOptions) -> None:
        if options is DEFAULT_OPTIONS:
            return
        request = _resource_request(options)
        if request:
            self._check_offered(request)

    def submit(self, task: Task) -> Future[Any]:
        fn_data, payload, inputs = prepare_native(task, self._functions)
        client = self._get_client()
        options = task.options
        key = f"{funcname(task.fn)}-{self._key_prefix}{next(self._key_count):012x}"
        future: Future[Any] = Future(self)
        if options.timeout is not None or (inputs and self._timeouts and _after_timeout(inputs)):
            self._timeouts = True
            # a stuck task is cancelled in Dask, and with it these: see _stop_stuck
            future._timed_inputs = [dep.handle.key for dep in inputs  # type: ignore[attr-defined]
                                    if hasattr(dep, "_timed_inputs")]
        with self._track_lock:  # before Dask can report it done
            self._unfinished[key] = future
        try:
            handle = client.submit(
                _run, fn_data, payload, task.mode, options.retries, _retry_on(options),
                options.timeout, *[self._input(dep) for dep in inputs], key=key, pure=False,
                resources=None if options is DEFAULT_OPTIONS else _resource_request(options),
            )
        except BaseException:
            with self._track_lock:
                self._unfinished.pop(key, None)
            raise
        future.handle = handle
        completions = self._completions
        if completions is None:
            handle.add_done_callback(functools.partial(self._on_done, future))
        elif handle.status != "pending":  # reported before it had its handle: once more
            completions.put([key])
        return future

    def put(self, obj: Any) -> Future[Any]:
        data = pack_value(obj, "the object passed to put")
        key = f"put-{uuid.uuid4().hex}"
        client = self._get_client()
        try:
            handle = client.scatter({key: for_dask(data)}, hash=False)[key]
        except Exception as exc:
            error = _scatter_error(exc)
            if error is exc:
                raise
            raise error from exc
        future: Future[Any] = Future(self, handle=handle)
        result = _Result(handle, put=True)
        with self._track_lock:
            self._unread[key] = result
        future.set_serialized_result(result, _Result.read)
        return future

    def cancel(self, future: Future[Any]) -> bool:
        handle: DaskFuture[Any] | None = future.handle
        if handle is None or handle.status == "cancelled":
            return True
        if handle.status != "pending" or self._started([handle]):
            return False
        self._cancel_in_dask([handle])
        return True

    def running(self, future: Future[Any]) -> bool:
        handle: DaskFuture[Any] | None = future.handle
        return handle is not None and handle.status == "pending" and bool(self._started([handle]))

    def fetch(self, futures: Sequence[Future[Any]], timeout: float | None) -> None:
        """Wait for ``futures``; bring over the values not read yet in one ``client.gather``.

        With a ``timeout`` (Dask's gather has none), only those finished by then are
        loaded. A future Dask finished before its callback ran is completed here.
        """
        if timeout is not None:
            cf.wait(futures, timeout)
        wanted: list[tuple[Future[Any], _Result | None]] = []
        with self._track_lock:
            for future in futures:
                handle = future.handle
                if handle is None:
                    continue
                if not future.done():
                    if timeout is None:
                        wanted.append((future, None))
                    continue
                result = self._unread.get(handle.key)
                if result is not None and result.unread:
                    wanted.append((future, result))
        waiting = [future for future, result in wanted if result is None]  # not done yet
        client = self._client
        values = None
        if wanted and client is not None:
            values = _gather(client, [future.handle for future, _ in wanted])
        if values is not None:
            waiting = []
            for (future, result), value in zip(wanted, values, strict=True):
                if value is _FAILED:
                    if result is None:
                        waiting.append(future)
                    continue
                if result is None:
                    self._complete(future, value)
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
        resources = sorted({_describe(worker["resources"]) for worker in workers})
        where = self.address or f"embedded LocalCluster at {info['address']}"
        return {"address": where, "workers": self.workers,
                "worker processes": f"{len(workers)} ({threads} threads)",
                "worker resources": "; ".join(resources) or "none declared"}

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
        if cancel_futures:
            self._cancel_unstarted()
        if wait:
            self._drain_and_close()
        else:
            threading.Thread(target=self._drain_and_close, daemon=True,
                             name="unidist-api-dask-shutdown").start()

    # -- starting ----------------------------------------------------------------------------
    def _get_client(self) -> Client:
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._closed:
                raise ExecutorShutdownError("this 'dask' executor has been shut down")
            if self._client is None:
                self._client = self._start()
                _track(self)
            return self._client

    def _start(self) -> Client:
        """Connect to ``address`` or start (or join) an embedded cluster; install the plugins."""
        client = None
        try:
            if self.address is not None:
                client = self._connect(self.address)
            else:
                self._cluster = EmbeddedCluster.acquire(self._workers or os.cpu_count() or 1,
                                                 self._threads, private=self.init_data is not None)
                client = Client(self._cluster.cluster, set_as_default=False)
                client.register_plugin(_QuietTaskFailures())
            if self.init_data is not None:
                name = f"unidist-api-initializer-{uuid.uuid4().hex}"
                client.register_plugin(_Initializer(self.init_data), name=name)
                self._plugin = name
            self._watch_reports(client)
            client.subscribe_topic(_STUCK_TOPIC, self._on_stuck)
        except BaseException:
            self._release(client, self._cluster)
            self._cluster = None
            raise
        return client

    def _connect(self, address: str) -> Client:
        timeout = self._connect_timeout
        deadline = time.monotonic() + timeout
        check_listening(address, timeout,
                        "Check that the Dask scheduler runs (`dask scheduler`) and the address")
        _probe_scheduler(address, timeout)
        try:
            return Client(address, timeout=max(1.0, deadline - time.monotonic()),
                          set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            _close_half_made_client(exc)
            if isinstance(exc, ValueError):
                raise ClusterConnectionError(_malformed(address, exc)) from exc
            raise ClusterConnectionError(
                f"cannot reach the Dask scheduler at {address} within {timeout:g} s ({exc}); "
                "check that it is running and reachable from here, or raise the "
                "connect_timeout option"
            ) from exc

    # -- completion ---------------------------------------------------------------------------
    def _watch_reports(self, client: Client) -> None:
        """Learn which tasks finished from the messages the scheduler sends our client.

        Dask's ``add_done_callback`` costs, per future, a coroutine on the event loop and a
        hop to Dask's callback thread (about a tenth of Dask's own cost per task). Instead,
        the client's handlers of "key-in-memory", "task-erred", "cancelled-keys" and
        "restart" also note our keys; each batch of messages goes in one piece to our
        completion thread. A client without those handlers (another Dask version) gets
        one ``add_done_callback`` per future, as before.
        """
        handlers = getattr(client, "_stream_handlers", None)
        if not isinstance(handlers, dict) or not all(op in handlers for op in _REPORTS):
            return
        for op in _REPORTS:
            handlers[op] = functools.partial(self._on_report, op, handlers[op])
        completions: queue.SimpleQueue[list[Key] | None] = queue.SimpleQueue()
        threading.Thread(target=self._complete_loop, args=(completions,), daemon=True,
                         name="unidist-api-dask-completion").start()
        self._completions = completions

    def _on_report(self, op: str, handler: Callable[..., Any], /, *args: Any,
                   **kwargs: Any) -> Any:
        """Dask's handler of one report (on the event loop), then note our keys in it."""
        result = handler(*args, **kwargs)
        try:
            if op == "cancelled-keys":
                keys = list(kwargs["keys"] if "keys" in kwargs else args[0])
            elif op == "restart":
                with self._track_lock:
                    keys = list(self._unfinished)
            else:
                keys = [kwargs["key"] if "key" in kwargs else args[0]]
            ours = [key for key in keys if key in self._unfinished]
            if ours:
                if not self._reported:  # hand them over once this batch of reports is handled
                    asyncio.get_running_loop().call_soon(self._hand_over)
                self._reported.extend(ours)
        except Exception:  # never break Dask's report loop; the sweep finds them
            logging.getLogger(__name__).debug("unexpected %r report", op, exc_info=True)
        return result

    def _hand_over(self) -> None:
        """On the event loop: pass the keys reported since to the completion thread."""
        keys, self._reported = self._reported, []
        completions = self._completions
        if keys and completions is not None:
            completions.put(keys)

    def _complete_loop(self, completions: queue.SimpleQueue[list[Key] | None]) -> None:
        """Our completion thread: complete reported futures; once a second, sweep.

        The sweep completes any future whose Dask future is no longer pending, in case
        Dask finished one without a report (e.g. when the client lost its scheduler).
        """
        swept = time.monotonic()
        while True:
            try:
                keys = completions.get(timeout=_SWEEP_INTERVAL)
            except queue.Empty:
                keys = []
            if keys is None:
                return
            sweep = time.monotonic() - swept >= _SWEEP_INTERVAL
            try:
                # in a call of its own, so no future stays referenced from here while this
                # thread waits: Dask releases a task's value when its last future goes
                self._complete_reported(keys, sweep)
            except Exception:  # keep completing the others
                logging.getLogger(__name__).warning("completing dask futures failed",
                                                    exc_info=True)
            if sweep:
                swept = time.monotonic()

    def _complete_reported(self, keys: list[Key], sweep: bool) -> None:
        for key in keys:
            future = self._unfinished.get(key)
            if future is not None:
                self._finish(future)
        if sweep:
            with self._track_lock:
                futures = list(self._unfinished.values())
            for future in futures:
                self._finish(future)

    def _finish(self, future: Future[Any]) -> None:
        """Complete ``future`` if Dask is done with its task (its handle may not be set yet)."""
        handle: DaskFuture[Any] | None = future.handle
        if handle is not None and handle.status != "pending":
            self._on_done(future, handle)

    def _on_stuck(self, event: tuple[float, dict[str, Any]]) -> None:
        """A worker reports a task past its timeout that its thread could not stop.

        On the client's event loop: the rest happens in a thread of its own, since it
        completes a future (whose callbacks must not run here) and makes client calls.
        """
        report = event[1]
        future = self._unfinished.get(report["key"])
        if future is not None:
            thread = threading.Thread(target=self._stop_stuck, args=(future, report),
                                      daemon=True, name="unidist-api-dask-timeout")
            self._restarting = [t for t in self._restarting if t.is_alive()] + [thread]
            thread.start()

    def _stop_stuck(self, future: Future[Any], report: dict[str, Any]) -> None:
        """Fail ``future`` with TaskTimeoutError, drop its Dask task, replace its worker.

        The Dask task is cancelled first, else Dask would run it again elsewhere once its
        worker is gone. The worker process then exits (the stuck thread dies with it) and
        its nanny starts a new one; the other tasks that worker was running or had queued
        are run again elsewhere, which Dask counts as one of their ``allowed-failures``.
        """
        message = (
            f"{report['message']} (it was blocked outside Python, where a Dask worker "
            f"thread cannot be interrupted, so its worker {report['worker']} was restarted)"
        )
        try:
            future.set_exception(TaskTimeoutError(message))
        except cf.InvalidStateError:
            return  # it finished (or failed) meanwhile: leave the worker alone
        for dependent in self._dependents(report["key"]):  # Dask cancels them with it
            try:
                dependent.set_exception(TaskTimeoutError(message))
            except cf.InvalidStateError:
                pass
        client = self._client
        handle = future.handle
        if client is None or handle is None:
            return
        try:
            client.cancel([handle])
            # The worker process exits at once and its nanny starts a new one, as after a
            # crash. (Client.restart_workers asks the worker to close first, which waits
            # 4 s for the stuck thread; under load its nanny then at times never restarted
            # it, leaving the cluster without workers.)
            client.run(_exit_worker, workers=[report["worker"]], wait=False)
        except Exception:  # closed meanwhile, or the worker is gone already
            logging.getLogger(__name__).debug("restarting a stuck worker failed",
                                              exc_info=True)

    def _dependents(self, key: Key) -> list[Future[Any]]:
        """Our unfinished futures whose tasks need ``key``'s value, directly or not."""
        with self._track_lock:
            candidates = {k: f for k, f in self._unfinished.items()
                          if hasattr(f, "_timed_inputs")}
        found: set[Key] = {key}
        grown = True
        while grown:
            grown = False
            for k, f in candidates.items():
                if k not in found and not found.isdisjoint(f._timed_inputs):
                    found.add(k)
                    grown = True
        return [candidates[k] for k in found if k in candidates and k != key]

    # -- tasks ------------------------------------------------------------------------------
    def _input(self, dep: Future[Any]) -> Any:
        """What a task receives for an input future: our Dask future, or another's value."""
        return dep.handle if dep._backend is self else packed_value(dep)

    def _on_done(self, future: Future[Any], handle: DaskFuture[Any]) -> None:
        """Complete ``future`` from its finished Dask future, leaving the value there.

        Runs on our completion thread, or as Dask's done callback on its callback thread.
        """
        key = handle.key
        with self._track_lock:
            if self._unfinished.get(key) is future:
                del self._unfinished[key]
            cancelled = key in self._cancelling
            if cancelled:
                self._cancelling.discard(key)
        if future.done():  # completed by fetch (or shutdown) already
            return
        try:
            if cancelled:
                future.cancel()
            elif handle.status in ("error", "cancelled"):
                _fail(future, handle)
            else:
                result = _Result(handle)
                with self._track_lock:
                    self._unread[handle.key] = result
                future.set_serialized_result(result, _Result.read)
        except cf.InvalidStateError:
            pass  # failed by shutdown meanwhile
        except BaseException as exc:  # the client closed under us: never raise into Dask
            try:
                future.set_exception(exc)
            except cf.InvalidStateError:
                pass

    def _complete(self, future: Future[Any], value: Any) -> None:
        """Complete ``future`` with its fetched value, unless its callback did meanwhile."""
        with self._track_lock:
            self._unfinished.pop(future.handle.key, None)
        try:
            future.set_result(value)
        except cf.InvalidStateError:  # the callback came first (or shutdown)
            future.set_loaded(value)

    def _check_offered(self, request: dict[str, float]) -> None:
        """Refuse a resource request that no worker of the cluster could ever satisfy."""
        for max_age in (OFFERS_MAX_AGE, 1.0):  # a refusal looks again, at most once a second
            offers = self._offers(max_age)
            if not offers or any(_covers(offer, request) for offer in offers):
                return
        hint = ("the embedded cluster's CPU is the threads_per_worker option; other "
                "resources need a cluster whose workers declare them, "
                if self.address is None else "or start workers that declare them, ")
        raise UnsupportedOptionError(
            f"the task asks for {_describe(request)} (cpus -> CPU, gpus -> GPU, memory -> "
            f"MEMORY, plus its resources), but no worker of the Dask cluster offers that; "
            f"workers offer: {'; '.join(sorted({_describe(o) for o in offers}))}. Ask for "
            f'less ({hint}e.g. dask worker --resources "GPU=1")'
        )

    def _offers(self, max_age: float) -> list[Mapping[str, float]]:
        """The resources each worker declares (the embedded cluster's, without starting it).

        A running cluster's are asked for at most once per ``max_age`` seconds, so tasks
        with resource options do not cost a round trip to the scheduler each.
        """
        if self.address is None:
            return [embedded_resources(self._workers or os.cpu_count() or 1, self._threads)]
        seen_at, offers = self._offers_seen
        if time.monotonic() - seen_at > max_age:
            workers = self._get_client().scheduler_info(n_workers=-1)["workers"]
            offers = [worker["resources"] for worker in workers.values()]
            self._offers_seen = (time.monotonic(), offers)
        return offers

    def _started(self, handles: Iterable[DaskFuture[Any]]) -> set[DaskFuture[Any]]:
        """Those of ``handles`` the scheduler has handed to a worker (they may be running)."""
        client = self._client
        if client is None:
            return set(handles)
        try:
            processing = {key for keys in client.processing().values() for key in keys}
        except Exception:  # cannot tell: count them as started
            return set(handles)
        return {handle for handle in handles if handle.key in processing}

    # -- stopping ---------------------------------------------------------------------------
    def _cancel_in_dask(self, handles: list[DaskFuture[Any]]) -> None:
        """Cancel these tasks in Dask; their done callbacks then cancel our futures."""
        client = self._client
        if client is None or not handles:
            return
        with self._track_lock:
            self._cancelling.update(handle.key for handle in handles)
        client.cancel(handles)

    def _cancel_unstarted(self) -> None:
        with self._track_lock:  # those still in client.submit have no handle yet: they run
            futures = [future for future in self._unfinished.values() if future.handle is not None]
        started = self._started(future.handle for future in futures)
        unstarted = [future for future in futures if future.handle not in started]
        self._cancel_in_dask([future.handle for future in unstarted])
        for future in unstarted:
            future.cancel()  # at once, not when Dask calls back

    def _drain_and_close(self) -> None:
        with self._track_lock:
            unfinished = list(self._unfinished.values())
        cf.wait(unfinished)
        for thread in self._restarting:  # let a worker's replacement be asked for first
            thread.join(_RESTART_TIMEOUT)
        self._fetch_unread()
        self._close()

    def _fetch_unread(self) -> None:
        """Bring values nobody has read yet to this process, before the cluster goes away."""
        with self._track_lock:
            unread = [result for result in self._unread.values()
                      if result.unread and not result.put]
        client = self._client
        if client is None or not unread:
            return
        values = _gather(client, [result.handle for result in unread])
        if values is None:  # one of them cannot be brought over: find out which, one at a time
            values = [_FAILED] * len(unread)
        for result, value in zip(unread, values, strict=True):
            if value is _FAILED:
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
        with self._track_lock:
            dropped = list(self._unfinished.values())
            self._unfinished.clear()
            completions, self._completions = self._completions, None
        if completions is not None:
            completions.put(None)  # stops the completion thread
        for future in dropped:
            try:
                future.set_exception(ExecutorShutdownError(
                    "the executor was shut down (or the program ended) before this task finished"
                ))
            except cf.InvalidStateError:
                pass
        if client is not None and cluster is None and self._plugin is not None:
            try:  # later workers of a cluster we only joined need not run it
                client.unregister_worker_plugin(self._plugin)
            except Exception:
                pass
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


def _malformed(address: str, exc: BaseException) -> str:
    """Why ``address`` cannot be a Dask scheduler's, and what one looks like."""
    hint = ""
    if address.startswith("ray://") or address == "auto":
        hint = " (it looks like a Ray address: use the ray backend for it)"
    return (f"{address!r} is not a Dask scheduler address{hint} ({exc}); expected "
            "'tcp://host:port' (the scheduler's port, 8786 by default)")


def _probe_scheduler(address: str, timeout: float) -> None:
    """Check, within ``timeout`` seconds, that a Dask scheduler answers at ``address``.

    ``Client(address, timeout=...)`` does not bound Dask's handshake: something that
    accepts connections but is not a Dask scheduler (another server, a port that
    swallows data) would hang it for ever. Dask's ``identity`` call, run on an event
    loop of its own in a thread and cancelled at the deadline, tells us in time.
    """
    from distributed.comm.addressing import parse_address
    from distributed.comm.core import connect
    from distributed.security import Security

    try:
        scheme = parse_address(address)[0]
    except ValueError as exc:
        raise ClusterConnectionError(_malformed(address, exc)) from exc
    if scheme not in ("tcp", "tls"):
        return  # inproc, ucx, ws...: left to Client

    async def identity() -> Any:
        comm = await connect(address, timeout=timeout,
                             **Security().get_connection_args("client"))
        try:
            await comm.write({"op": "identity", "n_workers": 0, "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(asyncio.run(asyncio.wait_for(identity(), timeout)))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, name="unidist-api-dask-probe", daemon=True)
    thread.start()
    thread.join(timeout + 5)  # wait_for ends it at the deadline; 5 s more for the loop to close
    answer = outcome[0] if outcome else TimeoutError()
    if isinstance(answer, dict) and answer.get("type") == "Scheduler":
        return
    if isinstance(answer, ValueError):
        raise ClusterConnectionError(_malformed(address, answer)) from answer
    if isinstance(answer, (TimeoutError, asyncio.TimeoutError)):
        problem = ("something listens there but did not answer as a Dask scheduler within "
                   f"{timeout:g} s")
    elif isinstance(answer, BaseException):
        problem = f"something listens there but is not a Dask scheduler ({answer!r})"
    else:
        kind = answer.get("type") if isinstance(answer, dict) else None
        problem = (f"a Dask {kind} answers there, not a scheduler" if kind
                   else "something answers Dask's protocol there, but not as a scheduler "
                   "(a worker's address?)")
    error = ClusterConnectionError(
        f"cannot connect to a Dask scheduler at {address!r}: {problem}. Check the address "
        "(the scheduler's port, 8786 by default; a Ray address goes to the ray backend), "
        "or raise the connect_timeout option if the scheduler is just slow to answer"
    )
    if isinstance(answer, BaseException):
        raise error from answer
    raise error


def _close_half_made_client(exc: BaseException) -> None:
    """Close the client a failed ``Client(address)`` leaves behind, found in its traceback.

    Dask keeps it alive (in reference cycles, with its event loop thread) and closes it
    only when it is collected, at interpreter exit at the latest, when that close can no
    longer run and hangs for twice the connect timeout.
    """
    tb = exc.__traceback__
    while tb is not None:
        client = tb.tb_frame.f_locals.get("self")
        if isinstance(client, Client):
            client.close()
            return
        tb = tb.tb_next


# -- the task on the worker ------------------------------------------------------------------
def _run(fn_data: bytes, payload: bytes, mode: int, retries: int,
         retry_on: tuple[type[BaseException], ...], timeout: float | None,
         *inputs: Any) -> bytes | Packed:
    """Run one task on a Dask worker; its value is packed here (large buffers out of band)."""
    on_stuck = None if timeout is None else _stuck_reporter(fn_data, timeout)
    try:
        value = run_native(fn_data, payload, mode, retries, retry_on, *inputs, timeout=timeout,
                           on_stuck=on_stuck)
    except BaseException as exc:
        # run_native raises from inside its handler, so the exception's __context__ leads
        # back to itself; Dask pickles contexts (tblib) and would recurse forever.
        exc.__context__ = None
        raise
    try:
        return for_dask(pack(value))
    except Exception as exc:
        raise unpicklable_result(fn_data, value, exc) from None


def _stuck_reporter(fn_data: bytes, timeout: float) -> Callable[[], None]:
    """The hook for an attempt the interrupt did not stop: tell the caller's client.

    Dask runs tasks in threads, where the interrupt (an asynchronous exception) waits
    for the thread to run Python again; a thread blocked in a C call (``time.sleep``)
    does not. The client that owns the task then fails it and replaces this worker
    (:meth:`DaskBackend._on_stuck`).
    """
    worker = get_worker()
    key = worker.get_current_task()
    name = getattr(load_function(fn_data), "__qualname__", None) or str(key)

    def report() -> None:
        worker.log_event(_STUCK_TOPIC, {"key": key, "worker": worker.address,
                                        "message": timeout_message(name, timeout)})

    return report


async def _exit_worker() -> None:
    """Run by ``Client.run`` in a worker whose thread is stuck: end its process now.

    A coroutine function: ``Client.run(wait=False)`` takes no other kind.
    """
    os._exit(1)


def _after_timeout(inputs: list[Future[Any]]) -> bool:
    """Whether one of ``inputs`` is (or needs) a task with a timeout."""
    return any(hasattr(dep, "_timed_inputs") for dep in inputs)


def _scatter_error(exc: Exception) -> Exception:
    """``put``'s error when the worker could not unpickle the object, else ``exc`` itself.

    Dask's worker unpickles a scattered object at once, and its error comes back as a
    plain ``Exception`` holding the repr of the original, e.g. ``ModuleNotFoundError(...)``.
    """
    found = re.fullmatch(r"ModuleNotFoundError\((['\"])No module named '([^']+)'\1\)", str(exc))
    if type(exc) is not Exception or found is None:
        return exc
    missing = ModuleNotFoundError(f"No module named {found.group(2)!r}", name=found.group(2))
    return unloadable("the object passed to put", missing, where="a Dask worker")


def _retry_on(options: TaskOptions) -> Any:
    """``retry_on`` for the task: builtins as they are, others by value like the arguments."""
    retry_on = options.retry_on
    if all(kind.__module__ == "builtins" for kind in retry_on):
        return retry_on
    return Embedded(dumps_value(retry_on, "the retry_on option"))


# -- results and failures --------------------------------------------------------------------
_UNREAD: Any = object()
_FAILED: Any = object()  # what _gather gives for a task that failed or was cancelled
# the client's handlers of the reports that finish a future (``_watch_reports``)
_REPORTS = ("key-in-memory", "task-erred", "cancelled-keys", "restart")
_SWEEP_INTERVAL = 1.0  # seconds between two looks at every unfinished future
_STUCK_TOPIC = "unidist-api-stuck-task"  # workers report there a timed-out task they cannot stop
_RESTART_TIMEOUT = 30.0  # seconds shutdown waits for a stuck worker's replacement to be asked


def _gather(client: Client, handles: list[DaskFuture[Any]]) -> list[Any] | None:
    """The values of ``handles`` (waiting for them) in one gather; None if it fails.

    A task that failed or was cancelled gives ``_FAILED``; the gather fails when a value
    cannot be brought over (lost touch, cannot be unpickled here).
    """
    try:
        found = client.gather(dict(enumerate(handles)), errors="skip")
    except (Exception, asyncio.CancelledError):
        return None
    failed = ("error", "cancelled")
    return [_FAILED if handle.status in failed or index not in found
            else load_result(found[index], private=True)
            for index, handle in enumerate(handles)]


class _Result:
    """A finished task's (or put's) value: on the cluster until read or fetched."""

    __slots__ = ("handle", "put", "_value", "_failure", "__weakref__")

    def __init__(self, handle: DaskFuture[Any], *, put: bool = False) -> None:
        self.handle = handle
        self.put = put  # a put's value is not brought over at shutdown
        self._value: Any = _UNREAD
        self._failure: RemoteFailure | None = None

    @property
    def unread(self) -> bool:
        return self._value is _UNREAD and self._failure is None

    def read(self) -> Any:
        """The value (the loader of ``Future.set_serialized_result``); works from any thread."""
        if self._failure is not None:
            raise self._failure
        if self._value is not _UNREAD:
            return self._value
        try:
            data = self.handle.result()
        except Exception as exc:
            error = _engine_error(exc, self.handle, reading=True)
            if error is None:
                raise  # e.g. a value this process cannot unpickle
            raise RemoteFailure(error) from None
        return load_result(data, private=True)  # received from a socket: ours alone

    def keep(self, value: Any) -> None:
        self._value = value

    def fetch(self) -> None:
        try:
            self._value = self.read()
        except RemoteFailure as failure:
            self._failure = failure


def _fail(future: Future[Any], handle: DaskFuture[Any]) -> None:
    """Complete ``future`` with its Dask task's failure: the task's own exception, or ours."""
    exc = _exception_of(handle)
    error = _engine_error(exc, handle, reading=False)
    if error is None:
        fail_from_engine(future, exc)
        return
    try:
        future.set_exception(error)
    except cf.InvalidStateError:
        pass


def _exception_of(handle: DaskFuture[Any]) -> BaseException:
    """Why a Dask future failed, or why Dask cancelled it (we did not ask)."""
    if handle.status == "error":
        exc: BaseException = handle.exception()
        return exc
    try:
        handle.result()
    except cf.CancelledError as cancelled:
        return cancelled
    return cf.CancelledError()


def _engine_error(exc: BaseException, handle: DaskFuture[Any], *,
                  reading: bool) -> BaseException | None:
    """Our error for a failure of Dask itself (Dask's as its cause); None for the task's own.

    ``reading``: the task had finished, and fetching its value failed.
    """
    error: BaseException
    closed = handle.client.status in ("closing", "closed")
    if isinstance(exc, KilledWorker):
        error = worker_lost(
            str(exc.task).rpartition("-")[0] or str(exc.task), exc.allowed_failures + 1,
            "dask: KilledWorker; the cluster's distributed.scheduler.allowed-failures",
            limit=exc.allowed_failures,
        )
    elif closed and (reading or isinstance(exc, cf.CancelledError)):
        error = ExecutorShutdownError(
            "the executor was shut down before this value was read; read it before shutdown()"
        )
    elif isinstance(exc, cf.CancelledError):
        reason = str(getattr(exc, "reason", ""))
        if "lost" in reason or "forgotten" in reason:
            error = WorkerLostError(
                "this value, or one this task needs, was lost with the worker holding it "
                "(Dask recomputes task results, but not put objects: put it again)"
            )
        else:
            error = cf.CancelledError("an input of this task was cancelled")
    elif reading and isinstance(exc, OSError):
        error = ClusterConnectionError(
            f"lost touch with the Dask cluster while fetching this task's value: {exc}"
        )
    else:
        return None
    error.__cause__ = exc
    return error


# -- resources -----------------------------------------------------------------------------------
def _resource_request(options: TaskOptions) -> dict[str, float] | None:
    """The Dask worker resources a task asks for; None for a task that just takes a thread."""
    request: dict[str, float] = {}
    if options.cpus > 1:
        request["CPU"] = options.cpus
    if options.gpus > 0:
        request["GPU"] = options.gpus
    if options.memory is not None:
        request["MEMORY"] = options.memory
    request.update({name: amount for name, amount in (options.resources or {}).items()
                    if amount > 0})
    return request or None


def _covers(offer: Mapping[str, float], request: Mapping[str, float]) -> bool:
    return all(offer.get(name, 0) >= amount for name, amount in request.items())


def _describe(resources: Mapping[str, float]) -> str:
    if not resources:
        return "no resources"
    return ", ".join(f"{name}={format_bytes(int(amount)) if name == 'MEMORY' else f'{amount:g}'}"
                     for name, amount in sorted(resources.items()))


# -- worker plugins --------------------------------------------------------------------------------
class _Initializer(WorkerPlugin):
    """Runs an executor's ``initializer(*initargs)`` once in every worker process."""

    def __init__(self, init_data: bytes) -> None:
        self.init_data = init_data

    async def setup(self, worker: Worker) -> None:
        # in the thread that runs the tasks, so the worker answers its scheduler meanwhile
        executor = worker.executors["default"]
        await asyncio.get_running_loop().run_in_executor(executor, run_initializer,
                                                         self.init_data)


class _QuietTaskFailures(WorkerPlugin):
    """Stops embedded workers from logging each failed task: the caller gets the exception."""

    name = "unidist-api-quiet-task-failures"  # one per cluster
    idempotent = True

    def setup(self, worker: Worker) -> None:
        logging.getLogger("distributed.worker").addFilter(_not_a_task_failure)


def _not_a_task_failure(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Compute Failed")


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
            threading._register_atexit(_close_all)  # type: ignore[attr-defined]


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
