"""unidist-api: one small facade over Ray, Dask, a local process pool and a serial backend.

    import unidist_api as ua
    squares = list(ua.map(square, range(100)))

Module functions act on the current executor (chosen by ``ua.use``, ``ua.configure``,
the environment or a config file; ``local`` by default); ``ua.Executor`` is the same
API as an explicit object. Importing this package imports no engine.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ParamSpec, TypeVar, overload

from . import errors
from .config import configure
from .current import current_executor, current_runner, shutdown, use
from .errors import BrokenExecutorError
from .executor import Executor, as_completed, gather, wait
from .futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, Future
from .pipeline import Pipeline, Stage, stage
from .progress import Progress
from .reduce import MISSING
from .registry import backends
from .task import TaskFunction, TaskOptions, task

__version__ = "0.1.0"

__all__ = [
    "ALL_COMPLETED",
    "BrokenExecutorError",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "Executor",
    "Future",
    "Pipeline",
    "Stage",
    "TaskFunction",
    "TaskOptions",
    "as_completed",
    "backends",
    "configure",
    "current_executor",
    "errors",
    "gather",
    "map",
    "pipeline",
    "put",
    "reduce",
    "reduce_by_key",
    "shutdown",
    "stage",
    "submit",
    "task",
    "use",
    "wait",
    "__version__",
]

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")
P = ParamSpec("P")
A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")
D = TypeVar("D")

# ``submit``'s arguments are checked against ``fn``'s parameters (ParamSpec). A future
# passed in place of a value (it is resolved before the task runs) is accepted by the
# positional overloads for up to four arguments; futures inside containers, or with
# keyword arguments, need a ``cast`` or an ``Any``-typed ``fn``.


@overload
def submit(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]: ...
@overload
def submit(fn: Callable[[A], T], a: A | Future[A], /) -> Future[T]: ...
@overload
def submit(fn: Callable[[A, B], T], a: A | Future[A], b: B | Future[B], /) -> Future[T]: ...
@overload
def submit(
    fn: Callable[[A, B, C], T], a: A | Future[A], b: B | Future[B], c: C | Future[C], /
) -> Future[T]: ...
@overload
def submit(
    fn: Callable[[A, B, C, D], T],
    a: A | Future[A],
    b: B | Future[B],
    c: C | Future[C],
    d: D | Future[D],
    /,
) -> Future[T]: ...
def submit(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
    """Run ``fn(*args, **kwargs)`` as one task on the current executor."""
    return current_executor().submit(fn, *args, **kwargs)


@overload
def map(
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
    fn: Callable[..., T],
    *iterables: Iterable[Any],
    timeout: float | None = None,  # noqa: A001
    chunksize: int | None = None,
    buffersize: int | None = None,
    ordered: bool = True,
    progress: Progress = False,
    checkpoint: str | os.PathLike[str] | None = None,
) -> Iterator[T]:
    """Lazy parallel ``map`` on the current executor (see ``Executor.map``)."""
    return current_executor().map(
        fn,
        *iterables,
        timeout=timeout,
        chunksize=chunksize,
        buffersize=buffersize,
        ordered=ordered,
        progress=progress,
        checkpoint=checkpoint,
    )


def pipeline(*stages: Callable[..., Any] | Stage) -> Pipeline:
    """Chain stages; ``pipeline(f, g)(items)`` yields ``g(f(x))`` in input order.

    The pipeline runs on whichever executor is current when it is called.
    """
    return Pipeline(stages, current_runner)


def reduce(fn: Callable[[T, T], T], iterable: Iterable[T], initial: Any = MISSING) -> T:
    """Parallel tree reduction with a fixed shape (equal to ``functools.reduce`` for
    an associative ``fn``; bit-identical on every backend)."""
    return current_executor().reduce(fn, iterable, initial)


def reduce_by_key(
    fn: Callable[[V, V], V],
    pairs: Iterable[tuple[K, V]],
    *,
    partitions: int | None = None,
    partition: Any = "hash",
    initial: Any = MISSING,
) -> dict[K, V]:
    """``pairs`` yields ``(key, value)``; each key's values are combined in input order by
    a fixed tree (shape set by the input alone), so the dict is bit-identical on every
    backend and equal to a per-key ``functools.reduce`` for an associative ``fn``;
    ``partition``: ``"hash"`` (a stable hash of the key, the same in every process and
    run), a sorted list of boundaries (range partitions), or a callable ``key -> int`` in
    ``range(partitions)``; keys in order of first appearance (see ``Executor.reduce_by_key``)."""
    return current_executor().reduce_by_key(
        fn, pairs, partitions=partitions, partition=partition, initial=initial
    )


def put(obj: T) -> Future[T]:
    """Store ``obj`` once on the current executor; pass the handle to many tasks."""
    return current_executor().put(obj)
