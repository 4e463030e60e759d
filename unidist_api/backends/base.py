"""The backend interface: the small contract every engine implements.

A backend does five things: ``submit`` one task, ``put`` one object, ``cancel`` a
task that has not started, report whether a task is ``running``, and ``shutdown``.
It completes the :class:`~unidist_api.futures.Future` it returns from its engine's
own completion mechanism, so waiting (``result``, ``wait``, ``as_completed``) is the
standard ``concurrent.futures`` machinery. ``map``, ``pipeline`` and ``reduce`` live
once, in the facade, on top of this. One optional hook is for speed: ``fetch``
waits for many futures and loads their values in one engine call (``gather``, and
``result()`` on an unfinished future, use it when a backend sets ``fetches``).
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import os
import random
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..arguments import replace_futures
from ..data import Packed, load_result
from ..errors import (
    BrokenExecutorError,
    ClusterConnectionError,
    InvalidOptionError,
    UnsupportedOptionError,
    WorkerLostError,
)
from ..futures import Future
from ..serialization import FunctionCache, dumps_value, loads, pack_arguments, pack_value, task_name
from ..sizes import DEFAULT_BUDGET
from ..task import DEFAULT_OPTIONS, TaskOptions
from ..worker import CALL, OK, InitializerFailed, Input, Outcome, failure_details

__all__ = [
    "Backend",
    "Task",
    "complete",
    "resolve_arguments",
    "prepare_native",
    "fail_from_engine",
    "positive_option",
    "bool_option",
    "check_listening",
    "LOST_WORKER_RETRIES",
    "task_name",
    "worker_lost",
    "packed_value",
    "broken_error",
    "hash_seed",
]

#: How often a task whose worker process died is run again before it fails with
#: WorkerLostError, on every backend: Ray's and Dask's own default. Independent of the
#: ``retries`` task option, which counts exceptions the task raises (docs/reliability.md).
LOST_WORKER_RETRIES = 3


def hash_seed() -> str:
    """One ``PYTHONHASHSEED`` for all the worker processes of an executor: the caller's
    own if it set one, else one drawn now, so ``hash()`` of a str puts a key in the same
    bucket in every worker (as Dask's nannies do with theirs)."""
    seed = os.environ.get("PYTHONHASHSEED", "")
    if seed.isdigit():
        return seed
    return str(random.SystemRandom().randrange(1, 2**32))


@dataclass(slots=True)
class Task:
    """One unit of work as the facade hands it to a backend.

    ``mode`` is :data:`~unidist_api.worker.CALL` for ``fn(*args, **kwargs)`` or a batch
    mode (``args[0]`` is a list of items). ``deps`` are the futures found inside the
    arguments (empty when there are none), found once by the facade. ``report_failure``
    asks that a failure be known when the future completes without its value being
    loaded (a pipeline's middle stages, reduce: values that stay on the workers): a
    backend that otherwise learns of failures only on loading (ray) then pays a little
    per task for it.
    """

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: TaskOptions = DEFAULT_OPTIONS
    mode: int = CALL
    deps: list[Future[Any]] = field(default_factory=list)
    report_failure: bool = False


#: Options every backend accepts: ``memory_budget`` (bytes; default 64 MiB), what ``map``
#: and ``pipeline`` may hold in the caller: input read and not yet yielded, results waiting.
COMMON_OPTIONS = frozenset({"memory_budget"})


class Backend(ABC):
    """Base class of backends; subclasses live in one module each under ``backends/``."""

    #: The registry name, e.g. ``"local"``.
    name: ClassVar[str]
    #: Names of the backend options (``Executor(backend, **options)``) this backend accepts.
    option_names: ClassVar[frozenset[str]] = frozenset()
    #: Whether ``address=`` (a running cluster to connect to) means anything here.
    takes_address: ClassVar[bool] = False
    #: Whether :meth:`fetch` beats waiting on each future (engines with an object store).
    fetches: ClassVar[bool] = False
    #: Whether tasks get their ``timeout`` option on the worker (``run_pickled``'s
    #: ``timeout``); without it, ``timeout`` is refused at submit rather than ignored.
    honours_timeout: ClassVar[bool] = False

    def __init__(
        self,
        *,
        address: str | None,
        workers: int | None,
        initializer: Callable[..., Any] | None,
        initargs: tuple[Any, ...],
        options: Mapping[str, Any],
    ) -> None:
        unknown = sorted(set(options) - self.option_names - COMMON_OPTIONS)
        if unknown:
            accepted = ", ".join(sorted(self.option_names | COMMON_OPTIONS))
            raise InvalidOptionError(
                f"unknown option(s) {', '.join(unknown)} for backend {self.name!r}; "
                f"it accepts: {accepted}"
            )
        #: bytes ``map`` and ``pipeline`` may hold in the caller (docs/semantics.md)
        self.memory_budget = int(
            positive_option(self.name, options, "memory_budget", DEFAULT_BUDGET, integer=True)
        )
        self.address = address
        self.initializer = initializer
        self.initargs = initargs
        #: ``(initializer, initargs)`` pickled now, so an unpicklable one fails here.
        self.init_data = (
            dumps_value((initializer, initargs), "the initializer and its initargs")
            if initializer is not None
            else None
        )
        self.options = dict(options)
        self._workers = workers
        #: The initializer's exception once it failed in a worker: the executor is broken
        #: (:meth:`break_executor`), and ``Runner.check_open`` refuses every new call.
        self.broken: BaseException | None = None

    @property
    def workers(self) -> int:
        """How many tasks can run at once (sizes the default buffers of map/pipeline)."""
        return self._workers or os.cpu_count() or 1

    def check_options(self, options: TaskOptions) -> None:
        """Refuse, at submit time, task options this backend cannot honour.

        The default honours ``retries``/``retry_on``, ``timeout`` (with
        ``honours_timeout``) and plain one-CPU tasks; engines that schedule by resources
        override this.
        """
        if options is DEFAULT_OPTIONS:
            return
        if options.timeout is not None and not self.honours_timeout:
            raise UnsupportedOptionError(
                f"the task option timeout={options.timeout!r} is not supported by the "
                f"{self.name!r} backend; remove it, or use a backend that honours it "
                "(serial, local, dask, ray)"
            )
        if options.gpus > 0:
            raise UnsupportedOptionError(
                f"the task asks for gpus={options.gpus!r}, but the {self.name!r} backend "
                "has no GPUs to give; use the ray or dask backend on a cluster with GPUs"
            )
        if options.cpus > 1 or options.memory is not None or options.resources:
            raise UnsupportedOptionError(
                f"the task asks for cpus={options.cpus!r}, memory={options.memory!r}, "
                f"resources={options.resources!r}; the {self.name!r} backend runs every task "
                "on one CPU of one worker and schedules no other resources; use the ray or "
                "dask backend for resource requests"
            )

    @abstractmethod
    def submit(self, task: Task) -> Future[Any]:
        """Start ``task`` (after its ``deps`` finish) and return its future at once."""

    @abstractmethod
    def put(self, obj: Any) -> Future[Any]:
        """Store ``obj`` once; the returned handle may be passed to many tasks."""

    def cancel(self, future: Future[Any]) -> bool:
        """Stop ``future``'s task if it has not started; False if it cannot be stopped."""
        return True

    def running(self, future: Future[Any]) -> bool:
        """Whether ``future``'s task is executing now, as far as the engine tells."""
        return False

    def fetch(self, futures: Sequence[Future[Any]], timeout: float | None) -> None:
        """Wait until ``futures`` (all of this backend) are done, or ``timeout`` passes.

        A backend that sets ``fetches`` overrides this to wait and load the values in
        bulk, in the calling thread (``Future.set_loaded``), saving a thread hop and a
        round trip per future; a failed task is left for ``result()`` to raise.
        """
        cf.wait(futures, timeout)

    def engine_address(self) -> str | None:
        """The address of the cluster in use: the configured one, or once started, that of
        the cluster started for us (None before; always None for engines without one).
        Reading it starts nothing (``Executor.address``)."""
        return self.address

    def describe(self) -> dict[str, Any]:
        """Facts for ``unidist-api info``: where it runs, workers, resources (may start it)."""
        return {"address": self.address or "this machine", "workers": self.workers}

    @abstractmethod
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop everything this backend started; a cluster we connected to is left running."""

    # -- a failed initializer breaks the executor (as a concurrent.futures pool) ------------
    def break_executor(self, failed: InitializerFailed) -> BrokenExecutorError:
        """The initializer failed in a worker (``failed``, from the engine): broken for good.

        The first failure is the one kept. Returns the error for a task pending at the
        break; a backend whose other pending tasks would not fail by themselves extends
        this to fail them.
        """
        if self.broken is None:
            self.broken = failed.error()
        return self.broken_error()

    def broken_error(self) -> BrokenExecutorError:
        """A new BrokenExecutorError ``from`` the initializer's exception (once broken)."""
        assert self.broken is not None
        return broken_error(self.name, self.initializer, self.broken)


def positive_option(
    backend: str, options: Mapping[str, Any], name: str, default: float, *, integer: bool = False
) -> float:
    """A backend option that must be a positive (finite) number, or an integer."""
    value = options.get(name, default)
    kind = int if integer else (int, float)
    if (
        isinstance(value, bool)
        or not isinstance(value, kind)
        or not math.isfinite(value)
        or value <= 0
    ):
        wanted = "a positive integer" if integer else "a positive number of seconds"
        if name == "memory_budget":
            wanted = "a positive number of bytes (an int, e.g. 256 * 2**20)"
        raise InvalidOptionError(f"the {backend} option {name} must be {wanted}, got {value!r}")
    return float(value)


def bool_option(backend: str, options: Mapping[str, Any], name: str, default: bool) -> bool:
    """A backend option that must be True or False."""
    value = options.get(name, default)
    if not isinstance(value, bool):
        raise InvalidOptionError(
            f"the {backend} option {name} must be True or False, got {value!r}"
        )
    return value


def check_listening(address: str, timeout: float, fix: str) -> None:
    """Raise ClusterConnectionError at once when nothing accepts a connection at ``address``.

    ``address`` is ``[scheme://]host:port``; other forms (``"auto"``) are left to the
    engine. Engines retry an unreachable address for minutes; this answers in a moment.
    """
    host, _, port = address.rpartition("://")[2].rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ClusterConnectionError(f"cannot reach {address!r}: {exc}. {fix}") from exc


def worker_lost(
    name: str, lost: int, how: str, limit: int = LOST_WORKER_RETRIES
) -> WorkerLostError:
    """The error for a task whose worker died ``lost`` times (``how``: the engine's word).

    ``limit``: how often a task is run again after a lost worker (a Dask cluster we
    connect to has its own setting).
    """
    return WorkerLostError(
        f"a worker process died while running task {name!r}: it was lost {lost} times, "
        f"and a task is run again at most {limit} times after losing its "
        f"worker ({how}). The task most likely crashes its worker (os._exit, a segfault "
        "in native code, running out of memory): fix that, or give the workers more "
        "memory. The retries option does not apply: it counts exceptions the task raises"
    )


def broken_error(
    backend: str, initializer: Callable[..., Any] | None, cause: BaseException
) -> BrokenExecutorError:
    """The error of an executor whose initializer raised ``cause``."""
    name = "?" if initializer is None else task_name(initializer)
    error = BrokenExecutorError(
        f"the initializer {name} raised {type(cause).__name__}: {cause}, so this {backend!r} "
        "executor is broken (as a concurrent.futures pool whose initializer fails): the "
        "tasks pending then failed without running, and it takes no new ones. Fix the "
        "initializer, then create a new executor"
    )
    error.__cause__ = cause
    return error


def complete(future: Future[Any], outcome: Outcome) -> None:
    """Complete ``future`` from a worker's outcome (a no-op if it was cancelled meanwhile)."""
    status, data, tb = outcome
    try:
        if status == OK:
            future._nbytes = data.nbytes if isinstance(data, Packed) else len(data)
            future.set_serialized_result(data, load_result)
        else:
            exc, future.partial = loads(data)  # type: ignore[arg-type]  # errors: bytes
            future.set_remote_exception(exc, tb)
    except cf.InvalidStateError:
        pass


def resolve_arguments(
    task: Task, swap: Callable[[Future[Any]], Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The task's arguments with every future replaced by ``swap(future)``.

    ``swap`` raises the future's exception when it failed, so a task whose input
    failed fails with the same exception, as on Ray and Dask.
    """
    if not task.deps:
        return task.args, task.kwargs
    return replace_futures(task.args, swap), replace_futures(task.kwargs, swap)


def prepare_native(
    task: Task, functions: FunctionCache
) -> tuple[bytes, bytes | Packed, list[Future[Any]]]:
    """For engines with an object store: ``(fn_data, payload, inputs)`` of a task.

    The arguments are pickled here (so errors name the culprit at submit time) with an
    :class:`~unidist_api.worker.Input` placeholder for each distinct input future;
    ``inputs`` lists those futures in placeholder order. The backend passes each one's
    engine handle (or, for a future of another backend, its value) as an extra
    positional argument of :func:`~unidist_api.worker.run_native`, so the engine moves
    the values worker to worker.
    """
    fn_data = functions.get(task.fn)
    if not task.deps:
        return fn_data, pack_arguments(task.fn, task.args, task.kwargs), []
    index: dict[int, int] = {}
    inputs: list[Future[Any]] = []
    for dep in task.deps:
        if id(dep) not in index:
            index[id(dep)] = len(inputs)
            inputs.append(dep)

    def placeholder(future: Future[Any]) -> Input:
        return Input(index[id(future)])

    args, kwargs = resolve_arguments(task, placeholder)
    return fn_data, pack_arguments(task.fn, args, kwargs), inputs


def packed_value(dep: Future[Any]) -> bytes | Packed:
    """An input future of another backend (or process), as packed data for a worker.

    Waits for it; raises its exception if it failed.
    """
    cf.wait([dep])
    data = dep.serialized_result()
    if data is None:
        data = pack_value(dep.result(), "the value of an input future")
    return data


def fail_from_engine(future: Future[Any], exc: BaseException) -> None:
    """Complete ``future`` with a task's own exception raised through an engine."""
    tb, partial = failure_details(exc)
    future.partial = partial
    try:
        future.set_remote_exception(exc, tb)
    except cf.InvalidStateError:
        pass
