"""``pipeline(*stages)``: each stage's output is the next stage's input, stages overlapping.

Items move through the stages in batches. A batch finished by stage ``s`` is handed
to stage ``s+1`` as a *future*, so on Ray and Dask its values go from worker to worker.
Each stage has its own limit of tasks in flight (``stage(fn, workers=n)``), and the
number of batches inside the pipeline is bounded, so a slow stage holds back the
input instead of letting earlier stages pile up results. Outputs come in input order.
"""

from __future__ import annotations

import functools
import itertools
import queue
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .arguments import find_futures
from .backends.base import Task
from .futures import Future
from .mapping import check_positive
from .task import DEFAULT_OPTIONS, TaskOptions, make_options, unwrap
from .worker import EACH

if TYPE_CHECKING:
    from .executor import Executor

__all__ = ["Stage", "stage", "Pipeline"]


@dataclass(frozen=True)
class Stage:
    """One step of a pipeline: ``fn`` applied to each item, at most ``workers`` tasks at once."""

    fn: Callable[..., Any]
    workers: int | None = None
    options: TaskOptions = DEFAULT_OPTIONS


def stage(fn: Callable[..., Any], workers: int | None = None, **task_options: Any) -> Stage:
    """A pipeline stage with its own concurrency limit and task options (as ``ua.task``)."""
    fn, base = unwrap(fn)
    check_positive("workers", workers)
    return Stage(fn, workers, make_options(task_options, base))


def _as_stage(obj: Callable[..., Any] | Stage) -> Stage:
    if isinstance(obj, Stage):
        return obj
    fn, options = unwrap(obj)
    return Stage(fn, None, options)


class Pipeline:
    """Stages to run over an iterable: ``Pipeline(iterable)`` yields final outputs in order.

    Bound to an executor, or (from ``ua.pipeline``) to whichever executor is current
    when it is called. Reusable: call it on as many iterables as you like.
    """

    def __init__(self, stages: Sequence[Callable[..., Any] | Stage],
                 executor: Executor | None = None) -> None:
        if not stages:
            raise TypeError("pipeline() needs at least one stage")
        self.stages = tuple(_as_stage(s) for s in stages)
        self.executor = executor

    def __repr__(self) -> str:
        names = " -> ".join(getattr(s.fn, "__name__", repr(s.fn)) for s in self.stages)
        return f"<ua.Pipeline {names}>"

    def __call__(self, iterable: Iterable[Any], *, chunksize: int | None = None,
                 buffersize: int | None = None, timeout: float | None = None) -> Iterator[Any]:
        """Run the stages over ``iterable``, lazily.

        ``chunksize`` items travel together as one task per stage (``None``: 1 for now;
        adaptive batching comes with the streaming work); at most ``buffersize`` items are
        inside the pipeline (default: two per worker per stage).
        """
        from .config import current_executor

        check_positive("chunksize", chunksize)
        check_positive("buffersize", buffersize)
        chunksize = chunksize or 1
        executor = self.executor or current_executor()
        executor._check_open()
        for s in self.stages:
            if s.options is not DEFAULT_OPTIONS:
                executor._backend.check_options(s.options)
        window = buffersize or 2 * executor.workers * len(self.stages) * chunksize
        deadline = None if timeout is None else time.monotonic() + timeout
        run = _Run(executor, self.stages, iter(iterable), chunksize, max(1, window // chunksize))
        return run.results(deadline)


class _Run:
    """One pass of a pipeline over an input: the scheduling state, driven by completions."""

    def __init__(self, executor: Executor, stages: tuple[Stage, ...], source: Iterator[Any],
                 chunksize: int, max_batches: int) -> None:
        self.executor = executor
        self.stages = stages
        self.source = source
        self.chunksize = chunksize
        self.max_batches = max_batches
        self.limits = [s.workers or executor.workers for s in stages]
        self.waiting: list[deque[tuple[int, Any]]] = [deque() for _ in stages]
        self.running: list[int] = [0] * len(stages)
        self.futures: dict[Future[Any], int] = {}  # running tasks and their batch numbers
        self.finished: queue.SimpleQueue[tuple[int, int, Future[Any]]] = queue.SimpleQueue()
        self.outputs: dict[int, Future[Any]] = {}
        self.taken = 0  # batches read from the input
        self.exhausted = False
        #: The earliest failed batch: (batch number, stage index, its future). Batches
        #: before it still finish and are yielded, as the builtin map would; then it raises.
        self.failure: tuple[int, int, Future[Any]] | None = None

    def results(self, deadline: float | None) -> Iterator[Any]:
        emitted = 0
        try:
            while True:
                self._read_input(emitted)
                self._launch()
                if emitted in self.outputs:
                    batch = self.outputs.pop(emitted).result()
                    emitted += 1
                    yield from batch
                    continue
                if self.failure is not None and emitted == self.failure[0]:
                    index, future = self.failure[1:]
                    if index == len(self.stages) - 1:  # final outputs before the failing item
                        yield from future.partial or ()
                    future.result()  # raises the stage's own exception
                if self.exhausted and emitted == self.taken:
                    return
                self._collect(deadline)
        finally:
            for future in self.futures:
                future.cancel()

    def _read_input(self, emitted: int) -> None:
        while (not self.exhausted and self.failure is None
               and self.taken - emitted < self.max_batches):
            items = list(itertools.islice(self.source, self.chunksize))
            if len(items) < self.chunksize:
                self.exhausted = True
            if not items:
                return
            self.waiting[0].append((self.taken, items))
            self.taken += 1

    def _launch(self) -> None:
        for index in reversed(range(len(self.stages))):  # later stages first: drain, then fill
            waiting, stage = self.waiting[index], self.stages[index]
            while waiting and self.running[index] < self.limits[index]:
                number, batch = waiting.popleft()
                if self.failure is not None and number > self.failure[0]:
                    continue  # after the failure: never yielded, so not run
                deps = [batch] if isinstance(batch, Future) else find_futures((batch,), {})
                future = self.executor._submit_task(
                    Task(stage.fn, (batch,), {}, stage.options, EACH, deps)
                )
                self.running[index] += 1
                self.futures[future] = number
                future.add_done_callback(functools.partial(self._finished, index, number))

    def _finished(self, index: int, number: int, future: Any) -> None:
        self.finished.put((index, number, future))

    def _collect(self, deadline: float | None) -> None:
        """Wait for one task to finish and move its batch to the next stage."""
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            index, number, future = self.finished.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("pipeline: the next result was not ready within timeout") from None
        self.running[index] -= 1
        self.futures.pop(future, None)
        if future.cancelled():
            return  # a batch after the failure
        if future.known_exception() is not None:
            if self.failure is None or number < self.failure[0]:
                self.failure = (number, index, future)
                for later, later_number in list(self.futures.items()):
                    if later_number > number:
                        later.cancel()  # best effort; earlier batches finish anyway
            return
        if self.failure is not None and number > self.failure[0]:
            return
        if index + 1 < len(self.stages):
            self.waiting[index + 1].append((number, future))
        else:
            self.outputs[number] = future
