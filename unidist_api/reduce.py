"""``reduce``: a parallel tree whose shape depends only on the number of items.

The shape (drawn in docs/reduce.md) is the pairwise tree: neighbours are combined
level by level, ``fn(x0, x1), fn(x2, x3), ...``, an odd last node waiting for the
next level. It is built as the input streams in, like a binary counter: a stack
holds complete subtrees of sizes 2^k (k strictly decreasing); two of the same size
are combined at once; at the end the stack is folded from the right. With
``initial``, the result is ``fn(initial, tree)``.

For speed, one task reduces an aligned block of 2^k consecutive items with that same
pairwise tree; the block size adapts to the time per item, which changes what runs
in which task but never the shape, so results are bit-identical on every backend
and for any worker count.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .arguments import find_futures
from .backends.base import Task
from .futures import Future
from .runner import Runner
from .task import unwrap

__all__ = ["tree_reduce", "pairwise"]


def pairwise(fn: Callable[[Any, Any], Any], items: Sequence[Any]) -> Any:
    """The tree's value over ``items`` (non-empty), computed in this process."""
    stack: list[tuple[int, Any]] = []
    for item in items:
        level, value = 0, item
        while stack and stack[-1][0] == level:
            value = fn(stack.pop()[1], value)
            level += 1
        stack.append((level, value))
    value = stack.pop()[1]
    while stack:
        value = fn(stack.pop()[1], value)
    return value


class _Block:
    """The task that reduces one block of items; pickled once per reduce call."""

    def __init__(self, fn: Callable[[Any, Any], Any]) -> None:
        self.__wrapped__ = fn

    def __call__(self, items: list[Any]) -> Any:
        return pairwise(self.__wrapped__, items)


MISSING: Any = object()  # "no initial value" (None is a valid one)
TARGET_SECONDS = 0.05  # work per block task
MAX_BLOCK = 1 << 16


class _Alarm:
    """Rings when a task of the reduce fails, so no wait outlasts the first error.

    A combination waits for both of its inputs, so without it an early failure would
    surface only once every sibling subtree had finished (fail fast: docs/reliability.md).
    It also keeps the reduce's unfinished tasks, to cancel them when it ends.
    """

    def __init__(self) -> None:
        self.rung: cf.Future[cf.Future[Any]] = cf.Future()
        self.tasks: list[Future[Any]] = []

    def watch(self, future: Future[Any]) -> None:
        if len(self.tasks) > 64:  # keep only the unfinished ones
            self.tasks = [task for task in self.tasks if task._state != cf._base.FINISHED]
        self.tasks.append(future)
        future.add_done_callback(self._check)
        self.check()  # a backend that runs the task in submit (serial)

    def _check(self, future: cf.Future[Any]) -> None:
        if not future.cancelled() and cf.Future.exception(future, 0) is not None:
            with contextlib.suppress(cf.InvalidStateError):
                self.rung.set_result(future)

    def check(self) -> None:
        """Raise the first failed task's exception, if one failed."""
        if self.rung.done():
            self.rung.result().result()

    def wait(self, future: Future[Any]) -> None:
        """Wait until ``future`` is done or a task failed (then raise its exception)."""
        cf.wait([future, self.rung], return_when=cf.FIRST_COMPLETED)
        if future.done():  # its callback may not have run yet
            self._check(future)
        self.check()

    def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()


def tree_reduce(
    runner: Runner, fn: Callable[[Any, Any], Any], iterable: Iterable[Any], initial: Any = MISSING
) -> Any:
    fn, options = unwrap(fn)
    runner.check_options(options)
    block = _Block(fn)
    source = iter(iterable)
    stack: list[tuple[int, Future[Any]]] = []  # (log2 of subtree size, its future)
    leaves: deque[tuple[Future[Any], int, float]] = deque()  # block tasks still running
    max_leaves = 2 * runner.workers
    level, count = 0, 0  # block size is 2**level; count = items read so far
    alarm = _Alarm()

    def submit(func: Callable[..., Any], *args: Any) -> Future[Any]:
        future = runner.submit(
            Task(func, args, {}, options, deps=find_futures(args, {}), report_failure=True)
        )
        alarm.watch(future)
        return future

    try:
        while True:
            items = list(itertools.islice(source, 1 << level))
            if not items:
                break
            future = submit(block, items)
            leaves.append((future, len(items), time.monotonic()))
            count += len(items)
            if len(items) < 1 << level:  # the last, partial block: its value ends the stack
                stack.append((-1, future))
                break
            node_level = level
            while stack and stack[-1][0] == node_level:
                future = submit(fn, stack.pop()[1], future)
                node_level += 1
            stack.append((node_level, future))
            if len(leaves) >= max_leaves:
                level = _next_level(leaves, level, count, alarm)
        if not stack:
            if initial is MISSING:
                raise TypeError("reduce() of empty iterable with no initial value")
            return initial
        result = stack.pop()[1]
        while stack:
            result = submit(fn, stack.pop()[1], result)
        if initial is not MISSING:
            result = submit(fn, initial, result)
        alarm.wait(result)
        return result.result()
    finally:
        alarm.cancel()


def _next_level(
    leaves: deque[tuple[Future[Any], int, float]], level: int, count: int, alarm: _Alarm
) -> int:
    """Wait for the oldest block; grow blocks while they are quick, shrink when slow.

    A block of 2**k items must start at a multiple of 2**k, so the tree stays aligned.
    A failed task ends the reduce at once.
    """
    future, size, started = leaves.popleft()
    alarm.wait(future)
    elapsed = time.monotonic() - started
    if elapsed < TARGET_SECONDS / 2 and (1 << (level + 1)) <= MAX_BLOCK:
        if count % (1 << (level + 1)) == 0:
            return level + 1
    elif elapsed > TARGET_SECONDS * 2 and level > 0:
        return level - 1
    return level
