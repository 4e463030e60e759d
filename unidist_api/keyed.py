"""``reduce_by_key``: per-key tree reductions whose shape depends only on the input.

The shape (drawn in docs/reduce.md): the input is cut into *units* of ``UNIT``
consecutive pairs (a constant); inside a unit, each key's values are folded from the
left in input order; across units, each key's unit partials are combined by the
pairwise tree over the units (``reduce.pairwise``), a unit where the key is absent
passing its neighbour through. Only the input decides which values meet in which call
of ``fn``, so the result is bit-identical on every backend, for any worker count and
any number of partitions, and equals ``functools.reduce`` per key for an associative
``fn``.

What runs where may change freely without changing that tree, as in ``reduce``:

- a *block* task reads 2^j aligned units (j adapts to the time per block) and returns
  its subtree split by partition: one pickled payload per partition, so that a later
  task of partition p unpickles only its own;
- a *group* task per partition combines the blocks of 2^k aligned units (k shrinks so
  that a group's data stays within a quarter of the memory budget);
- groups are combined per partition by a binary counter (``reduce``'s), their futures
  passed as task arguments, so partials move worker to worker on Ray and Dask; only
  each partition's root comes to the caller, which orders the keys by first appearance.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import operator
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .arguments import find_futures
from .backends.base import Task
from .errors import SerializationError
from .futures import Future
from .reduce import MISSING, _Alarm
from .runner import Runner
from .serialization import dumps, dumps_for_workers, loads
from .task import TaskOptions, unwrap

__all__ = ["reduce_by_key", "stable_hash", "fold_levels", "UNIT"]

UNIT = 4096  # pairs per unit: the tree's leaves (a constant: the shape depends on it)
MAX_LEVEL = 4  # a block task, and a group, spans at most 2**4 units
TARGET_SECONDS = 0.05  # work per block task

#: A key's partial: ``(index of its first pair in the input, combined value)``.
Entry = Sequence[Any]
Partial = dict[Any, Entry]

# -- the stable hash --------------------------------------------------------------------------
_MASK = (1 << 64) - 1
_NUMBERS = frozenset({int, bool, float, complex})
_OTHER_NUMBERS = frozenset({("fractions", "Fraction"), ("decimal", "Decimal")})  # not imported


def stable_hash(key: Any) -> int:
    """A 64-bit hash of ``key``, the same in every process and on every run.

    Python's ``hash()`` of a str or bytes is salted per process (``PYTHONHASHSEED``), so
    it cannot say which partition a key belongs to. Stable here: ``str`` (CRC-32 of its
    UTF-8 bytes), ``bytes``, ``None``, numbers (``int``, ``bool``, ``float``,
    ``complex``, ``Fraction``, ``Decimal``: Python's numeric hash, which is not salted,
    so ``1``, ``1.0`` and ``True``, one dict key, hash alike), and ``tuple`` and
    ``frozenset`` of stable keys. Any other type raises TypeError: its ``hash()`` may be
    salted or depend on the object's address (use a callable ``partition`` for those).
    """
    kind = type(key)
    if kind is str:  # CRC-32 is well mixed already (and _Partitioner.split inlines this)
        return zlib.crc32(key.encode("utf-8", "surrogatepass"))
    if kind is bytes:
        return zlib.crc32(key)
    if kind in _NUMBERS or (kind.__module__, kind.__qualname__) in _OTHER_NUMBERS:
        h = 0 if key != key else hash(key) & _MASK  # a NaN's hash is its address
    elif key is None:
        h = 0x5D5A
    elif kind is tuple:
        h = 0x345678 + len(key)
        for item in key:
            h = ((h * 1000003) ^ stable_hash(item)) & _MASK
    elif kind is frozenset:  # order-free: equal sets, whatever their iteration order
        h = 0xF5E7 + len(key)
        for item in key:
            h = (h + stable_hash(item)) & _MASK
    else:
        raise TypeError(
            f"{kind.__qualname__} has no stable hash (its hash() may differ between "
            "processes); partition='hash' takes str, bytes, None, numbers, and tuples or "
            "frozensets of these"
        )
    return _mix(h)


def _mix(h: int) -> int:
    """Spread the bits (splitmix64's finalizer), so keys 0, P, 2P... do not share a partition."""
    h = ((h ^ (h >> 33)) * 0xFF51AFD7ED558CCD) & _MASK
    h = ((h ^ (h >> 33)) * 0xC4CEB9FE1A85EC53) & _MASK
    return h ^ (h >> 33)


# -- partitions -------------------------------------------------------------------------------
class _Partitioner:
    """Which partition a key goes to: a stable hash, range boundaries, or the user's callable.

    Called in the block tasks, once per distinct key of a block; ``index`` (the key's
    first pair) only names the item in errors.
    """

    def __init__(
        self,
        count: int,
        boundaries: list[Any] | None = None,
        fn: Callable[[Any], int] | None = None,
    ) -> None:
        self.count = count
        self.boundaries = boundaries
        self.fn = fn

    def __call__(self, key: Any, index: int) -> int:
        if self.fn is not None:
            return self._checked(key, index)
        if self.boundaries is not None:
            try:
                return bisect.bisect_right(self.boundaries, key)
            except TypeError as exc:
                raise TypeError(
                    f"reduce_by_key: the key {key!r} of pair {index} cannot be compared with "
                    f"the partition boundaries ({exc}); give boundaries of the keys' type"
                ) from None
        try:  # hashed even for one partition: the same keys are refused whatever the count
            return stable_hash(key) % self.count
        except TypeError as exc:
            raise TypeError(
                f"reduce_by_key: the key {key!r} of pair {index}: {exc}; convert the keys, or "
                "pass partition=<a callable key -> int> with partitions=N"
            ) from None

    def split(self, whole: Partial) -> list[Partial]:
        """``whole``'s keys by partition (order kept); str keys hashed inline, for speed."""
        parts: list[Partial] = [{} for _ in range(self.count)]
        if self.fn is None and self.boundaries is None and set(map(type, whole)) == {str}:
            count, crc32 = self.count, zlib.crc32
            for key, entry in whole.items():  # stable_hash of a str, inline
                parts[crc32(key.encode("utf-8", "surrogatepass")) % count][key] = entry
            return parts
        for key, entry in whole.items():
            parts[self(key, entry[0])][key] = entry
        return parts

    def _checked(self, key: Any, index: int) -> int:
        assert self.fn is not None
        got = self.fn(key)
        if isinstance(got, bool) or not hasattr(got, "__index__"):
            raise TypeError(
                f"reduce_by_key: partition({key!r}) returned {got!r} for pair {index}; the "
                f"partition callable must return an int in range({self.count})"
            )
        number = operator.index(got)
        if not 0 <= number < self.count:
            raise ValueError(
                f"reduce_by_key: partition({key!r}) returned {number} for pair {index}, "
                f"outside range({self.count}); return an int in range(partitions) or pass "
                "a larger partitions="
            )
        return number


def _partitioner(partition: Any, partitions: int | None, workers: int) -> _Partitioner:
    """Check ``partition`` and ``partitions`` in the caller, before anything runs."""
    if partitions is not None and (
        isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1
    ):
        raise ValueError(
            f"reduce_by_key: partitions must be an int >= 1 or None, got {partitions!r}"
        )
    if isinstance(partition, str):
        if partition != "hash":
            raise ValueError(
                f"reduce_by_key: partition={partition!r}; give 'hash', a sorted "
                "list of boundaries, or a callable key -> int"
            )
        return _Partitioner(partitions or max(1, workers))
    if callable(partition):
        if partitions is None:
            raise TypeError(
                "reduce_by_key: a callable partition needs partitions=N, the "
                "number of partitions its results range over"
            )
        return _Partitioner(partitions, fn=partition)
    if isinstance(partition, (list, tuple)):
        boundaries = list(partition)
        try:
            ordered = all(a <= b for a, b in itertools.pairwise(boundaries))
        except TypeError as exc:
            raise TypeError(
                f"reduce_by_key: the partition boundaries cannot be compared "
                f"with each other ({exc})"
            ) from None
        if not ordered:
            raise ValueError(
                f"reduce_by_key: the partition boundaries {boundaries!r} are not "
                "sorted; pass sorted(boundaries)"
            )
        if partitions is not None and partitions != len(boundaries) + 1:
            raise ValueError(
                f"reduce_by_key: {len(boundaries)} boundaries make "
                f"{len(boundaries) + 1} partitions, not partitions={partitions}; "
                "leave partitions out"
            )
        return _Partitioner(len(boundaries) + 1, boundaries=boundaries)
    raise TypeError(
        f"reduce_by_key: partition must be 'hash', a sorted list of boundaries "
        f"or a callable key -> int, got {partition!r}"
    )


# -- the tree's pieces --------------------------------------------------------------------------
def _merge(fn: Callable[[Any, Any], Any], left: Partial, right: Partial) -> Partial:
    """Two adjacent partials, as one: a key in both gets ``fn(left's, right's)``.

    Keys stay in order of first appearance (left's, then right's new ones). Neither
    input is changed (a retried task sees them as they were).
    """
    out = dict(left)
    get = out.get
    for key, entry in right.items():
        mine = get(key)
        out[key] = entry if mine is None else (mine[0], fn(mine[1], entry[1]))
    return out


def fold_levels(merge: Callable[[Any, Any], Any], items: Iterable[tuple[int, Any]]) -> Any:
    """The binary counter over complete subtrees ``(log2 of their size, value)``.

    Two of the same level are merged at once (the older on the left); at the end the
    stack folds from the right. Level -1 marks a last, partial subtree. With every level
    0 this is ``reduce.pairwise``.
    """
    stack: list[tuple[int, Any]] = []
    for level, value in items:
        while stack and stack[-1][0] == level:
            value = merge(stack.pop()[1], value)
            level += 1
        stack.append((level, value))
    value = stack.pop()[1]
    while stack:
        value = merge(stack.pop()[1], value)
    return value


class _Block:
    """The task over 2^j units: fold each unit per key, combine the units pairwise, split
    by partition (one payload per partition). Checks each pair, naming the bad one."""

    def __init__(self, fn: Callable[[Any, Any], Any], partitioner: _Partitioner) -> None:
        self.__wrapped__ = fn
        self.partitioner = partitioner

    def __call__(self, data: bytes, start: int) -> list[bytes]:
        pairs = loads(data)
        units = [self._unit(pairs, at, start) for at in range(0, len(pairs), UNIT)]
        whole = fold_levels(
            functools.partial(_merge, self.__wrapped__), ((0, unit) for unit in units)
        )
        return [dumps(part) for part in self.partitioner.split(whole)]

    def _unit(self, pairs: list[Any], at: int, start: int) -> Partial:
        fn = self.__wrapped__
        chunk = pairs[at : at + UNIT]
        if set(map(type, chunk)) != {tuple} or set(map(len, chunk)) != {2}:  # C speed
            _check_pairs(chunk, start + at)
        acc: dict[Any, list[Any]] = {}
        get = acc.get
        try:
            for i, (key, value) in enumerate(chunk, start + at):
                entry = get(key)
                if entry is None:
                    acc[key] = [i, value]
                else:
                    entry[1] = fn(entry[1], value)
        except TypeError:
            _check_keys(chunk, start + at)  # an unhashable key, named; else fn's own error
            raise
        return acc  # type: ignore[return-value]


def _check_pairs(chunk: list[Any], start: int) -> None:
    for i, pair in enumerate(chunk, start):
        if type(pair) is not tuple or len(pair) != 2:
            raise TypeError(
                f"reduce_by_key: item {i} is {pair!r}, not a (key, value) "
                "tuple; give pairs as 2-tuples"
            )


def _check_keys(chunk: list[Any], start: int) -> None:
    for i, (key, _) in enumerate(chunk, start):
        try:
            hash(key)
        except TypeError:
            raise TypeError(
                f"reduce_by_key: the key of pair {i}, {key!r}, is unhashable "
                f"({type(key).__qualname__}); use a hashable key (a tuple "
                "instead of a list, say)"
            ) from None


class _Group:
    """The task of partition p over consecutive blocks: their counter, one partial."""

    def __init__(self, fn: Callable[[Any, Any], Any]) -> None:
        self.__wrapped__ = fn

    def __call__(self, p: int, levels: list[int], blocks: list[list[bytes]]) -> Partial:
        merge = functools.partial(_merge, self.__wrapped__)
        return fold_levels(  # type: ignore[no-any-return]
            merge,
            ((level, loads(block[p])) for level, block in zip(levels, blocks, strict=True)),
        )


class _Merge:
    """The task combining two adjacent partials of one partition."""

    def __init__(self, fn: Callable[[Any, Any], Any]) -> None:
        self.__wrapped__ = fn

    def __call__(self, left: Partial, right: Partial) -> Partial:
        return _merge(self.__wrapped__, left, right)


class _Initial:
    """The task applying ``fn(initial, tree)`` to each key of a partition's root."""

    def __init__(self, fn: Callable[[Any, Any], Any], initial: Any) -> None:
        self.__wrapped__ = fn
        self.initial = initial

    def __call__(self, root: Partial) -> Partial:
        fn, initial = self.__wrapped__, self.initial
        return {key: (entry[0], fn(initial, entry[1])) for key, entry in root.items()}


def _pack(pairs: list[Any], start: int) -> bytes:
    """Pickle a block in the caller: an unpicklable key or value is named here, the same
    on every backend (serial included), and the bytes measure what the block holds."""
    try:
        return dumps_for_workers(pairs)
    except Exception as exc:
        error = exc
    for i, pair in enumerate(pairs):
        parts = (
            (("key", pair[0]), ("value", pair[1]))
            if type(pair) is tuple and len(pair) == 2
            else (("item", pair),)
        )
        for what, obj in parts:
            try:
                dumps_for_workers(obj)
            except Exception as exc:
                raise SerializationError(
                    f"reduce_by_key: the {what} of pair {start + i}, {obj!r}, cannot be "
                    f"pickled ({exc}); keys and values go to other processes: use picklable "
                    "ones (create unpicklable objects inside fn)"
                ) from exc
    raise SerializationError(
        f"reduce_by_key: pairs {start}..{start + len(pairs) - 1} cannot be pickled ({error})"
    ) from error


# -- the caller's side -----------------------------------------------------------------------
class _Plan:
    """The submitting side of one call: blocks, groups, the per-partition counters."""

    def __init__(
        self,
        runner: Runner,
        fn: Callable[[Any, Any], Any],
        options: TaskOptions,
        partitioner: _Partitioner,
    ) -> None:
        self.runner = runner
        self.options = options
        self.count = partitioner.count
        self.block = _Block(fn, partitioner)
        self.group = _Group(fn)
        self.merge = _Merge(fn)
        self.alarm = _Alarm()
        self.budget = runner.memory_budget
        self.max_leaves = 2 * runner.workers
        self.stacks: list[list[tuple[int, Future[Any]]]] = [[] for _ in range(self.count)]
        self.leaves: deque[tuple[Future[Any], float]] = deque()  # block tasks maybe running
        self.groups: deque[tuple[list[Future[Any]], int]] = deque()  # (tasks, bytes held)
        self.held = 0  # bytes of the blocks whose group has not finished
        self.open: list[tuple[int, Future[Any]]] = []  # the group being filled
        self.open_bytes = 0
        self.units = 0  # units read so far
        self.group_start = 0  # units before the open group
        self.level = 0  # blocks span 2**level units
        self.group_level = MAX_LEVEL  # groups span 2**group_level units

    def submit(self, func: Callable[..., Any], *args: Any) -> Future[Any]:
        future = self.runner.submit(
            Task(func, args, {}, self.options, deps=find_futures(args, {}), report_failure=True)
        )
        self.alarm.watch(future)
        return future

    def run(self, source: Iterable[Any]) -> list[Future[Any]]:
        """Submit the whole tree; the roots, one per partition (none for empty input)."""
        source = iter(source)
        start = 0
        while True:
            self.alarm.check()
            size = (1 << self.level) * UNIT
            pairs = list(itertools.islice(source, size))
            if not pairs:
                break
            data = _pack(pairs, start)
            if start == 0:  # the first group already within a quarter of the budget
                self.group_level = _fitting(self.budget, len(data) / -(-len(pairs) // UNIT))
            while self.groups and self.held + len(data) > self.budget // 2:
                self._wait_group()  # the memory budget is full: let the oldest group end
            full = len(pairs) == size
            future = self.submit(self.block, data, start)
            self.leaves.append((future, time.monotonic()))
            self.held += len(data)
            self.open.append((self.level if full else -1, future))
            self.open_bytes += len(data)
            self.units += -(-len(pairs) // UNIT)
            start += len(pairs)
            if not full:
                break
            if self.units - self.group_start == 1 << self.group_level:
                self._close_group(len(data) / (1 << self.level))
            if len(self.leaves) >= self.max_leaves:
                self._next_level()
        if self.open:
            self._close_group(0.0, last=True)
        roots = []
        for stack in self.stacks:
            if stack:
                root = stack.pop()[1]
                while stack:
                    root = self.submit(self.merge, stack.pop()[1], root)
                roots.append(root)
        return roots

    def _close_group(self, unit_bytes: float, last: bool = False) -> None:
        levels = [level for level, _ in self.open]
        blocks = [future for _, future in self.open]
        tasks = [self.submit(self.group, p, levels, blocks) for p in range(self.count)]
        for stack, future in zip(self.stacks, tasks, strict=True):
            if last:
                stack.append((-1, future))
                continue
            level = self.group_level
            while stack and stack[-1][0] == level:
                future = self.submit(self.merge, stack.pop()[1], future)
                level += 1
            stack.append((level, future))
        self.groups.append((tasks, self.open_bytes))
        self.open, self.open_bytes = [], 0
        self.group_start = self.units
        if unit_bytes:  # a group's blocks held at most a quarter of the budget
            wanted = _fitting(self.budget, unit_bytes)
            if wanted < self.group_level:
                self.group_level = wanted
            elif wanted > self.group_level and self.units % (1 << (self.group_level + 1)) == 0:
                self.group_level += 1
            self.level = min(self.level, self.group_level)

    def _wait_group(self) -> None:
        tasks, size = self.groups.popleft()
        for task in tasks:
            self.alarm.wait(task)
        self.held -= size

    def _next_level(self) -> None:
        """Wait for the oldest block; grow blocks while they are quick, shrink when slow.

        A block of 2**k units starts at a multiple of 2**k units, and lies in one group.
        """
        future, started = self.leaves.popleft()
        self.alarm.wait(future)
        elapsed = time.monotonic() - started
        if elapsed < TARGET_SECONDS / 2 and self.level < self.group_level:
            if (self.units - self.group_start) % (1 << (self.level + 1)) == 0:
                self.level += 1
        elif elapsed > TARGET_SECONDS * 2 and self.level > 0:
            self.level -= 1


def _fitting(budget: int, unit_bytes: float) -> int:
    """The largest group level (at most MAX_LEVEL) whose units hold a quarter of ``budget``."""
    return min(MAX_LEVEL, int(math.log2(max(1.0, budget / 4 / max(unit_bytes, 1.0)))))


def reduce_by_key(
    runner: Runner,
    fn: Callable[[Any, Any], Any],
    pairs: Iterable[Any],
    *,
    partitions: int | None = None,
    partition: Any = "hash",
    initial: Any = MISSING,
) -> dict[Any, Any]:
    """Each key's values combined by ``fn`` along the fixed tree; keys in order of first
    appearance. See the module doc and docs/reduce.md."""
    fn, options = unwrap(fn)
    runner.check_options(options)
    if not callable(fn):
        raise TypeError(f"reduce_by_key: fn must be callable, got {fn!r}")
    partitioner = _partitioner(partition, partitions, runner.workers)
    plan = _Plan(runner, fn, options, partitioner)
    try:
        roots = plan.run(pairs)
        if initial is not MISSING:
            roots = [plan.submit(_Initial(fn, initial), root) for root in roots]
        for root in roots:
            plan.alarm.wait(root)
        if roots:
            runner.load_ready(roots[0], roots[1:])
        found = [
            (entry[0], key, entry[1]) for root in roots for key, entry in root.result().items()
        ]
    finally:
        plan.alarm.cancel()
    found.sort(key=operator.itemgetter(0))  # P sorted runs: timsort merges them
    return {key: value for _, key, value in found}
