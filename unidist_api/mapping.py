"""``map``: lazy, bounded, batched, ordered or in completion order.

Input is pulled only as results are consumed: at most ``buffersize`` items are
submitted and not yet yielded, so ``map(f, itertools.count())`` streams in constant
memory. Items travel in batches (one task runs ``fn`` over a list); with
``chunksize=None`` the batch size adapts to the measured time per item (:class:`Batcher`).
No thread is started: the caller's thread submits and collects, waiting on futures.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import os
import queue
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from . import resume
from .arguments import find_futures
from .backends.base import Task
from .errors import ExecutorShutdownError
from .futures import Future
from .progress import Progress, progress_bar, progress_options
from .runner import Runner
from .sizes import batch_within, estimate, packed_size
from .task import TaskOptions, unwrap
from .worker import EACH, EACH_STAR, Batch

__all__ = [
    "map_iterator",
    "Batcher",
    "check_positive",
]


def check_positive(name: str, value: Any) -> None:
    """``None`` or an integer >= 1 (TypeError for a non-integer, as Python 3.14's map)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer or None, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be None or >= 1, got {value!r}")


class Batcher:
    """Chooses how many items go in the next task.

    Fixed when ``chunksize`` is given. Otherwise it starts at 1 and aims for tasks of
    about ``target`` seconds, from the time per item measured so far (the workers'
    own timing in ``map``; submit to completion, less the engine's overhead, in
    ``pipeline``), growing at most ``growth`` times per observation (16 in ``map``,
    where timings are exact; 4 in ``pipeline``) and never above ``cap``, which keeps
    every worker fed.
    """

    target = 0.05  # seconds of work per task: ~100x a task's overhead on every backend
    maximum = 8192

    def __init__(self, chunksize: int | None, cap: int | None = None, growth: int = 16) -> None:
        self.fixed = chunksize
        self.growth = growth
        self.size = chunksize or 1
        self.cap = self.maximum if cap is None else max(1, min(cap, self.maximum))
        self._per_item: float | None = None

    def observe(self, batch: Batch) -> None:
        """Learn from a finished batch's own timing."""
        if batch:
            self.record(batch.elapsed, len(batch))

    def record(self, seconds: float, items: int) -> None:
        """Learn that ``items`` items took ``seconds``."""
        if self.fixed is not None or items <= 0:
            return
        per_item = seconds / items
        old = self._per_item
        self._per_item = per_item if old is None else 0.7 * old + 0.3 * per_item
        ideal = self.target / max(self._per_item, 1e-7)
        self.size = max(1, min(int(ideal), self.cap, self.size * self.growth))

    def record_latency(self, seconds: float, items: int, overhead: float = 0.0) -> None:
        """Learn from a task's submit-to-completion time, less the engine's ``overhead``.

        ``overhead`` is what the caller measured of it so far (0 until it knows: the
        overhead then counts as work, which errs towards smaller batches; they only grow
        while tasks stay shorter than ``target``). A task whose work, so estimated,
        already lasted ``target`` never makes batches grow.
        """
        if self.fixed is not None or items <= 0:
            return
        size = self.size
        work = max(seconds - overhead, 0.0)
        self.record(work, items)
        if work >= self.target:
            self.size = min(self.size, size)

    def next_size(self, room: int) -> int:
        size = self.size if self.fixed is not None else min(self.size, self.cap)
        return max(1, min(size, room))


def map_iterator(
    runner: Runner,
    fn: Callable[..., Any],
    iterables: tuple[Iterable[Any], ...],
    *,
    timeout: float | None,
    chunksize: int | None,
    buffersize: int | None,
    ordered: bool,
    progress: Progress,
    checkpoint: str | os.PathLike[str] | None = None,
) -> Iterator[Any]:
    """Validate, submit the first window now (as Python 3.14 does), stream the rest.

    ``checkpoint``: a journal's path (:mod:`.resume`): recorded items are not run again.
    """
    fn, options = unwrap(fn)
    check_positive("chunksize", chunksize)
    check_positive("buffersize", buffersize)
    if timeout is not None and not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
    runner.check_options(options)
    bar_options = progress_options(progress)
    sources = [iter(iterable) for iterable in iterables]
    source = sources[0] if len(sources) == 1 else zip(*sources)  # noqa: B905 (stop at shortest)
    mode = EACH if len(sources) == 1 else EACH_STAR
    workers = runner.workers
    batcher = Batcher(chunksize, None if buffersize is None else buffersize // (2 * workers))
    stream = _Stream(runner, fn, options, mode, source, batcher, buffersize, workers, ordered)
    if checkpoint is not None:
        stream.resume = resume.for_map(checkpoint, fn, mode, source)
    stream.deadline = None if timeout is None else time.monotonic() + timeout
    if bar_options is not None:
        stream.bar = progress_bar(iterables, options=bar_options)
    try:
        runner.register(stream)
    except BaseException:
        stream.close_journal()
        raise
    try:
        stream.fill(at_call=True)
    except BaseException:
        stream.finish(cancel=True)
        raise
    results = stream.results()
    stream.watch(results)
    return results


class _Stream:
    """One map: cuts input into batches within the in-flight window, yields results.

    Registered with the runner from the call until its iterator ends (or, never
    consumed, until the runner ran it out at shutdown).
    """

    def __init__(
        self,
        runner: Runner,
        fn: Callable[..., Any],
        options: TaskOptions,
        mode: int,
        source: Iterator[Any],
        batcher: Batcher,
        window: int | None,
        workers: int,
        ordered: bool = True,
    ) -> None:
        self.runner = runner
        self.fn = fn
        self.options = options
        self.mode = mode
        self.source = source
        self.batcher = batcher
        self.window = window
        self.max_batches = 4 * workers
        self.workers = workers
        self.yielded = False  # a batch came back: the batcher has a measurement
        self.budget = runner.memory_budget
        self.held = 0.0  # bytes of the items submitted and not yet yielded, with results
        self.item_bytes = 0.0  # per item, as measured on each batch's first item
        self.result_bytes = 0.0  # per result, likewise, once results come back
        self.bytes_of: dict[Future[Any], float] = {}  # per item of each pending batch
        self.exhausted = False
        self.in_flight = 0  # items submitted and not yet yielded
        self.pending: deque[tuple[Future[Any], int]] = deque()
        self.deadline: float | None = None
        self.late: set[Future[Any]] = set()  # finished during submit, after the deadline
        self.failed = False  # a batch failed in submit (serial): submit no more
        #: completion order (``ordered=False``): each batch's future as it finishes
        self.finished: queue.SimpleQueue[Future[Any]] | None = (
            None if ordered else queue.SimpleQueue()
        )
        self.bar: Any = None
        self.started = False  # its iterator was advanced
        self.stopped = False  # submits no more (finished, or its executor shut down)
        self.cancelled = False  # what it had submitted was cancelled before it was yielded
        self._iterator: weakref.ref[Iterator[Any]] | None = None
        #: with ``checkpoint=``: the journal, and each pending batch's chunk of input
        self.resume: resume.Resume | None = None
        self.chunks: dict[Future[Any], resume.Chunk] = {}

    # -- the runner's view (runner.Stream) ---------------------------------------------------
    def watch(self, results: Iterator[Any]) -> None:
        """Learn when the caller drops ``results`` without advancing it."""
        self._iterator = weakref.ref(results, self._dropped)

    def _dropped(self, _: object) -> None:
        if self.started:
            return  # its close() runs: results() finishes it
        if self.window is not None:
            self.finish(cancel=False)  # as 3.14: what was submitted runs, nothing more
        else:
            self.runner.dropped(self)

    def gone(self) -> bool:
        return self._iterator is not None and self._iterator() is None

    def unconsumed(self) -> bool:
        return not self.started and self.window is None

    def drain(self) -> None:
        """Run the rest of the input, results and failures dropped, in bounded memory."""
        self.started = True
        self.deadline = None  # the stdlib applies a map's timeout only while iterating
        self.late.clear()
        try:
            while True:
                self.failed = False  # every item runs, as with the stdlib's eager map
                future = self._next_finished()
                if future is None:
                    return
                try:
                    for _ in self._values(future):
                        pass
                except Exception:
                    pass
                del future
        finally:
            self.close_journal()

    def close_journal(self) -> None:
        """Commit what the journal was given and release it (nothing more is recorded)."""
        if self.resume is not None:
            self.resume.close()

    def finish(self, cancel: bool) -> None:
        self.stopped = True
        if cancel:  # pending batches that had not started now raise CancelledError when
            self.cancelled = True  # reached, as the stdlib's map; finished ones still yield
            for future, _ in self.pending:
                future.cancel()
        if self.bar is not None:
            self.bar.close()
        if not self.started:  # never iterated (nor run out): nothing more to record
            self.close_journal()
        self.runner.unregister(self)

    # -- submitting ------------------------------------------------------------------------
    def fill(self, at_call: bool = False) -> None:
        """Submit batches until the window or the input is exhausted, or one failed.

        Until a first batch has come back, one batch per worker: the first results then
        wait for one round trip, not for ``4 * workers`` submits (tens of ms on Dask).
        ``at_call`` with a ``buffersize``: the whole window, as 3.14 submits at the call.
        """
        if self.stopped:
            return
        whole_window = at_call and self.window is not None
        limit = self.max_batches if self.yielded else self.workers
        if whole_window:
            limit = self.batcher.maximum
        finished = self.finished
        on_done = None if finished is None else (lambda future: finished.put(future))
        while not self.exhausted and not self.failed and len(self.pending) < limit:
            room = self.batcher.maximum if self.window is None else self.window - self.in_flight
            if room <= 0:
                return
            size = self.batcher.next_size(room)
            size = batch_within(
                size,
                self.held,
                self.item_bytes + self.result_bytes,
                self.budget,
                self.workers,
                alone=not self.pending,
            )
            if size == 0:
                return  # the memory budget is full: wait for results to be yielded
            chunk = None
            if self.resume is None:
                items = list(itertools.islice(self.source, size))
                if len(items) < size:
                    self.exhausted = True
                if not items:
                    return
                count = len(items)
            else:
                chunk = self.resume.take(size, self._ahead())
                self.exhausted = self.resume.done
                if chunk is None:
                    return
                items, count = chunk.items, chunk.count
            if items:
                self.item_bytes = estimate(self.item_bytes, packed_size(items[0]))
                args = (items,)
                task = Task(self.fn, args, {}, self.options, self.mode, find_futures(args, {}))
                future = self.runner.submit(task, self)
            else:  # every item recorded in the journal: nothing to run
                future = Future()
                future.set_result(Batch())
            if chunk is not None:
                self.chunks[future] = chunk
            per_item = self.item_bytes + self.result_bytes
            self.bytes_of[future] = per_item
            self.held += per_item * count
            ran = bool(items) and future._state == cf._base.FINISHED  # run in submit (serial)
            if ran:
                self.failed = future.known_exception() is not None  # fail fast: stop here
                if self.deadline is not None and time.monotonic() > self.deadline:
                    self.late.add(future)
            self.pending.append((future, count))
            self.in_flight += count
            if on_done is not None:
                future.add_done_callback(on_done)
            if ran and not whole_window:  # running ahead gains nothing there and holds
                return  # one more batch of results

    # -- yielding --------------------------------------------------------------------------
    def results(self) -> Iterator[Any]:
        """The map's iterator: each batch's values in input or completion order."""
        self.started = True
        try:
            while True:
                future = self._next_finished()
                if future is None:
                    return
                self.runner.load_ready(future, self._along())
                yield from self._values(future)
                del future  # its results go now, not after the next batch has run
        finally:
            self.close_journal()
            self.finish(cancel=True)

    def _next_finished(self) -> Future[Any] | None:
        """Submit what the window allows, then the next batch to yield, once it is done
        (None at the end). A batch stays pending until done, so a timeout cancels it."""
        self.fill()
        if not self.pending:
            if self.exhausted or self.failed:
                return None
            if self.cancelled:  # shutdown(cancel_futures=True): as the stdlib's map
                raise cf.CancelledError(_CANCELLED)
            if self.stopped:
                raise ExecutorShutdownError(_STOPPED)
            return None
        if self.finished is None:
            future = self.pending[0][0]
            self._wait(future)
            self.pending.popleft()
            return future
        try:
            future = self.finished.get(timeout=_remaining(self.deadline))
        except queue.Empty:
            raise TimeoutError(_LATE) from None
        self.pending = deque(entry for entry in self.pending if entry[0] is not future)
        self._wait(future)
        return future

    def _ahead(self) -> int:
        """Items a rerun may read ahead to look up: a quarter of the budget's worth."""
        return int(self.budget / 4 / max(self.item_bytes, 1.0))

    def _along(self) -> Iterator[Future[Any]]:
        """The pending batches a bulk fetch may bring along: results of a quarter of the
        budget at most, since a fetch holds what it received and what it loaded at once."""
        room = self.budget / 4
        for future, items in self.pending:
            room -= items * self.result_bytes
            if room < 0:
                return
            yield future

    def _wait(self, future: Future[Any]) -> None:
        """Wait for ``future`` until the deadline; TimeoutError if it is not done by then."""
        if future in self.late:
            raise TimeoutError(_LATE)
        done, _ = cf.wait([future], _remaining(self.deadline))
        if not done:
            raise TimeoutError(_LATE)

    def _values(self, future: Future[Any]) -> Iterator[Any]:
        """A finished batch's values; on failure, those before the failing item, then the error.

        Each value leaves the batch as it is yielded, so the iterator holds no value it
        has yielded (as the stdlib's, which pops each future).
        """
        per_item = self.bytes_of.pop(future, 0.0)
        chunk = self.chunks.pop(future, None)
        try:
            batch = future.take_result()
        except BaseException:
            partial, future.partial = list(future.partial or ()), None
            if chunk is not None and self.resume is not None:
                self.resume.record(chunk, partial)
                partial = chunk.merge(partial)
            yield from self._hand_out(partial, per_item)
            raise
        self.batcher.observe(batch)
        self.yielded = True
        if batch:
            self.result_bytes = estimate(self.result_bytes, packed_size(batch[0]))
        if chunk is not None and self.resume is not None:
            self.resume.record(chunk, batch)
            batch = chunk.merge(batch)
        yield from self._hand_out(batch, per_item)

    def _hand_out(self, values: list[Any], per_item: float) -> Iterator[Any]:
        """Yield ``values``, emptying the list as it goes (no reference stays here).

        The batch leaves the window at once: ``fill`` runs only between batches.
        """
        self.in_flight -= len(values)
        self.held -= per_item * len(values)
        values.reverse()
        pop, bar = values.pop, self.bar
        if bar is None:
            while values:
                yield pop()
        else:
            while values:
                bar.update(1)
                yield pop()


_CANCELLED = (
    "map: the executor was shut down with cancel_futures=True while this map was "
    "running; its remaining items were cancelled"
)
_STOPPED = (
    "map: the executor was shut down while this map was running, so the rest of its "
    "input was not submitted; consume a map before shutdown(wait=True), or use "
    "shutdown(wait=False), after which maps made before it run to their end"
)
_LATE = "map: the next result was not ready within timeout"


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())
