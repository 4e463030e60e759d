"""``pipeline(*stages)``: each stage's output is the next stage's input, stages overlapping.

Items move through the stages in batches. A batch finished by stage ``s`` is handed
to stage ``s+1`` as a *future*, so on Ray and Dask its values go from worker to worker.
Each stage has its own limit of tasks in flight (``stage(fn, workers=n)``), and the
number of batches inside the pipeline is bounded, so a slow stage holds back the
input instead of letting earlier stages pile up results. What is inside is bounded in
bytes too, as in ``map``: the items read and not yet yielded, at the largest of the
packed sizes measured on the input, on the outputs and (where the engine tells them: Ray)
on the values between stages, stay within the executor's ``memory_budget``. Outputs
come in input order.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import os
import queue
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from . import resume
from .arguments import find_futures
from .backends.base import Task
from .futures import Future
from .mapping import Batcher, check_positive
from .progress import Progress, progress_bar, progress_options
from .runner import Runner
from .sizes import batch_within, estimate, packed_size
from .task import DEFAULT_OPTIONS, TaskOptions, make_options, unwrap
from .worker import EACH, Batch

__all__ = ["Stage", "stage", "Pipeline"]


@dataclass(frozen=True)
class Stage:
    """One step of a pipeline: ``fn`` applied to each item, at most ``workers`` tasks at once."""

    fn: Callable[..., Any]
    workers: int | None = None
    options: TaskOptions = DEFAULT_OPTIONS
    #: The stage's label in progress bars; ``None``: the function's name.
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name if self.name is not None else _name(self.fn)


def stage(
    fn: Callable[..., Any], workers: int | None = None, name: str | None = None, **task_options: Any
) -> Stage:
    """A pipeline stage with its own concurrency limit and task options (as ``ua.task``);
    ``name`` labels it in progress bars (default: the function's name, also through a
    ``functools.partial``)."""
    fn, base = unwrap(fn)
    check_positive("workers", workers)
    if name is not None and not isinstance(name, str):
        raise TypeError(f"a stage's name must be a string, got {name!r}")
    return Stage(fn, workers, make_options(task_options, base), name)


def _as_stage(obj: Callable[..., Any] | Stage) -> Stage:
    if isinstance(obj, Stage):
        return obj
    fn, options = unwrap(obj)
    return Stage(fn, None, options)


class Pipeline:
    """Stages to run over an iterable: ``Pipeline(iterable)`` yields final outputs in order.

    ``runner`` gives, each time the pipeline is called, the runner to use: its
    executor's (``Executor.pipeline``), or that of whichever executor is current then
    (``ua.pipeline``). Reusable: call it on as many iterables as you like.
    """

    def __init__(
        self, stages: Sequence[Callable[..., Any] | Stage], runner: Callable[[], Runner]
    ) -> None:
        if not stages:
            raise TypeError("pipeline() needs at least one stage")
        self.stages = tuple(_as_stage(s) for s in stages)
        self.runner = runner

    def __repr__(self) -> str:
        names = " -> ".join(s.label for s in self.stages)
        return f"<ua.Pipeline {names}>"

    def __call__(
        self,
        iterable: Iterable[Any],
        *,
        chunksize: int | None = None,
        buffersize: int | None = None,
        timeout: float | None = None,
        progress: Progress = False,
        checkpoint: str | os.PathLike[str] | None = None,
    ) -> Iterator[Any]:
        """Run the stages over ``iterable``, lazily; outputs in input order.

        ``chunksize`` items travel together as one task per stage; ``None`` adapts the
        batch size to the slowest stage's measured time per item, as ``map`` does. At
        most ``buffersize`` items are inside the pipeline (``None``: two batches per
        task slot of every stage). ``timeout`` counts from this call, as in ``map``;
        ``progress=True`` shows one bar per stage, labelled ``stage N <name>``; a dict of
        tqdm options (``total``, ``desc``, ``unit``, ...) applies to every stage's bar,
        ``desc`` before the label. ``checkpoint=PATH`` records each
        item's final output in a journal; a rerun runs only the missing items
        (docs/checkpoints.md).
        """
        check_positive("chunksize", chunksize)
        check_positive("buffersize", buffersize)
        if timeout is not None and not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
        bar_options = progress_options(progress)
        runner = self.runner()
        runner.check_open()
        for s in self.stages:
            runner.check_options(s.options)
        deadline = None if timeout is None else time.monotonic() + timeout
        source = iter(iterable)
        run = _Run(runner, self.stages, source, chunksize, buffersize)
        if checkpoint is not None:
            run.resume = resume.for_pipeline(checkpoint, [s.fn for s in self.stages], source)
        if bar_options is not None:
            run.bars = [
                progress_bar((iterable,), f"stage {i + 1} {s.label}", i, bar_options)
                for i, s in enumerate(self.stages)
            ]
        return run.results(deadline)


def _name(fn: Callable[..., Any]) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__name__", type(fn).__name__)


class _Run:
    """One pass of a pipeline over an input: the scheduling state, driven by completions.

    A batch is read from the input when fewer than ``max_batches`` batches (and, with
    ``buffersize``, fewer than that many items) are inside; it then moves stage to
    stage as a future. Each stage has a :class:`~unidist_api.mapping.Batcher` fed with
    the worker's own time for each batch where the engine tells it without the value
    (Ray's status return), else with its tasks' submit-to-completion times less the
    engine's overhead: a moving average of the difference between a final batch's
    latency and the worker's own time for it. The next batch
    takes the smallest size any of them asks for, so the slowest stage's tasks last
    about ``Batcher.target``.
    """

    def __init__(
        self,
        runner: Runner,
        stages: tuple[Stage, ...],
        source: Iterator[Any],
        chunksize: int | None,
        buffersize: int | None,
    ) -> None:
        self.runner = runner
        self.stages = stages
        self.source = source
        self.limits = [s.workers or runner.workers for s in stages]
        slots = sum(self.limits)
        self.max_batches = 2 * slots if buffersize is None else max(1, buffersize)
        self.window = buffersize  # items inside the pipeline, at most
        cap = None if buffersize is None else buffersize // (2 * slots)
        self.slots = slots
        self.budget = runner.memory_budget
        self.item_bytes = 0.0  # per input item, measured on each batch's first item
        self.result_bytes = 0.0  # per output, likewise
        self.middle_bytes = 0.0  # per intermediate value, where the engine tells its size
        self.batchers = [Batcher(chunksize, cap, growth=4) for _ in stages]
        self.bars: list[Any] = []
        #: batches waiting for each stage, as heaps by batch number: the oldest goes first
        self.waiting: list[list[tuple[int, Any]]] = [[] for _ in stages]
        self.next = [0] * len(stages)  # the batch a one-worker stage runs next
        self.running: list[int] = [0] * len(stages)
        self.futures: dict[Future[Any], int] = {}  # running tasks and their batch numbers
        self.started: dict[Future[Any], float] = {}
        self.latency: dict[int, float] = {}  # final batches' submit-to-completion seconds
        self.overhead = 0.0  # the engine's per-task overhead, once measured
        self.measured = False
        self.finished: queue.SimpleQueue[tuple[int, int, Future[Any], float]] = queue.SimpleQueue()
        self.outputs: dict[int, Future[Any]] = {}
        self.sizes: dict[int, int] = {}  # items each batch runs
        self.counts: dict[int, int] = {}  # input items of each batch (with those recorded)
        #: with ``checkpoint=``: the journal, and each batch's chunk of input
        self.resume: resume.Resume | None = None
        self.chunks: dict[int, resume.Chunk] = {}
        self.skipped: set[int] = set()  # batches wholly recorded: they pass no stage
        self.chains: dict[int, list[Future[Any]]] = {}  # each batch's task in every stage
        self.inside = 0  # items read and not yet yielded
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
                    future = self.outputs.pop(emitted)
                    self.runner.load_ready(future, self.outputs.values())
                    try:
                        batch = future.result()
                    except BaseException:  # a failure only loading tells (ray)
                        yield from self._failed_outputs(emitted, deadline)
                        raise
                    self._learn_overhead(emitted, batch)
                    if batch:
                        self.result_bytes = estimate(self.result_bytes, packed_size(batch[0]))
                    self.sizes.pop(emitted)
                    self.inside -= self.counts.pop(emitted)
                    self.chains.pop(emitted, None)
                    chunk = self.chunks.pop(emitted, None)
                    if chunk is not None and self.resume is not None:
                        self.resume.record(chunk, batch)
                        batch = chunk.merge(batch)
                    emitted += 1
                    yield from batch
                    continue
                if self.failure is not None and emitted == self.failure[0]:
                    yield from self._failed_outputs(emitted, deadline)
                    self.failure[2].result()  # raises the stage's own exception
                if self.exhausted and emitted == self.taken:
                    return
                self._collect(deadline)
        finally:
            for future in self.futures:
                future.cancel()
            for bar in self.bars:
                bar.close()
            if self.resume is not None:
                self.resume.close()

    def _failed_outputs(self, number: int, deadline: float | None) -> list[Any]:
        """The outputs of batch ``number`` before its failing item (recorded ones too)."""
        values = list(self._before_failure(number, deadline))
        chunk = self.chunks.pop(number, None)
        if chunk is not None and self.resume is not None:
            self.resume.record(chunk, values)
            values = chunk.merge(values)
        return values

    def _learn_overhead(self, number: int, batch: Any) -> None:
        """Compare a final batch's latency with the worker's own time for it."""
        latency = self.latency.pop(number, None)
        elapsed = getattr(batch, "elapsed", None)
        if latency is None or not elapsed:
            return
        overhead = max(0.0, latency - elapsed)
        self.overhead = overhead if not self.measured else 0.7 * self.overhead + 0.3 * overhead
        self.measured = True

    def _before_failure(self, number: int, deadline: float | None) -> Iterator[Any]:
        """Final outputs of the items before the failing one in batch ``number``.

        The stage where the batch failed reports the values of the items before the
        failing item (``Future.partial``); the later stages still run on them, so the
        pipeline yields exactly what the builtin ``map`` of the composition would.
        """
        chain = self.chains.get(number, [])
        origin = len(chain)
        while origin > 0 and chain[origin - 1].exception() is not None:
            origin -= 1  # walk back to the stage where the batch first failed
        if origin == len(chain):
            return
        partial = chain[origin].partial
        if not partial:
            return
        if origin + 1 == len(self.stages):
            yield from partial
            return
        rest = _Run(self.runner, self.stages[origin + 1 :], iter(partial), len(partial), None)
        yield from rest.results(deadline)

    def _read_input(self, emitted: int) -> None:
        while (
            not self.exhausted and self.failure is None and self.taken - emitted < self.max_batches
        ):
            size = min(batcher.next_size(Batcher.maximum) for batcher in self.batchers)
            if self.window is not None:
                size = min(size, self.window - self.inside)
                if size <= 0:
                    return
            per_item = max(self.item_bytes, self.result_bytes, self.middle_bytes)
            size = batch_within(
                size,
                self.inside * per_item,
                per_item,
                self.budget,
                self.slots,
                alone=not self.inside,
            )
            if size == 0:
                return  # the memory budget is full: wait for outputs to be yielded
            if self.resume is None:
                items = list(itertools.islice(self.source, size))
                if len(items) < size:
                    self.exhausted = True
                if not items:
                    return
                count = len(items)
            else:
                ahead = int(self.budget / 4 / max(per_item, 1.0))
                chunk = self.resume.take(size, ahead)
                self.exhausted = self.resume.done
                if chunk is None:
                    return
                items, count = chunk.items, chunk.count
                self.chunks[self.taken] = chunk
            if items:
                self.item_bytes = estimate(self.item_bytes, packed_size(items[0]))
                heapq.heappush(self.waiting[0], (self.taken, items))
            else:  # every item recorded in the journal: nothing to run
                done: Future[Any] = Future()
                done.set_result(Batch())
                self.outputs[self.taken] = done
                self.skipped.add(self.taken)
            self.sizes[self.taken] = len(items)
            self.counts[self.taken] = count
            self.inside += count
            self.taken += 1

    def _launch(self) -> None:
        """Start what each stage's limit allows, oldest batch first.

        A one-worker stage is a sequential sink: it runs its batches one at a time and in
        input order, waiting for the next one even when a later one is ready, so a stage
        that appends to a file writes it in input order on every backend.
        """
        for index in reversed(range(len(self.stages))):  # later stages first: drain, then fill
            waiting, stage = self.waiting[index], self.stages[index]
            sequential = self.limits[index] == 1
            while sequential and self.next[index] in self.skipped:
                self.next[index] += 1  # a recorded batch: it never comes to this stage
            while waiting and self.running[index] < self.limits[index]:
                if sequential and waiting[0][0] != self.next[index]:
                    break  # an earlier batch is still on its way to this stage
                number, batch = heapq.heappop(waiting)
                self.next[index] = number + 1
                while sequential and self.next[index] in self.skipped:
                    self.next[index] += 1
                if self.failure is not None and number > self.failure[0]:
                    continue  # after the failure: never yielded, so not run
                deps = [batch] if isinstance(batch, Future) else find_futures((batch,), {})
                middle = index + 1 < len(self.stages)  # its value stays on the workers:
                future = self.runner.submit(  # what its engine can tell of it, it tells
                    Task(stage.fn, (batch,), {}, stage.options, EACH, deps, report_failure=middle)
                )
                self.running[index] += 1
                self.futures[future] = number
                self.started[future] = time.monotonic()
                self.chains.setdefault(number, []).append(future)
                future.add_done_callback(functools.partial(self._finished, index, number))

    def _finished(self, index: int, number: int, future: Any) -> None:
        self.finished.put((index, number, future, time.monotonic()))

    def _collect(self, deadline: float | None) -> None:
        """Wait for one task to finish and move its batch to the next stage."""
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            index, number, future, finished_at = self.finished.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("pipeline: the next result was not ready within timeout") from None
        self.running[index] -= 1
        self.futures.pop(future, None)
        started = self.started.pop(future, finished_at)
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
        size = self.sizes[number]
        if future._work is not None:  # the worker's own time (Ray tells)
            self.batchers[index].record(future._work, size)
        else:
            self.batchers[index].record_latency(finished_at - started, size, self.overhead)
        if future._nbytes is not None and index + 1 < len(self.stages):
            self.middle_bytes = estimate(self.middle_bytes, future._nbytes // size)
        if index + 1 == len(self.stages):
            self.latency[number] = finished_at - started
        if self.bars:
            self.bars[index].update(size)
        if index + 1 < len(self.stages):
            heapq.heappush(self.waiting[index + 1], (number, future))
        else:
            self.outputs[number] = future
