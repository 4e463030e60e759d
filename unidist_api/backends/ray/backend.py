"""The ``ray`` backend: submit, put, cancel, fetch and shutdown on the process's Ray.

Tasks. All tasks are calls of one remote function, :func:`.worker._run_task` (created
once per runtime, with one ``.options()`` variant cached per distinct task options),
which runs :func:`~unidist_api.worker.run_native`. A call has as few arguments as Ray
can take cheaply (Ray serializes and checks each one, in Python, at every call): the
*spec*, the *payload* and the inputs. The spec is what all tasks of one function,
options and mode share, pickled once per executor: a 16-byte random token and the
pickle of ``(function pickle, mode, retries, retry_on, initializer)``; a worker
unpickles it once and then knows it by its token. Inline it is a few hundred bytes;
a larger one (a function with a large closure, an initializer over 64 KiB) goes to
the object store once, and a worker reads it there only when it does not know the
token yet. The payload is the call's own arguments, packed at submit
(:mod:`.data`). Futures and ``put`` handles among the arguments travel as top-level
``ObjectRef`` arguments, so Ray moves the values worker to worker; a future of another
backend is passed as its packed value. ``retries`` counts application errors inside
``run_native`` (per item, fresh copies of the arguments, ``retry_on`` filter), so Ray's
``retry_exceptions`` is off and its ``max_retries`` covers only lost workers:
``LOST_WORKER_RETRIES`` (3), the same limit as on every backend, after which the task
fails with ``WorkerLostError``. ``cpus``, ``gpus``, ``memory`` (bytes) and
``resources`` become Ray's ``num_cpus``, ``num_gpus``, ``memory`` and ``resources``; a
request no node of the cluster could ever satisfy is refused at submit.

Backend options:

- ``connect_timeout`` (seconds, default 30): how long connecting to an address may
  take before :class:`~unidist_api.errors.ClusterConnectionError` (which names the
  address) is raised; an address nothing listens on fails at once.
- ``runtime_env`` (dict): Ray's runtime environment for this executor's tasks, e.g.
  ``{"env_vars": {"OMP_NUM_THREADS": "1"}}`` or ``{"pip": [...]}``; Ray runs such
  tasks in worker processes of their own.
- ``dashboard`` (bool, default False): the private local Ray serves Ray's dashboard on
  127.0.0.1 (it needs ``ray[default]``; without it BackendNotInstalledError says so);
  its URL is logged and in ``describe()``. Refused with an address: a cluster has its
  own dashboard.

Starting, connecting to or joining the process's Ray logs one INFO line on the
``unidist_api`` logger: where, the nodes, their CPUs and memory, the dashboard.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ray
import ray.exceptions as rex

from ...data import Embedded
from ...errors import BrokenExecutorError, InvalidOptionError, UnsupportedOptionError
from ...futures import Future, _Serialized
from ...serialization import FunctionCache, dumps, dumps_value
from ...task import TaskOptions
from ...worker import InitializerFailed
from ..admission import Gate
from ..base import (
    LOST_WORKER_RETRIES,
    Backend,
    Task,
    bool_option,
    packed_value,
    positive_option,
    prepare_native,
)
from . import data
from .complete import RayFuture, loaded
from .connect import check_dashboard
from .errors import initializers
from .runtime import Runtime, acquire, describe_resources, release
from .worker import SPECS_MAX

__all__ = ["RayBackend"]

INLINE_BYTES = 64 * 1024  # a larger function or initializer pickle goes to the object store once
#: A fetch of many futures waits for them in this many parts, loading (copying) each
#: part's values while the tasks of the next ones still run; one ``ray.get`` costs ~20 us.
FETCH_PARTS = 8
_FINISHED = cf._base.FINISHED
_PENDING = cf._base.PENDING


class RayBackend(Backend):
    name = "ray"
    honours_timeout = True
    takes_address = True
    option_names = frozenset({"connect_timeout", "runtime_env", "dashboard"})
    fetches = True

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
        self.connect_timeout = positive_option("ray", options, "connect_timeout", 30.0)
        runtime_env = options.get("runtime_env")
        if runtime_env is not None and not isinstance(runtime_env, Mapping):
            raise InvalidOptionError(
                f"runtime_env must be a dict (Ray's runtime environment), got {runtime_env!r}"
            )
        self._runtime_env = dict(runtime_env) if runtime_env else None
        self._dashboard = bool_option("ray", options, "dashboard", False)
        if self._dashboard:
            if self.target() is not None:
                raise InvalidOptionError(
                    "dashboard=True starts a dashboard with the private local Ray, but this "
                    f"executor connects to the Ray cluster at {self.target()!r}, whose "
                    "dashboard is its own (`ray start --head --include-dashboard=true`); "
                    "drop the option"
                )
            check_dashboard()
        self._address: str | None = None  # where the Ray we use runs, once started
        self._lock = threading.Lock()
        self._runtime: Runtime | None = None
        self._functions = FunctionCache()
        self._calls: dict[tuple[TaskOptions, bool], tuple[Any, Embedded]] = {}
        self._specs: dict[tuple[int, int, int, bool], _Spec] = {}
        self._init: tuple[str, Any] | None = None  # (token, pickle or its ObjectRef)
        #: Holds tasks beyond ``workers`` and starts them by priority, once a task has one.
        self._gate = Gate(lambda: self.workers, self._in_engine)

    # -- where it runs -----------------------------------------------------------------
    def target(self) -> str | None:
        """The address to connect to (ours, else ``RAY_ADDRESS``); None: a private Ray."""
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        return None if address == "local" else address

    def _get_runtime(self) -> Runtime:
        runtime = self._runtime
        if runtime is None:
            with self._lock:
                if self._runtime is None:
                    self._runtime = acquire(
                        self.target(), self._workers, self.connect_timeout, self._dashboard
                    )
                    self._address = self._runtime.address
                runtime = self._runtime
        return runtime

    def engine_address(self) -> str | None:
        return self._address or self.target()

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
            "resources": describe_resources(totals),
            "dashboard": runtime.dashboard
            or (
                "off (turn it on with dashboard=True)"
                if runtime.ours and runtime.target is None
                else "none known"
            ),
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
            asked = ", ".join(
                f"{_OPTION_OF.get(name, name)}={amount!r}" for name, amount in needs.items()
            )
            raise UnsupportedOptionError(
                f"the task asks for {asked}, but no node of {runtime.where} could ever "
                "run it: "
                f"{runtime.largest_offer(needs)}. Ask for less, or add a node that has it"
            )

    def submit(self, task: Task) -> Future[Any]:
        fn_data, packed, inputs = prepare_native(task, self._functions)
        payload = data.for_ray(packed)
        runtime = self._get_runtime()
        future: RayFuture[Any] = RayFuture(self, runtime)
        priority = task.options.priority
        if self._gate.engaged or priority:  # admitted by priority (backends/admission.py)
            self._gate.admit_when_ready(
                future,
                inputs,
                priority,
                functools.partial(self._send, runtime, future, task, fn_data, payload, inputs),
            )
        else:
            self._send(runtime, future, task, fn_data, payload, inputs)
        return future

    def _send(
        self,
        runtime: Runtime,
        future: RayFuture[Any],
        task: Task,
        fn_data: bytes,
        payload: Any,
        inputs: list[Future[Any]],
    ) -> None:
        """Hand the task to Ray; the future follows its ObjectRef from now on."""
        if future._state != _PENDING:  # cancelled while it waited for its turn
            return
        if self.broken is not None:  # broken while it waited: its turn never comes
            future.set_exception(self.broken_error())
            return
        if inputs:
            try:
                handles = [self._input(runtime, dep) for dep in inputs]
            except BaseException as exc:  # an input of another backend failed: so does this task
                future.set_exception(exc)
                return
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
            future._inputs = [weakref.ref(dep) for dep in inputs if isinstance(dep, RayFuture)]
        runtime.track(future)

    def put(self, obj: Any) -> Future[Any]:
        wire = data.packed_object(obj)  # first: an unpicklable object fails before Ray starts
        runtime = self._get_runtime()
        future: Future[Any] = Future(self, handle=data.store(wire))
        future.set_serialized_result(future.handle, data.load)
        runtime.unread.add(future)
        return future

    def cancel(self, future: Future[Any]) -> bool:
        """Claim the task for the caller: True if no worker has started it (:mod:`.cancel`).

        The future's own runtime: ``shutdown`` has let go of ``self._runtime`` when it
        cancels what waits.
        """
        if future.handle is None and self._gate.withdraw(future):
            return True  # it waited for its turn (or its inputs) in the gate: never sent
        runtime: Runtime | None = getattr(future, "_runtime", None)
        if (
            runtime is None
            or runtime.closed
            or not isinstance(future, RayFuture)
            or future.handle is None
            or future._state != _PENDING
        ):
            return False
        return runtime.claims.cancel(future.handle.task_id().hex())

    def running(self, future: Future[Any]) -> bool:
        runtime: Runtime | None = getattr(future, "_runtime", None)
        return (
            runtime is not None
            and not runtime.closed
            and future.handle is not None
            and future._state == _PENDING
            and runtime.claims.started(future.handle.task_id().hex())
        )

    def fetch(self, futures: Sequence[Future[Any]], timeout: float | None) -> None:
        """Wait for ``futures`` and load their values with one ``ray.get``, in this thread.

        A failure (a task's, a timeout, Ray stopping) leaves the futures to the normal
        path, which raises each task's own exception from ``result()``.
        """
        runtime = self._runtime
        held = [future for future in futures if future._state == _PENDING and future.handle is None]
        if held:  # waiting in the gate: wait until they are sent, then fetch as the others
            deadline = None if timeout is None else time.monotonic() + timeout
            cf.wait(held, timeout)
            if deadline is not None:
                timeout = max(0.0, deadline - time.monotonic())
            if any(future.handle is None and future._state == _PENDING for future in held):
                return
        refs: list[Any] = []
        loading: list[Future[Any]] = []
        running: list[RayFuture[Any]] = []  # not finished: no watcher needed while we wait
        for future in futures:
            if future._state == _PENDING and isinstance(future, RayFuture):
                ref = future.handle
                running.append(future)
                future._fetching = True
            else:
                result = future._result
                if type(result) is not _Serialized or result.loads is not data.load:
                    continue  # loaded already, or failed
                ref = result.data
            refs.append(ref)
            loading.append(future)
        try:
            if not refs or runtime is None or runtime.closed:
                cf.wait(futures, timeout)
                return
            deadline = None if timeout is None else time.monotonic() + timeout
            step = -(-len(refs) // FETCH_PARTS)
            for start in range(0, len(refs), step):  # load a part while the next ones run
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    values = ray.get(refs[start : start + step], timeout=left)
                except rex.GetTimeoutError:
                    return
                except Exception:  # a task failed, or Ray stops: each future's own path tells
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    cf.wait(futures, left)
                    return
                for future, value in zip(loading[start : start + step], values, strict=True):
                    try:
                        value = data.loaded(value)
                    except Exception:  # unpicklable here: result() raises SerializationError
                        continue
                    loaded(runtime, future, value)
                del values  # lets Ray unpin what was copied
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
        held = self._gate.held()  # waiting for their turn: sent as the tasks before them end
        mine = runtime.unfinished(self)
        if cancel_futures:
            for future in [*held, *mine]:  # those in the gate first: none is sent meanwhile
                future.cancel()
        elif not wait:
            self._gate.flush()  # to Ray now, in priority order
        if wait:
            cf.wait([*held, *mine])
        self._calls.clear()
        self._specs.clear()
        self._functions.clear()
        release(runtime)

    # -- internals ---------------------------------------------------------------------
    def _in_engine(self) -> list[Future[Any]]:
        """This executor's unfinished futures whose tasks Ray has (for the gate)."""
        runtime = self._runtime
        return [] if runtime is None else runtime.unfinished(self)

    def _input(self, runtime: Runtime, dep: Future[Any]) -> Any:
        """What stands for an input future among the task's arguments."""
        if (
            isinstance(dep._backend, RayBackend)
            and dep._backend._runtime is runtime
            and dep.handle is not None
        ):
            return dep.handle  # an ObjectRef: Ray resolves it on the worker
        return data.for_ray(packed_value(dep))  # raises the input's exception if it failed

    def _spec(
        self, runtime: Runtime, fn_data: bytes, options: TaskOptions, mode: int, status: bool
    ) -> _Spec:
        """What every task of this function, options and mode passes to ``_run_task``.

        A token (16 random bytes) and the pickle of ``(fn_data, mode, retries, retry_on,
        initializer, timeout, claims, status)``, which a worker unpickles once and then knows
        by the token. Inline when small; else the token, the pickle's ObjectRef (put once; a
        worker reads it only when it does not know the token) and the initializer's
        ``(token, ObjectRef)``. With ``status`` the task returns a tiny status value first.
        """
        remote, retry_on = self._call(runtime, options, status)
        init = self._initializer()
        small_init = init is None or isinstance(init[1], bytes)
        spec_data = uuid.uuid4().bytes + dumps(
            (
                fn_data,
                mode,
                options.retries,
                retry_on,
                init if small_init else None,
                options.timeout,
                runtime.claims.spec,
                status,
            )
        )
        arg: Any = spec_data
        if len(spec_data) > INLINE_BYTES or not small_init:
            arg = (
                spec_data[:16],
                spec_data if len(spec_data) <= INLINE_BYTES else ray.put(spec_data),
                None if small_init else init,
            )
        spec = _Spec(fn_data, options, arg, remote)
        if len(self._specs) >= SPECS_MAX:
            self._specs.clear()
        self._specs[(id(fn_data), id(options), mode, status)] = spec
        return spec

    def _call(self, runtime: Runtime, options: TaskOptions, status: bool) -> tuple[Any, Embedded]:
        """The remote function with Ray options for ``options``, and the pickled retry_on.

        With ``status`` the task returns two values: a tiny status first (see
        :mod:`.complete`), then the task's value.
        """
        call = self._calls.get((options, status))
        if call is None:
            ray_options: dict[str, Any] = {
                "num_cpus": options.cpus,
                "max_retries": LOST_WORKER_RETRIES,
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
            call = self._calls[(options, status)] = (
                runtime.remote.options(**ray_options),
                retry_on,
            )
        return call

    def _initializer(self) -> tuple[str, Any] | None:
        """``(token, initializer pickle)`` for ``_run_task``, or None without one."""
        init_data = self.init_data
        if init_data is None:
            return None
        with self._lock:
            if self._init is None:
                self._init = (
                    uuid.uuid4().hex,
                    init_data if len(init_data) <= INLINE_BYTES else ray.put(init_data),
                )
                initializers[self._init[0]] = self
            return self._init

    def break_executor(self, failed: InitializerFailed) -> BrokenExecutorError:
        """As every backend, and fail this executor's unfinished tasks now.

        They would fail by themselves only on workers whose initializer failed, and only
        once loaded; each is claimed too (:mod:`.cancel`), so a worker that has not started
        it skips it.
        """
        first = self.broken is None
        error = super().break_executor(failed)
        runtime = self._runtime
        if first and runtime is not None:  # in a thread: we may be in a future's result(),
            threading.Thread(
                target=self._fail_unfinished,
                args=(runtime,),
                daemon=True,
                name="unidist-api-ray-broken",
            ).start()  # holding its lock
        return error

    def _fail_unfinished(self, runtime: Runtime) -> None:
        for future in runtime.unfinished(self):
            if future.handle is not None and not runtime.closed:
                runtime.claims.cancel(future.handle.task_id().hex())
            with contextlib.suppress(cf.InvalidStateError):
                future.set_exception(self.broken_error())
            if runtime.untrack(future):
                runtime.close()


class _Spec:
    """A task's fixed part: its function, options and mode, pickled once (in ``arg``)."""

    __slots__ = ("fn_data", "options", "arg", "remote")

    def __init__(self, fn_data: bytes, options: TaskOptions, arg: Any, remote: Any) -> None:
        self.fn_data, self.options, self.arg, self.remote = fn_data, options, arg, remote


_OPTION_OF = {"CPU": "cpus", "GPU": "gpus", "memory": "memory"}  # Ray's names: our options


def _needs(options: TaskOptions) -> dict[str, float]:
    """The Ray resources a task with ``options`` needs, by Ray's names."""
    needs: dict[str, float] = {
        "CPU": options.cpus,
        "GPU": options.gpus,
        "memory": options.memory or 0,
    }
    needs.update(options.resources or {})
    return {name: amount for name, amount in needs.items() if amount}
