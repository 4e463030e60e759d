"""``ray``: tasks run on Ray, either a private local Ray we start or a cluster we join.

Where it runs. Without an address (ours, or Ray's own ``RAY_ADDRESS`` environment
variable when ours is unset) the first task starts a private local Ray (``address=
"local"`` semantics: never attach to a Ray someone else started) with ``num_cpus =
workers`` (default ``os.cpu_count()``), no dashboard, usage stats off, every process of
it bound to 127.0.0.1, and we stop it again, at the latest at interpreter exit. With
an address (``"auto"``, ``"host:port"``, ``"ray://host:10001"``) we connect, and
``shutdown()`` only disconnects: we never stop a cluster we did not start. If the
program already called ``ray.init()`` itself, that connection is used and left alone.

Connecting. ``ray.init`` retries an unreachable address for minutes, so we first check
that the address accepts a TCP connection, then give ``ray.init`` the rest of
``connect_timeout``. A cluster started with ``ray start --head`` requires a token since
Ray 2.60, which Ray sends by itself only for ``"auto"``: we send it whenever one is
available (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``; a
cluster without authentication ignores it), and when none is, the error says so.

One Ray per process. Ray allows one ``ray.init`` per process, yet several executors
may exist at once, so every ``RayBackend`` shares one :class:`_Runtime`, counted: the
last executor to shut down stops what we started. Two executors asking for different
clusters at once are refused. ``workers`` sizes the private Ray only for the executor
that starts it; one that joins it later keeps its own ``workers`` for sizing map and
pipeline buffers, but its tasks share that Ray's CPUs.

Tasks. All tasks are calls of one remote function, :func:`_run_task` (created once per
runtime, with one ``.options()`` variant cached per distinct task options), which
runs :func:`~unidist_api.worker.run_native`. A call has as few arguments as Ray can
take cheaply (Ray serializes and checks each one, in Python, at every call): the
*spec*, the *payload* and the inputs. The spec is what all tasks of one function,
options and mode share, pickled once per executor: a 16-byte random token and the
pickle of ``(function pickle, mode, retries, retry_on, initializer)``; a worker
unpickles it once and then knows it by its token. Inline it is a few hundred bytes;
a larger one (a function with a large closure, an initializer over 64 KiB) goes to
the object store once, and a worker reads it there only when it does not know the
token yet. The payload is the call's own arguments, pickled at submit. Futures and
``put`` handles among the arguments travel as top-level ``ObjectRef`` arguments, so
Ray moves the values worker to worker; a future of another backend is passed as its
pickle. ``retries`` counts application errors inside ``run_native`` (per item, fresh
copies of the arguments, ``retry_on`` filter), so Ray's ``retry_exceptions`` is off
and its ``max_retries`` covers only lost workers: ``LOST_WORKER_RETRIES`` (3), the same
limit as on every backend, after which the task fails with ``WorkerLostError``. ``cpus``,
``gpus``, ``memory`` (bytes) and ``resources`` become Ray's ``num_cpus``,
``num_gpus``, ``memory`` and ``resources``; a request no node of the cluster could
ever satisfy is refused at submit. ``timeout`` travels in the spec: the worker stops an
attempt past it with a SIGALRM in its main thread, where Ray runs tasks
(:mod:`unidist_api.timeouts`).

Serialization. Every value that crosses Ray (results, ``put`` objects, inputs from
other backends, task exceptions, ``retry_on``) is pickled by our cloudpickle, not
Ray's own copy of it, so a class the workers got by value (defined in ``__main__`` or
a test module) comes back as the caller's very class, and an unpicklable value is
named in a :class:`SerializationError`. A value without large buffers is one plain
``bytes`` pickle (which Ray handles as cheaply as an int); one with buffers of 1 MiB or
more is a :class:`~unidist_api.data.Packed`, which Ray pickles with protocol 5, storing
the buffers out of band in its object store: workers read them as zero-copy read-only
views, and the caller copies each once (``load_result``). So ``ray.get(future.handle)``
gives that packed form (``unidist_api.data.load_result`` rebuilds the value).

Completion. Waiting is mostly ``result()`` and ``gather``, and those go through
:meth:`RayBackend.fetch` (``fetches`` is set): one ``ray.get`` in the caller's thread
for all the futures asked for, done or not, which then completes them with their
values. Nothing else is needed for them, so a task's future is not *watched* when it
is submitted: Ray's ``ObjectRef._on_ready`` callback costs Ray's I/O thread a GIL
round trip per task (5-10% of a tiny task's cost). Whatever else waits for a future
watches it first: ``done()``, ``exception()``, ``add_done_callback`` (so ``await`` and
asyncio), ``concurrent.futures.wait``/``as_completed`` (through the future's
``_waiters`` list, where they install their waiters), and a fetch that did not finish
(timeout, a failed task). A *sweep* watches every future nothing waited for within a
second (``WATCH_AFTER``), so a future nobody reads still completes and lets go of its
``ObjectRef``, and the tasks left by ``shutdown(wait=False)`` end the runtime; futures a
fetch is waiting for are left to it. A watched future's callback, which does not fetch
the value, runs on Ray's I/O thread and only queues the future for one completer
thread per runtime (which also sweeps), which completes it with the ``ObjectRef``
itself: the value is fetched on the first ``result()``, so a result passed on to
another task never visits the caller. A failed task is never completed by a fetch:
the fetch leaves it to that path, so ``result()`` raises the task's own exception
with its remote traceback. A watched future is completed as a success even when its
task failed (that shows when the value is loaded), except for tasks that ask to report
failures (``Task.report_failure``: every task of a ``reduce``, which must fail fast):
those return a tiny status value first (``num_returns=2``), which the completer reads,
so their future fails as soon as the task does. Before we stop a Ray we started, the
results the program still holds are fetched, so ``result()`` works after
``shutdown()``; after that we make no Ray call, which would start (or join) another Ray
by itself.

Initializer. Ray's own hook (``worker_process_setup_hook``) is fixed when Ray starts
and is shared by every executor of the process, so ``initializer(*initargs)`` instead
runs inside the first task of this executor that a worker process runs, once per
process and executor, before the task (a worker that never runs one of its tasks never
runs it). If it raises, that task fails with its exception, and the next task on that
worker tries again.

Cancel. ``ray.cancel`` can crash the calling process when it lands while the task
finishes (a race in Ray's task manager, ray-project/ray#54846), which is exactly when
map and pipeline cancel what they no longer need, so we never call it. ``cancel()``
instead posts the task's id on a cancel board in Ray's key-value store and is True for
any unfinished task; a worker reads the board when it starts a task (at most every
0.2 s) and skips a task listed there (:mod:`.ray_signals`). Best effort: a task that
starts before the worker's next read, or was running, runs to the end and its result is
dropped.

Backend options:

- ``connect_timeout`` (seconds, default 30): how long connecting to an address may
  take before :class:`~unidist_api.errors.ClusterConnectionError` (which names the
  address) is raised; an address nothing listens on fails at once.
- ``runtime_env`` (dict): Ray's runtime environment for this executor's tasks, e.g.
  ``{"env_vars": {"OMP_NUM_THREADS": "1"}}`` or ``{"pip": [...]}``; Ray runs such
  tasks in worker processes of their own.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures as cf
import contextlib
import functools
import logging
import math
import os
import queue
import threading
import time
import traceback
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import ray
import ray.exceptions as rex
from ray._private import ray_constants

from ..data import Embedded, Packed, load_result, pack
from ..errors import (
    BackendNotInstalledError,
    ClusterConnectionError,
    ExecutorShutdownError,
    InvalidOptionError,
    TaskError,
    UnidistError,
    UnsupportedOptionError,
    WorkerLostError,
)
from ..futures import Future, RemoteFailure, _Serialized
from ..serialization import FunctionCache, dumps, dumps_value, loads, pack_value
from ..task import TaskOptions
from ..worker import (
    failure_details,
    load_function,
    run_initializer,
    run_native,
    stuck_error,
    unpicklable_result,
)
from . import ray_signals as signals
from .base import (
    LOST_WORKER_RETRIES,
    Backend,
    Task,
    check_listening,
    packed_value,
    positive_option,
    prepare_native,
    task_name,
    worker_lost,
)

__all__ = ["RayBackend"]

NODES_MAX_AGE = 60.0  # seconds the cluster's node resources are cached
INLINE_BYTES = 64 * 1024  # a larger function or initializer pickle goes to the object store once
SPECS_MAX = 256  # task specs (function, options, mode) cached, in the caller and per worker
WATCH_AFTER = 1.0  # seconds after which the sweep watches a future nothing waited for
SWEEP_EVERY = 0.5  # seconds between sweeps


class RayBackend(Backend):
    name = "ray"
    honours_timeout = True
    takes_address = True
    option_names = frozenset({"connect_timeout", "runtime_env"})
    fetches = True
    failure_needs_load = True

    def __init__(self, *, address: str | None, workers: int | None,
                 initializer: Callable[..., Any] | None, initargs: tuple[Any, ...],
                 options: Mapping[str, Any]) -> None:
        super().__init__(address=address, workers=workers, initializer=initializer,
                         initargs=initargs, options=options)
        self.connect_timeout = positive_option("ray", options, "connect_timeout", 30.0)
        runtime_env = options.get("runtime_env")
        if runtime_env is not None and not isinstance(runtime_env, Mapping):
            raise InvalidOptionError(
                f"runtime_env must be a dict (Ray's runtime environment), got {runtime_env!r}"
            )
        self._runtime_env = dict(runtime_env) if runtime_env else None
        self._lock = threading.Lock()
        self._runtime: _Runtime | None = None
        self._functions = FunctionCache()
        self._calls: dict[tuple[TaskOptions, bool], tuple[Any, Embedded]] = {}
        self._specs: dict[tuple[int, int, int, bool], _Spec] = {}
        self._init: tuple[str, Any] | None = None  # (token, pickle or its ObjectRef)

    # -- where it runs -----------------------------------------------------------------
    def target(self) -> str | None:
        """The address to connect to (ours, else ``RAY_ADDRESS``); None: a private Ray."""
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        return None if address == "local" else address

    def _get_runtime(self) -> _Runtime:
        runtime = self._runtime
        if runtime is None:
            with self._lock:
                if self._runtime is None:
                    self._runtime = _acquire(self.target(), self._workers, self.connect_timeout)
                runtime = self._runtime
        return runtime

    @property
    def workers(self) -> int:
        if self._workers:
            return self._workers
        if self._runtime is None and self.target() is None and not ray.is_initialized():
            return os.cpu_count() or 1
        return max(1, int(self._get_runtime().total("CPU")))

    def describe(self) -> dict[str, Any]:
        runtime = self._get_runtime()
        nodes = runtime.nodes(max_age=0)
        totals = {name: runtime.total(name) for name in ("CPU", "GPU", "memory")}
        return {
            "address": runtime.where,
            "workers": self.workers,
            "nodes": len(nodes),
            "resources": _describe_resources(totals),
            "ray": ray.__version__,
        }

    # -- Backend interface -------------------------------------------------------------
    def check_options(self, options: TaskOptions) -> None:
        builtin = sorted(set(options.resources or ()) & set(_OPTION_OF))
        if builtin:
            raise UnsupportedOptionError(
                f"resources={options.resources!r} names {', '.join(builtin)}, which Ray "
                f"schedules itself: use the task options "
                f"{', '.join(_OPTION_OF[name] + '=' for name in builtin)} instead"
            )
        needs = _needs(options)
        runtime = self._get_runtime()
        if needs and not runtime.fits(needs):
            asked = ", ".join(f"{_OPTION_OF.get(name, name)}={amount!r}"
                              for name, amount in needs.items())
            raise UnsupportedOptionError(
                f"the task asks for {asked}, but no node of {runtime.where} could ever "
                "run it: "
                f"{runtime.largest_offer(needs)}. Ask for less, or add a node that has it"
            )

    def submit(self, task: Task) -> Future[Any]:
        fn_data, payload, inputs = prepare_native(task, self._functions)
        runtime = self._get_runtime()
        future: _RayFuture[Any] = _RayFuture(self, runtime)
        if inputs:
            try:
                handles = [self._input(runtime, dep) for dep in inputs]
            except BaseException as exc:  # an input of another backend failed: so does this task
                future.set_exception(exc)
                return future
        else:
            handles = []
        status = task.report_failure
        spec = self._specs.get((id(fn_data), id(task.options), task.mode, status))
        if spec is None:
            spec = self._spec(runtime, fn_data, task.options, task.mode, status)
        if status:  # a second, tiny return value tells a failure without loading the value
            future._status, future.handle = spec.remote.remote(spec.arg, payload, *handles)
        else:
            future.handle = spec.remote.remote(spec.arg, payload, *handles)
        future._fn = task.fn
        if inputs:  # weakly: a lost input is named in this task's WorkerLostError
            future._inputs = [weakref.ref(dep) for dep in inputs if isinstance(dep, _RayFuture)]
        runtime.track(future)
        return future

    def put(self, obj: Any) -> Future[Any]:
        data = pack_value(obj, "the object passed to put")
        runtime = self._get_runtime()
        future: Future[Any] = Future(self, handle=ray.put(data))
        future.set_serialized_result(future.handle, _load)
        runtime.unread.add(future)
        return future

    def cancel(self, future: Future[Any]) -> bool:
        """Post the task on the cancel board; True for any unfinished task (module doc)."""
        runtime = self._runtime
        if (runtime is None or runtime.closed or not isinstance(future, _RayFuture)
                or future.handle is None or future._state != _PENDING):
            return False
        if not runtime.board.add(future.handle.task_id().hex()):
            return False
        runtime.completer.wake()
        return True

    def fetch(self, futures: Sequence[Future[Any]], timeout: float | None) -> None:
        """Wait for ``futures`` and load their values with one ``ray.get``, in this thread.

        A failure (a task's, a timeout, Ray stopping) leaves the futures to the normal
        path, which raises each task's own exception from ``result()``.
        """
        runtime = self._runtime
        refs: list[Any] = []
        loading: list[Future[Any]] = []
        running: list[_RayFuture[Any]] = []  # not finished: no watcher needed while we wait
        for future in futures:
            if future._state == _PENDING and isinstance(future, _RayFuture):
                ref = future.handle
                running.append(future)
                future._fetching = True
            else:
                result = future._result
                if type(result) is not _Serialized or result.loads is not _load:
                    continue  # loaded already, or failed
                ref = result.data
            refs.append(ref)
            loading.append(future)
        try:
            if not refs or runtime is None or runtime.closed:
                cf.wait(futures, timeout)
                return
            deadline = None if timeout is None else time.monotonic() + timeout
            try:
                values = ray.get(refs, timeout=timeout)
            except rex.GetTimeoutError:
                return
            except Exception:  # a task failed, or Ray stops: each future's own path tells
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                cf.wait(futures, left)
                return
            for future, data in zip(loading, values, strict=True):
                try:
                    value = load_result(data)
                except Exception:  # unpicklable here: result() raises the SerializationError
                    continue
                runtime.loaded(future, value)
        finally:
            for future in running:  # left unfinished: from now on it completes by itself
                future._fetching = False
                if future._state != _FINISHED:
                    future._watch()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            runtime, self._runtime = self._runtime, None
        if runtime is None:
            return
        mine = runtime.unfinished(self)
        if cancel_futures:
            for future in mine:
                future.cancel()
        if wait:
            cf.wait(mine)
        self._calls.clear()
        self._specs.clear()
        self._functions.clear()
        _release(runtime)

    # -- internals ---------------------------------------------------------------------
    def _input(self, runtime: _Runtime, dep: Future[Any]) -> Any:
        """What stands for an input future among the task's arguments."""
        if (isinstance(dep._backend, RayBackend) and dep._backend._runtime is runtime
                and dep.handle is not None):
            return dep.handle  # an ObjectRef: Ray resolves it on the worker
        return packed_value(dep)  # raises the input's exception if it failed

    def _spec(self, runtime: _Runtime, fn_data: bytes, options: TaskOptions, mode: int,
              status: bool) -> _Spec:
        """What every task of this function, options and mode passes to :func:`_run_task`.

        A token (16 random bytes) and the pickle of ``(fn_data, mode, retries, retry_on,
        initializer, timeout, status)``, which a worker unpickles once and then knows by the
        token. Inline when small; else the token, the pickle's ObjectRef (put once; a worker
        reads it only when it does not know the token) and the initializer's ``(token,
        ObjectRef)``. With ``status`` the task returns a tiny status value first.
        """
        remote, retry_on = self._call(runtime, options, status)
        init = self._initializer()
        small_init = init is None or isinstance(init[1], bytes)
        data = uuid.uuid4().bytes + dumps((fn_data, mode, options.retries, retry_on,
                                           init if small_init else None, options.timeout,
                                           status))
        arg: Any = data
        if len(data) > INLINE_BYTES or not small_init:
            arg = (data[:16], data if len(data) <= INLINE_BYTES else ray.put(data),
                   None if small_init else init)
        spec = _Spec(fn_data, options, arg, remote)
        if len(self._specs) >= SPECS_MAX:
            self._specs.clear()
        self._specs[(id(fn_data), id(options), mode, status)] = spec
        return spec

    def _call(self, runtime: _Runtime, options: TaskOptions, status: bool
              ) -> tuple[Any, Embedded]:
        """The remote function with Ray options for ``options``, and the pickled retry_on."""
        call = self._calls.get((options, status))
        if call is None:
            ray_options: dict[str, Any] = {
                "num_cpus": options.cpus, "max_retries": LOST_WORKER_RETRIES,
                "retry_exceptions": False,
            }
            if status:
                ray_options["num_returns"] = 2
            if options.gpus:
                ray_options["num_gpus"] = options.gpus
            if options.memory is not None:
                ray_options["memory"] = options.memory
            if options.resources:
                ray_options["resources"] = dict(options.resources)
            if self._runtime_env:
                ray_options["runtime_env"] = self._runtime_env
            retry_on = Embedded(dumps_value(options.retry_on, "the retry_on exception classes"))
            call = self._calls[(options, status)] = (runtime.remote.options(**ray_options),
                                                     retry_on)
        return call

    def _initializer(self) -> tuple[str, Any] | None:
        """``(token, initializer pickle)`` for :func:`_run_task`, or None without one."""
        data = self.init_data
        if data is None:
            return None
        with self._lock:
            if self._init is None:
                self._init = (uuid.uuid4().hex,
                              data if len(data) <= INLINE_BYTES else ray.put(data))
            return self._init


# -- the process's one Ray -------------------------------------------------------------
class _Runtime:
    """Our use of the process's Ray, shared by every RayBackend and counted.

    ``target`` is the address connected to (None: the private local Ray); ``ours``
    says we called ``ray.init`` and so call ``ray.shutdown``. All its state is
    guarded by the module's ``_lock``.
    """

    def __init__(self, target: str | None, ours: bool) -> None:
        self.target = target
        self.ours = ours
        self.users = 0
        self.closed = False
        self.closing = False  # no users left; close when the last pending task finishes
        self.pending: set[Future[Any]] = set()
        self.unread: weakref.WeakSet[Future[Any]] = weakref.WeakSet()  # values still in Ray
        #: Futures not watched yet, oldest first: ``(submitted at, weak reference)``.
        self.unwatched: collections.deque[tuple[float, weakref.ref[_RayFuture[Any]]]] = (
            collections.deque()
        )
        self.watch_lock = threading.Lock()  # orders watching against closing
        self.remote = ray.remote(_run_task)
        self.board = signals.CancelBoard()
        self.completer = _Completer(self.complete, self.sweep, self.board)
        self._nodes: list[dict[str, float]] = []
        self._nodes_at = -math.inf

    @property
    def where(self) -> str:
        if not self.ours:
            return "the Ray this program started with ray.init()"
        return self.target or "a private local Ray on 127.0.0.1"

    def track(self, future: _RayFuture[Any]) -> None:
        """A submitted task: pending until done, watched once something waits for it."""
        with _lock:
            self.pending.add(future)
        self.unwatched.append((time.monotonic(), weakref.ref(future)))

    def watch(self, future: _RayFuture[Any]) -> None:
        """Have ``future`` completed as soon as its task finishes."""
        with self.watch_lock:
            if not self.closed:  # else Ray may be stopped: no more Ray calls
                self.completer.watch(future)

    def sweep(self) -> None:
        """Watch the futures nothing has waited for within WATCH_AFTER seconds.

        So a future nobody reads still completes and lets go of its ObjectRef (Ray then
        frees the value), and the tasks behind ``shutdown(wait=False)`` end the runtime.
        """
        now = time.monotonic()
        unwatched = self.unwatched
        while unwatched and (self.closing or now - unwatched[0][0] > WATCH_AFTER):
            try:
                _, ref = unwatched.popleft()
            except IndexError:  # cleared by _close meanwhile
                return
            future = ref()
            if future is None or future._watched or future._state == _FINISHED:
                continue
            if future._fetching and not self.closing:  # a fetch waits for it: look again later
                unwatched.append((now, ref))
                continue
            future._watch()

    def unfinished(self, backend: RayBackend) -> list[Future[Any]]:
        with _lock:
            return [future for future in self.pending if future._backend is backend]

    def complete(self, future: Future[Any], error: BaseException | None) -> None:
        """Complete ``future``, whose ObjectRef is ready (``error``: Ray could not wait)."""
        with _lock:
            self.pending.discard(future)
            close = self.closing and not self.pending
        if future.cancelled():  # its task is over (skipped or not): off the board
            self.board.discard(future.handle.task_id().hex())
        failure = None
        status = getattr(future, "_status", None)
        if error is None and status is not None:
            future._status = None  # type: ignore[attr-defined]
            try:
                ray.get(status, timeout=10)  # tiny, and ready: raises if the task failed
            except rex.RayTaskError as err:
                failure = _task_error(err, future.handle)
            except rex.RayError as err:  # not the task's own failure (a lost worker)
                error = err
        try:
            if failure is not None:
                future.partial = failure.partial
                future.set_remote_exception(failure.exc, failure.tb)
            elif error is None:
                future.set_serialized_result(future.handle, _load)
                self.unread.add(future)
            else:
                future.set_exception(_engine_error(error, getattr(future, "_fn", None)))
        except cf.InvalidStateError:  # failed by an exiting interpreter meanwhile
            pass
        if close:
            _close(self)

    def loaded(self, future: Future[Any], value: Any) -> None:
        """Complete ``future`` with its value, fetched by :meth:`RayBackend.fetch`."""
        try:
            future.set_result(value)
        except cf.InvalidStateError:  # completed by the completer meanwhile
            future.set_loaded(value)
            return
        with _lock:
            self.pending.discard(future)
            close = self.closing and not self.pending
        if close:
            _close(self)

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
            if any(all(node.get(name, 0.0) >= amount for name, amount in needs.items())
                   for node in self.nodes(max_age)):
                return True
        return False

    def largest_offer(self, needs: dict[str, float]) -> str:
        best = {name: max((node.get(name, 0.0) for node in self.nodes()), default=0.0)
                for name in ("CPU", "GPU", "memory", *needs)}
        return "the most any node has is " + _describe_resources(best)


_lock = threading.RLock()
_current: _Runtime | None = None
_exit_hook_registered = False


def _acquire(target: str | None, workers: int | None, timeout: float) -> _Runtime:
    """The process's runtime for ``target``, started or connected on first need."""
    global _current
    with _lock:
        runtime = _current
        if runtime is None or runtime.closed:
            runtime = _current = _open(target, workers, timeout)
        elif runtime.ours and runtime.target != target:
            want = target or "a private local Ray"
            raise InvalidOptionError(
                f"this process already uses {runtime.where} through another 'ray' executor, "
                f"and Ray allows one connection per process, so it cannot also use {want}; "
                "shut the other ray executors down first, or give them the same address"
            )
        runtime.users += 1
        runtime.closing = False
        return runtime


def _release(runtime: _Runtime) -> None:
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


def _close(runtime: _Runtime, *, exiting: bool = False) -> None:
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
        runtime.board.close()
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


def _open(target: str | None, workers: int | None, timeout: float) -> _Runtime:
    global _exit_hook_registered
    if ray.is_initialized():  # the program's own ray.init(): use it, never stop it
        runtime = _Runtime(None, ours=False)
    elif target is None:
        _start_local(workers)
        runtime = _Runtime(None, ours=True)
    else:
        _connect(target, timeout)
        runtime = _Runtime(target, ours=True)
    if not _exit_hook_registered:
        _exit_hook_registered = True
        atexit.register(_at_exit)
    return runtime


def _start_local(workers: int | None) -> None:
    """Start the private local Ray, every process of it bound to 127.0.0.1."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    with _loopback_only():
        ray.init(address="local", num_cpus=workers or os.cpu_count() or 1,
                 include_dashboard=False, logging_level=logging.ERROR)


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Make Ray choose 127.0.0.1 as this node's address while it starts.

    Ray maps ``127.0.0.1`` given as ``_node_ip_address`` to the machine's network
    address unless clustering is disabled (its ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``
    setting, read at import), in which case it uses the loopback address; we disable
    it only while our node starts, so a later connection to a cluster is unaffected.
    """
    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def _connect(address: str, timeout: float) -> None:
    """``ray.init(address)`` within ``timeout`` seconds, or ClusterConnectionError.

    Ray retries an unreachable address for minutes, so we first check that something
    listens there, then let ``ray.init`` run in a thread we stop waiting for in time.
    """
    deadline = time.monotonic() + timeout
    check_listening(address, timeout,
                    "Check that the cluster runs (`ray status` on its head) and the address")
    has_token = _use_available_token()
    outcome: list[BaseException | None] = []
    abandoned = threading.Event()

    def connect() -> None:
        try:
            ray.init(address=address, logging_level=logging.ERROR)
        except BaseException as exc:
            outcome.append(exc)
            return
        outcome.append(None)
        if abandoned.is_set():  # too late: the caller has given up on this connection
            ray.shutdown()

    thread = threading.Thread(target=connect, name="unidist-api-ray-connect", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    if not outcome:
        abandoned.set()
        raise ClusterConnectionError(
            f"could not connect to the Ray cluster at {address!r} within {timeout:g} s: "
            "something listens there, but it did not complete Ray's handshake. Check the "
            "address (the head's GCS port, 6379 by default) and, if the cluster uses token "
            "authentication, the token; or raise connect_timeout"
        )
    error = outcome[0]
    if error is None:
        return
    if isinstance(error, ValueError) and "ray[client]" in str(error):
        raise BackendNotInstalledError(
            f"connecting to {address!r} needs the Ray Client: "
            'pip install "ray[client]"'
        ) from error
    if _is_auth_failure(error):
        problem = ("refused our token" if has_token else
                   "requires token authentication, and no token was found")
        raise ClusterConnectionError(
            f"the Ray cluster at {address!r} {problem}. Provide the cluster's token "
            "(`ray get-auth-token` on the head prints it) in RAY_AUTH_TOKEN, in a file "
            "named by RAY_AUTH_TOKEN_PATH, or in ~/.ray/auth_token"
        ) from error
    hint = ("; it looks like a Dask scheduler address: use the dask backend for it"
            if address.startswith(("tcp://", "tls://")) else "")
    raise ClusterConnectionError(
        f"could not connect to the Ray cluster at {address!r}: {error}{hint}. Ray takes "
        "'host:port' (the head's GCS port, 6379 by default), 'auto' or 'ray://host:10001'"
    ) from error


def _use_available_token() -> bool:
    """Send our token to the cluster when one is available; whether one is.

    Ray does this by itself only for ``address="auto"``; with an explicit address it
    connects without the token and fails with a misleading "Failed to connect" when
    the cluster requires one (``ray start --head`` does since Ray 2.60). A token sent
    to a cluster without authentication is ignored. ``RAY_AUTH_MODE``, when set, wins.
    """
    try:
        from ray._private.authentication import authentication_token_setup as setup
    except ImportError:  # a Ray without token authentication
        return False
    log = logging.getLogger(setup.__name__)
    level = log.level
    log.setLevel(logging.ERROR)  # Ray announces it with a warning
    try:
        return bool(setup.maybe_enable_token_auth_if_token_available(warn_if_disabled=False))
    finally:
        log.setLevel(level)


def _is_auth_failure(error: BaseException) -> bool:
    """Whether ``ray.init`` failed because the cluster refused us (no or a wrong token)."""
    seen: BaseException | None = error
    while seen is not None:
        if "InvalidAuthToken" in str(seen) or type(seen).__name__ == "AuthenticationError":
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# -- completion --------------------------------------------------------------------------
class _Completer:
    """One thread completing futures as their ObjectRefs become ready.

    ``ObjectRef._on_ready`` calls back on Ray's I/O thread without fetching the value;
    user code (a done callback may call ``result()``, i.e. ``ray.get``) must not run
    there, so the callback only queues the future for this thread. Every SWEEP_EVERY
    seconds the thread also calls ``sweep``.
    """

    def __init__(self, complete: Callable[[Future[Any], BaseException | None], None],
                 sweep: Callable[[], None], board: signals.CancelBoard) -> None:
        self._complete = complete
        self._sweep = sweep
        self._board = board
        self._queue: queue.SimpleQueue[tuple[Future[Any] | None, BaseException | None] | None] = (
            queue.SimpleQueue()
        )
        threading.Thread(target=self._run, name="unidist-api-ray-completer", daemon=True).start()

    def watch(self, future: Future[Any]) -> None:
        ref = getattr(future, "_status", None) or future.handle  # ready together
        try:
            ref._on_ready(functools.partial(self._ready, future))
        except Exception as exc:  # Ray cannot wait for it (e.g. stopped by the program)
            self._ready(future, exc)

    def _ready(self, future: Future[Any], error: BaseException | None) -> None:
        self._queue.put((future, error))

    def wake(self) -> None:
        """Sweep now (and post the cancel board if it changed)."""
        self._queue.put((None, None))

    def stop(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        swept = time.monotonic()
        while True:
            try:
                item = self._queue.get(timeout=SWEEP_EVERY)
            except queue.Empty:
                item = (None, None)
            if item is None:
                return
            future, error = item
            if future is not None:
                self._complete(future, error)
            if self._board.dirty and self._queue.empty():  # one write for a burst of changes
                self._board.post()
            if future is None or time.monotonic() - swept > SWEEP_EVERY:
                self._sweep()
                swept = time.monotonic()


_FINISHED = cf._base.FINISHED
_PENDING = cf._base.PENDING
T = TypeVar("T")


class _RayFuture(Future[T]):
    """A task's future, watched (``_on_ready``) only once something waits for it.

    ``result()`` and ``gather`` wait through :meth:`RayBackend.fetch`, in the caller's
    thread, and need no watcher; whatever else waits (``done()``, ``exception()``,
    ``add_done_callback``, ``await``, and ``concurrent.futures.wait``/``as_completed``,
    which install their waiters in ``_waiters``) watches the future first. The sweep
    watches the rest within WATCH_AFTER seconds.
    """

    def __init__(self, backend: RayBackend, runtime: _Runtime) -> None:
        self._runtime = runtime
        self._watched = False
        self._fetching = False  # a fetch waits for it (the sweep leaves it alone)
        self._fn: Callable[..., Any] | None = None  # the task's function, to name it in errors
        self._inputs: list[weakref.ref[_RayFuture[Any]]] = []  # its input futures (weakly)
        self._status: Any = None  # the status ObjectRef of a task reporting failures
        super().__init__(backend)

    def _watch(self) -> None:
        if not self._watched:
            self._watched = True
            self._runtime.watch(self)

    @property
    def _waiters(self) -> list[Any]:
        if not self._watched and self._state != _FINISHED:
            self._watch()
        return self._waiter_list

    @_waiters.setter
    def _waiters(self, waiters: list[Any]) -> None:
        self._waiter_list = waiters

    def done(self) -> bool:
        if self._state == _FINISHED:
            return True
        self._watch()
        return super().done()

    def result(self, timeout: float | None = None) -> T:
        if self._state == _PENDING and self._backend is not None:
            deadline = None if timeout is None else time.monotonic() + timeout
            self._backend.fetch([self], timeout)
            if deadline is not None:
                timeout = max(0.0, deadline - time.monotonic())
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state != _FINISHED:
            self._watch()
        return super().exception(timeout)

    def add_done_callback(self, fn: Callable[[cf.Future[T]], object]) -> None:
        if self._state != _FINISHED:
            self._watch()
        super().add_done_callback(fn)

    def _materialize(self) -> Any:
        try:
            return super()._materialize()
        except WorkerLostError as exc:  # mapped by _load, which cannot know the task's name
            cause = exc.__cause__
            if self._fn is None or not isinstance(cause, _LOST_WORKER):
                raise
            named = _engine_error(cause, self._lost_fn())
            with self._condition:
                self._exception = named
            raise named from cause

    def _lost_fn(self) -> Callable[..., Any] | None:
        """The function of the task that lost its worker: this one's, or a lost input's.

        Ray gives a task whose input was lost that input's error, which does not say
        whose it is; an input whose value is that error (asked without waiting) is it.
        """
        for ref in self._inputs:
            dep = ref()
            if dep is None or dep._fn is None or not ray.is_initialized():
                continue
            try:
                ray.get(dep.handle, timeout=0)
            except _LOST_WORKER:
                return dep._lost_fn()
            except Exception:  # the input is fine, failed otherwise, or not done
                continue
        return self._fn

    def __repr__(self) -> str:
        return super().__repr__().replace("<_RayFuture", "<ua.Future", 1)


if not hasattr(ray.ObjectRef, "_on_ready"):
    raise ImportError(
        f"the ray backend needs Ray >= 2.60 (ObjectRef._on_ready), found {ray.__version__}"
    )


def _load(ref: Any) -> Any:
    """A task's value, fetched on the first ``result()``; a failure as RemoteFailure."""
    if not ray.is_initialized():  # else ray.get would start or join some other Ray
        raise RemoteFailure(ExecutorShutdownError(
            "Ray was stopped (at interpreter exit) before this result was fetched"
        ))
    try:
        data = ray.get(ref)
    except rex.RayError as err:
        raise _task_error(err, ref) from None
    return load_result(data)


def _task_error(err: BaseException, ref: Any) -> RemoteFailure:
    """What ``ray.get`` raised, as the task's own failure or one of our errors."""
    if isinstance(err, rex.RayTaskError):
        cause = err.cause
        if isinstance(cause, _TaskFailed):
            return cause.failure(ref)
        if isinstance(cause, rex.RayError):  # e.g. an input of the task was lost
            return _task_error(cause, ref)
        if isinstance(cause, BaseException):  # Ray's own code on the worker failed
            return RemoteFailure(cause, str(err))  # Ray's text holds the remote traceback
    return RemoteFailure(_engine_error(err))


#: Ray's errors for a task whose worker (or node) died more often than max_retries allow.
_LOST_WORKER = (rex.WorkerCrashedError, rex.NodeDiedError, rex.LocalRayletDiedError,
                rex.OutOfMemoryError)


def _engine_error(err: BaseException, fn: Callable[..., Any] | None = None) -> BaseException:
    """A Ray failure that is not the task's own, as one of our errors (cause: Ray's).

    ``fn`` is the task's function, to name it (None where only the ObjectRef is known).
    """
    mapped: BaseException
    if isinstance(err, rex.TaskCancelledError):
        mapped = cf.CancelledError("Ray cancelled this task (or one of its inputs)")
    elif isinstance(err, _LOST_WORKER):
        mapped = worker_lost("?" if fn is None else task_name(fn), LOST_WORKER_RETRIES + 1,
                             f"ray: {type(err).__name__}")
    elif isinstance(err, rex.ObjectLostError):
        mapped = WorkerLostError(
            f"Ray lost a value this task needs, or its result, with the worker or node "
            f"holding it: {type(err).__name__}: {err}. Put the object again, or resubmit"
        )
    elif isinstance(err, rex.RaySystemError):
        mapped = ExecutorShutdownError(f"Ray stopped before this task finished: {err}")
    else:
        mapped = UnidistError(f"Ray could not run this task: {type(err).__name__}: {err}")
    mapped.__cause__ = err
    return mapped


class _Spec:
    """A task's fixed part: its function, options and mode, pickled once (in ``arg``)."""

    __slots__ = ("fn_data", "options", "arg", "remote")

    def __init__(self, fn_data: bytes, options: TaskOptions, arg: Any, remote: Any) -> None:
        self.fn_data, self.options, self.arg, self.remote = fn_data, options, arg, remote


# -- on the worker -------------------------------------------------------------------------
def _run_task(*args: Any) -> bytes | Packed | tuple[bytes, bytes | Packed]:
    """The one remote function: initializer, then the task, then its pickled value.

    A task asked to report failures (``status`` in its spec) returns an empty status
    value before it: the caller learns of a failure from that one, without the value.

    ``args`` are the spec, the payload and the inputs (a lone ``*args`` is what Ray
    checks the fastest at each call).
    """
    spec, payload, *inputs = args
    try:
        if signals.cancelled_here():
            raise cf.CancelledError("the caller cancelled this task before it started")
        fn_data, mode, retries, retry_on, init, timeout, status = _load_spec(spec)
        on_stuck = None
        if timeout is not None:
            key = signals.stuck_key()
            if signals.was_stuck(key):
                raise stuck_error(task_name(load_function(fn_data)), timeout)
            on_stuck = functools.partial(signals.mark_stuck_and_exit, key)
        if init is not None:
            _initialize(*init)
        value = run_native(fn_data, payload, mode, retries, retry_on, *inputs,
                           timeout=timeout, on_stuck=on_stuck)
    except (Exception, SystemExit) as exc:
        raise _TaskFailed.carrying(exc) from None
    try:
        data = pack(value)
    except Exception as exc:
        raise _TaskFailed.carrying(unpicklable_result(fn_data, value, exc)) from None
    return (b"", data) if status else data


_Fixed = tuple[bytes, int, int, tuple[type[BaseException], ...], Any, "float | None", bool]
_specs: dict[bytes, _Fixed] = {}  # by token: the specs this worker process has unpickled


def _load_spec(spec: Any) -> _Fixed:
    """A task's spec (see ``RayBackend._spec``), unpickled once per worker process.

    A large initializer travels beside the spec, and runs here.
    """
    data: Any
    if type(spec) is bytes:
        token, data = spec[:16], spec
    else:
        token, data, init = spec
        if init is not None:
            _initialize(*init)
    fixed = _specs.get(token)
    if fixed is None:
        if type(data) is not bytes:  # too large to go inline: read once from the object store
            data = ray.get(data)
        fixed = loads(memoryview(data)[16:])
        if len(_specs) >= SPECS_MAX:
            del _specs[next(iter(_specs))]
        _specs[token] = fixed
    return fixed


_initialized: set[str] = set()  # tokens of the executors whose initializer ran in this process


def _initialize(token: str, data: Any) -> None:
    if token not in _initialized:
        run_initializer(data if isinstance(data, bytes) else ray.get(data))
        _initialized.add(token)


class _TaskFailed(Exception):
    """A task's exception on its way through Ray, pickled by our cloudpickle.

    ``task`` is the failing task's id: a task that fails because an input failed
    carries that input's failure, whose batch results are not its own.
    """

    def __init__(self, data: bytes, task: str) -> None:
        super().__init__(data, task)
        self.data, self.task = data, task

    @classmethod
    def carrying(cls, exc: BaseException) -> _TaskFailed:
        state = exc.__dict__
        if "_ua_traceback" not in state:  # raised outside run_native (the initializer)
            state["_ua_traceback"] = "".join(traceback.format_exception(exc))
        try:
            data = dumps(exc)
            loads(data)
        except Exception:
            data = dumps(TaskError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"))
        return cls(data, ray.get_runtime_context().get_task_id() or "")

    def failure(self, ref: Any) -> RemoteFailure:
        exc = loads(self.data)
        tb, partial = failure_details(exc)
        if ref is None or ref.task_id().hex() != self.task:
            partial = None
        return RemoteFailure(exc, tb, partial)


# -- helpers ---------------------------------------------------------------------------------
_OPTION_OF = {"CPU": "cpus", "GPU": "gpus", "memory": "memory"}  # Ray's names: our options


def _needs(options: TaskOptions) -> dict[str, float]:
    """The Ray resources a task with ``options`` needs, by Ray's names."""
    needs: dict[str, float] = {"CPU": options.cpus, "GPU": options.gpus,
                               "memory": options.memory or 0}
    needs.update(options.resources or {})
    return {name: amount for name, amount in needs.items() if amount}


def _describe_resources(amounts: Mapping[str, float]) -> str:
    parts = []
    for name, amount in amounts.items():
        if name in ("memory", "object_store_memory"):
            parts.append(f"{name}={amount / 2**30:.1f} GiB")
        else:
            parts.append(f"{name}={amount:g}")
    return ", ".join(parts)
