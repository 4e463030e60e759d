"""``ua.Executor``: the facade, a ``concurrent.futures.Executor`` over any backend.

It validates the call, finds futures among the arguments, and hands one
:class:`~unidist_api.backends.base.Task` to the backend. ``map``, ``pipeline`` and
``reduce`` are written once (``mapping.py``, ``pipeline.py``, ``reduce.py``) on top
of the executor's :class:`~unidist_api.runner.Runner`; nothing here depends on which
engine runs the work.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ParamSpec, TypeVar, overload

from .arguments import find_futures
from .backends.base import Backend, Task
from .config import Layer, Settings, check_workers, resolve
from .errors import InvalidOptionError
from .exit import on_exit
from .futures import ALL_COMPLETED, Future
from .keyed import reduce_by_key
from .mapping import map_iterator
from .pipeline import Pipeline, Stage
from .progress import Progress
from .reduce import MISSING, tree_reduce
from .registry import load_backend
from .runner import Runner
from .task import DEFAULT_OPTIONS, unwrap

__all__ = ["Executor"]

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")
P = ParamSpec("P")
A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")
D = TypeVar("D")


class Executor(cf.Executor):
    """Runs tasks on one backend; drop-in for ``concurrent.futures.ProcessPoolExecutor``.

    ``Executor(backend=None, address=None, workers=None, *, initializer=None,
    initargs=(), **backend_options)``; ``max_workers=`` is a synonym of ``workers=``,
    and an int as the first argument is ``max_workers`` (``Executor(4)``, as
    ``ProcessPoolExecutor(4)``).
    Unset arguments come from the configuration (``use``, ``configure``, environment,
    config file). ``initializer(*initargs)`` runs once in every worker process before
    its first task. The backend starts on first use.
    """

    def __init__(
        self,
        backend: str | int | None = None,
        address: str | None = None,
        workers: int | None = None,
        *,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        max_workers: int | None = None,
        **backend_options: Any,
    ) -> None:
        if isinstance(backend, int):  # a bool too: check_workers refuses it by name
            if max_workers is not None and max_workers != backend:
                raise TypeError(
                    f"Executor({backend!r}, max_workers={max_workers!r}): a first argument "
                    "that is an int is max_workers; pass it once"
                )
            backend, max_workers = None, backend
        if max_workers is not None:
            if workers is not None and workers != max_workers:
                raise TypeError(
                    f"workers={workers!r} and max_workers={max_workers!r} disagree; "
                    "max_workers is a synonym of workers: pass one of them"
                )
            workers = max_workers
        check_workers(workers, "workers")
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, got {initializer!r}")
        settings = resolve(Layer("Executor()", backend, address, workers, backend_options))
        self._start(settings, initializer, tuple(initargs))

    @classmethod
    def _from_settings(cls, settings: Settings) -> Executor:
        executor = cls.__new__(cls)
        executor._start(settings, None, ())
        return executor

    def _start(
        self, settings: Settings, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]
    ) -> None:
        backend_class = load_backend(settings.backend)
        if settings.address is not None and not backend_class.takes_address:
            source = settings.sources.get("address", "")
            if source in ("Executor()", "use()", "configure()"):
                raise InvalidOptionError(
                    f"the {settings.backend!r} backend runs on this machine and takes no "
                    f"address, got address={settings.address!r} from {source}; drop it, or "
                    "choose a cluster backend such as 'ray' or 'dask'"
                )
            # an address from the environment or a config file is meant for another backend
            settings = dataclasses.replace(settings, address=None)
        self.settings = settings
        self._backend: Backend = backend_class(
            address=settings.address,
            workers=settings.workers,
            initializer=initializer,
            initargs=initargs,
            options=settings.options,
        )
        self._runner = Runner(self._backend)
        _track(self)

    # -- what it is ----------------------------------------------------------------------
    @property
    def backend(self) -> str:
        """The backend's registered name (``"local"``, ``"serial"``, ...)."""
        return self._backend.name

    @property
    def address(self) -> str | None:
        """Where the tasks run: the cluster's address (Dask: its scheduler's
        ``tcp://host:port``; Ray: its GCS ``host:port``), None for ``local`` and ``serial``.

        A cluster we connect to has its address from the start. An embedded one (Dask's
        ``LocalCluster``, a private Ray) starts with the first task, and its address is
        None until then: reading this property starts nothing. It stays the address of
        the last cluster started after ``shutdown()``, when nothing answers there any more.
        """
        return self._backend.engine_address()

    @property
    def workers(self) -> int:
        """How many tasks run at once."""
        return self._backend.workers

    @property
    def _max_workers(self) -> int:
        """``workers``, under the name ``ProcessPoolExecutor`` has: code written for the
        stdlib's pools reads it (``dask.compute(..., scheduler=executor)`` sizes its
        window by it)."""
        return self._backend.workers

    @property
    def is_shutdown(self) -> bool:
        return self._runner.closed

    def __repr__(self) -> str:
        state = " shutdown" if self.is_shutdown else ""
        return f"<ua.Executor backend={self.backend!r} workers={self.workers}{state}>"

    # -- operations ------------------------------------------------------------------------
    # typed like ``ua.submit`` (ParamSpec; futures for values in up to four positional args)
    @overload
    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]: ...
    @overload
    def submit(self, fn: Callable[[A], T], a: A | Future[A], /) -> Future[T]: ...
    @overload
    def submit(
        self, fn: Callable[[A, B], T], a: A | Future[A], b: B | Future[B], /
    ) -> Future[T]: ...
    @overload
    def submit(
        self,
        fn: Callable[[A, B, C], T],
        a: A | Future[A],
        b: B | Future[B],
        c: C | Future[C],
        /,
    ) -> Future[T]: ...
    @overload
    def submit(
        self,
        fn: Callable[[A, B, C, D], T],
        a: A | Future[A],
        b: B | Future[B],
        c: C | Future[C],
        d: D | Future[D],
        /,
    ) -> Future[T]: ...
    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` as one task; futures among the arguments are resolved."""
        self._runner.check_open()
        fn, options = unwrap(fn)
        if options is not DEFAULT_OPTIONS:
            self._backend.check_options(options)
        deps = find_futures(args, kwargs)
        return self._backend.submit(Task(fn, args, kwargs, options, deps=deps))

    # typed by ``fn`` for 1-3 iterables; no overload takes none (an empty iterator at run
    # time), which cf.Executor.map's signature allows: hence the ignore
    @overload  # type: ignore[override]
    def map(
        self,
        fn: Callable[[A], T],
        iterable: Iterable[A],
        /,
        *,
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
        ordered: bool = True,
        progress: Progress = False,
        checkpoint: str | os.PathLike[str] | None = None,
    ) -> Iterator[T]: ...
    @overload
    def map(
        self,
        fn: Callable[[A, B], T],
        iterable1: Iterable[A],
        iterable2: Iterable[B],
        /,
        *,
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
        ordered: bool = True,
        progress: Progress = False,
        checkpoint: str | os.PathLike[str] | None = None,
    ) -> Iterator[T]: ...
    @overload
    def map(
        self,
        fn: Callable[[A, B, C], T],
        iterable1: Iterable[A],
        iterable2: Iterable[B],
        iterable3: Iterable[C],
        /,
        *,
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
        ordered: bool = True,
        progress: Progress = False,
        checkpoint: str | os.PathLike[str] | None = None,
    ) -> Iterator[T]: ...
    @overload
    def map(
        self,
        fn: Callable[..., T],
        iterable1: Iterable[Any],
        iterable2: Iterable[Any],
        iterable3: Iterable[Any],
        iterable4: Iterable[Any],
        /,
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
        ordered: bool = True,
        progress: Progress = False,
        checkpoint: str | os.PathLike[str] | None = None,
    ) -> Iterator[T]: ...
    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
        ordered: bool = True,
        progress: Progress = False,
        checkpoint: str | os.PathLike[str] | None = None,
    ) -> Iterator[T]:
        """Lazy parallel ``map``: input is pulled as results are consumed.

        At most ``buffersize`` items are submitted and not yet yielded (``None``: a bounded
        size picked from the worker count). ``timeout`` counts from this call.
        ``ordered=False`` yields in completion order; ``chunksize=None`` batches tiny items.
        ``checkpoint=PATH`` records finished items in a journal; a rerun runs only the
        missing ones (docs/checkpoints.md).
        """
        self._runner.check_open()
        return map_iterator(
            self._runner,
            fn,
            iterables,
            timeout=timeout,
            chunksize=chunksize,
            buffersize=buffersize,
            ordered=ordered,
            progress=progress,
            checkpoint=checkpoint,
        )

    def pipeline(self, *stages: Callable[..., Any] | Stage) -> Pipeline:
        """A reusable chain of stages bound to this executor; call it on an iterable."""
        self._runner.check_open()
        runner = self._runner
        return Pipeline(stages, lambda: runner)

    def reduce(self, fn: Callable[[T, T], T], iterable: Iterable[T], initial: Any = MISSING) -> T:
        """Parallel tree reduction with a fixed shape (docs/reduce.md)."""
        self._runner.check_open()
        result: T = tree_reduce(self._runner, fn, iterable, initial)
        return result

    def reduce_by_key(
        self,
        fn: Callable[[V, V], V],
        pairs: Iterable[tuple[K, V]],
        *,
        partitions: int | None = None,
        partition: Any = "hash",
        initial: Any = MISSING,
    ) -> dict[K, V]:
        """Per-key tree reduction of ``(key, value)`` pairs, keys in order of first
        appearance; bit-identical on every backend (docs/reduce.md, "reduce_by_key").

        ``partition``: ``"hash"`` (a stable hash of the key), a sorted list of
        boundaries (range partitions), or a callable ``key -> int`` in
        ``range(partitions)``. ``partitions=None``: the worker count (hash), or
        ``len(boundaries) + 1``. With ``initial``, each key's result is ``fn(initial, tree)``.
        """
        self._runner.check_open()
        result: dict[K, V] = reduce_by_key(
            self._runner, fn, pairs, partitions=partitions, partition=partition, initial=initial
        )
        return result

    def put(self, obj: T) -> Future[T]:
        """Store ``obj`` once; pass the returned handle to many tasks."""
        self._runner.check_open()
        return self._backend.put(obj)

    def gather(self, futures: Iterable[Future[T]]) -> list[T]:
        """Results of ``futures``, in order."""
        return gather(futures)

    def as_completed(
        self, futures: Iterable[Future[T]], timeout: float | None = None
    ) -> Iterator[Future[T]]:
        return as_completed(futures, timeout)

    def wait(
        self,
        futures: Iterable[Future[T]],
        timeout: float | None = None,
        return_when: str = ALL_COMPLETED,
    ) -> tuple[set[Future[T]], set[Future[T]]]:
        return wait(futures, timeout, return_when)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop what this executor started; a cluster it connected to keeps running."""
        self._runner.close(wait=wait, cancel_futures=cancel_futures)


def gather(futures: Iterable[Future[T]]) -> list[T]:
    """Results of ``futures``, in order; raises the first failure met in that order.

    Futures of a backend that ``fetches`` are loaded in one engine call per backend.
    """
    futures = list(futures)
    groups: dict[int, tuple[Backend, list[Future[Any]]]] = {}
    for future in futures:
        backend = getattr(future, "_backend", None)
        if backend is not None and backend.fetches:
            groups.setdefault(id(backend), (backend, []))[1].append(future)
    for backend, group in groups.values():
        backend.fetch(group, None)
    return [future.result() for future in futures]


def as_completed(futures: Iterable[Future[T]], timeout: float | None = None) -> Iterator[Future[T]]:
    """Each future once, as it finishes (``concurrent.futures.as_completed``)."""
    return cf.as_completed(futures, timeout)  # type: ignore[return-value]


def wait(
    futures: Iterable[Future[T]], timeout: float | None = None, return_when: str = ALL_COMPLETED
) -> tuple[set[Future[T]], set[Future[T]]]:
    """``(done, not_done)``, as ``concurrent.futures.wait``."""
    done, not_done = cf.wait(futures, timeout, return_when)
    return done, not_done  # type: ignore[return-value]


# -- at interpreter exit, open executors finish their work (unidist_api/exit.py) ----------
# As with the stdlib's pools, an executor that is garbage-collected shuts down without
# waiting (its futures and the maps it made still complete); its runner stays here until
# it is settled, so that exit still waits for that work.
_live: weakref.WeakSet[Executor] = weakref.WeakSet()
_collected: set[Runner] = set()
_collected_lock = threading.RLock()  # finalizers take it: they run where GC runs
_hooked = False


def _track(executor: Executor) -> None:
    global _hooked
    _live.add(executor)
    finalizer = weakref.finalize(executor, _on_collected, executor._runner)
    finalizer.atexit = False  # exit has its own hook: _finish_all
    if not _hooked:
        _hooked = True
        on_exit(finish=_finish_all)


def _on_collected(runner: Runner) -> None:
    """The executor was garbage-collected: ``shutdown(wait=False)``, off the GC's thread
    (a collection can run while this thread holds one of the locks shutdown takes)."""
    if runner.closed:
        return
    with _collected_lock:  # reentrant: a collection may run this inside its own block
        for settled in [other for other in list(_collected) if other.settled]:
            _collected.discard(settled)
        _collected.add(runner)
    threading.Thread(
        target=runner.close, args=(False, False), daemon=True, name="unidist-api collected executor"
    ).start()


def _runners() -> list[Runner]:
    live = [executor._runner for executor in list(_live)]  # may collect one: it lands in
    with _collected_lock:  # _collected, through _on_collected
        return live + [runner for runner in list(_collected) if runner not in live]


def _finish_all(interrupted: bool = False) -> None:
    """At exit: shut every executor down, waiting for its work; or (``interrupted``)
    cancelling what waits, without waiting (the engines' stoppers end the rest)."""
    for runner in _runners():
        runner.close(wait=not interrupted, cancel_futures=interrupted)
        runner.at_exit(interrupted)


def _shutdown_all() -> None:
    """Cancel what every executor was given and stop it (the pytest plugin, after a test)."""
    for runner in _runners():
        runner.close(wait=True, cancel_futures=True)
        runner.at_exit(True)
