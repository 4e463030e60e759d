"""ua.reduce_by_key: the documented fixed tree (bit-identical floats on every backend, any
partition count), equality with per-key functools.reduce, first-appearance order,
stable hash partitions, range and callable partitions, bad input, lazy consumption."""

from __future__ import annotations

import functools
import operator
import os
import pickle
import random
import subprocess
import sys
import threading
import time

import pytest

import unidist_api as ua
from unidist_api import keyed
from unidist_api.reduce import pairwise

UNIT = keyed.UNIT


# --------------------------------------------------------------------------- helpers
def wide_float_pairs(n, keys, seed):
    rng = random.Random(seed)
    return [
        (f"k{rng.randrange(keys)}", rng.uniform(-1.0, 1.0) * 10.0 ** rng.randint(-12, 12))
        for _ in range(n)
    ]


def per_key(pairs):
    """Each key's values, in input order, keys in order of first appearance."""
    values = {}
    for key, value in pairs:
        values.setdefault(key, []).append(value)
    return values


def documented_tree(fn, pairs):
    """The shape docs/reduce.md draws, in plain Python: per key, a left fold inside each
    unit of UNIT pairs, then the pairwise tree over all units (absent: passed through)."""
    units = [pairs[i : i + UNIT] for i in range(0, len(pairs), UNIT)]
    folded = []
    for unit in units:
        acc = {}
        for key, value in unit:
            acc[key] = fn(acc[key], value) if key in acc else value
        folded.append(acc)
    absent = object()

    def combine(a, b):
        return b if a is absent else a if b is absent else fn(a, b)

    return {
        key: pairwise(combine, [unit.get(key, absent) for unit in folded]) for key in per_key(pairs)
    }


def hexes(result):
    return [(key, value.hex()) for key, value in result.items()]


def concat(a, b):
    return a + b


def fails_on_13(a, b):
    if a == 13 or b == 13:
        raise ValueError("13 met")
    return a + b


def slow_max(a, b):
    time.sleep(0.0002)
    return max(a, b)


def mod3(key):
    return key % 3


def still_works(executor):
    assert executor.submit(operator.add, 1, 2).result() == 3
    assert executor.reduce_by_key(operator.add, [("a", 1), ("b", 2), ("a", 3)]) == {"a": 4, "b": 2}


# ------------------------------------------------------------------- the fixed tree, bit for bit
def test_floats_bit_identical_to_serial_and_to_the_documented_tree(ua_backend, ua_serial):
    pairs = wide_float_pairs(23 * UNIT + 77, keys=300, seed=11)  # 24 units, the last partial
    got = ua.reduce_by_key(operator.add, pairs)
    assert hexes(got) == hexes(ua_serial.reduce_by_key(operator.add, pairs))
    assert hexes(got) == hexes(documented_tree(operator.add, pairs))
    assert hexes(got) != hexes(
        {k: functools.reduce(operator.add, v) for k, v in per_key(pairs).items()}
    ), "the data must tell a tree from a left fold, or this test proves little"


@pytest.mark.parametrize("partitions", [1, 2, 3, 8])
def test_partition_count_does_not_change_the_bits(ua_backend, ua_serial, partitions):
    pairs = wide_float_pairs(9 * UNIT + 5, keys=500, seed=partitions)
    ref = ua_serial.reduce_by_key(operator.add, pairs, partitions=1)
    got = ua_backend.reduce_by_key(operator.add, iter(pairs), partitions=partitions)
    assert hexes(got) == hexes(ref)


def test_task_sizes_do_not_change_the_bits(ua_backend, ua_serial, monkeypatch):
    """Blocks that stay one unit (slow target), that grow to 16 units (quick), and groups
    shrunk by a small memory budget all compute the same tree."""
    pairs = wide_float_pairs(40 * UNIT + 1, keys=50, seed=3)
    ref = hexes(ua_serial.reduce_by_key(operator.add, pairs))
    monkeypatch.setattr(keyed, "TARGET_SECONDS", 0.0)
    assert hexes(ua.reduce_by_key(operator.add, pairs)) == ref
    monkeypatch.setattr(keyed, "TARGET_SECONDS", 1e9)
    assert hexes(ua.reduce_by_key(operator.add, pairs)) == ref
    monkeypatch.setattr(ua_backend._backend, "memory_budget", 400_000)
    assert hexes(ua.reduce_by_key(operator.add, pairs)) == ref


# ------------------------------------------------------------- equal to functools.reduce per key
def test_ints_equal_per_key_functools_reduce(ua_backend):
    rng = random.Random(5)
    pairs = [(rng.randrange(1000), rng.randrange(-(10**6), 10**6)) for _ in range(3 * UNIT + 9)]
    got = ua.reduce_by_key(operator.add, pairs)
    expected = {k: functools.reduce(operator.add, v) for k, v in per_key(pairs).items()}
    assert got == expected
    assert list(got) == list(expected)  # first appearance


def test_with_initial_each_key_gets_fn_initial_tree(ua_backend):
    pairs = [(i % 7, i) for i in range(2 * UNIT + 100)]
    got = ua.reduce_by_key(operator.add, pairs, initial=1000)
    assert got == {k: functools.reduce(operator.add, v, 1000) for k, v in per_key(pairs).items()}


def test_order_of_values_and_keys_kept(ua_backend):
    """Concatenation is associative but not commutative: any reordering shows."""
    rng = random.Random(8)
    pairs = [(rng.choice("abcdefghij") * rng.randint(1, 3), f"{i};") for i in range(5 * UNIT)]
    got = ua.reduce_by_key(concat, pairs, initial="<", partitions=3)
    expected = {k: "<" + "".join(v) for k, v in per_key(pairs).items()}
    assert got == expected
    assert list(got) == list(expected)


def test_one_pair_per_key_and_fn_not_called(ua_backend):
    def never(a, b):
        raise AssertionError("fn called for a key with one value")

    pairs = [(i, -i) for i in range(UNIT + 10)]
    got = ua.reduce_by_key(never, reversed(pairs))
    assert list(got.items()) == pairs[::-1]


def test_empty_input(ua_backend):
    assert ua.reduce_by_key(operator.add, []) == {}
    assert ua.reduce_by_key(operator.add, iter(()), initial=5) == {}


def test_equal_keys_of_different_types_are_one_key(ua_backend):
    pairs = [(1, "a"), (1.0, "b"), (True, "c"), ("1", "d")] * 3000
    got = ua.reduce_by_key(concat, pairs)
    assert got == {1: "abc" * 3000, "1": "d" * 3000}


def test_executor_method_and_task_options(ua_backend):
    pairs = [(i % 5, i) for i in range(1000)]
    got = ua_backend.reduce_by_key(ua.task(operator.add, retries=1), pairs)
    assert got == {k: sum(v) for k, v in per_key(pairs).items()}


# --------------------------------------------------------------------------- partitions
def test_range_partitions(ua_backend):
    pairs = [((i * 7919) % 1000, i) for i in range(3 * UNIT)]
    expected = {k: sum(v) for k, v in per_key(pairs).items()}
    got = ua.reduce_by_key(operator.add, pairs, partition=[100, 250, 600])
    assert got == expected and list(got) == list(expected)
    assert ua.reduce_by_key(operator.add, pairs, partition=[]) == expected  # one partition


def test_range_partition_placement():
    where = keyed._partitioner([10, 20], None, 4)
    assert where.count == 3
    assert [where(k, 0) for k in (-5, 9, 10, 19, 20, 99)] == [0, 0, 1, 1, 2, 2]


def test_callable_partition(ua_backend):
    pairs = [(i % 100, float(i)) for i in range(2 * UNIT)]
    got = ua.reduce_by_key(operator.add, pairs, partition=mod3, partitions=3)
    assert got == ua.reduce_by_key(operator.add, pairs)
    assert ua.reduce_by_key(operator.add, pairs, partition=lambda k: 0, partitions=1) == got


HASH_SCRIPT = """
from unidist_api.keyed import stable_hash, _partitioner
keys = ["word", "", "é", b"bytes", ("t", 1, b"x"), 12345, -7, 2.5, None, frozenset({"a", "b"})]
where = _partitioner("hash", 7, 1)
print([stable_hash(k) for k in keys], [where(k, 0) for k in keys])
"""


def test_hash_partitions_agree_across_hash_seeds():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    outputs = set()
    for seed in ("0", "1", "4242"):
        proc = subprocess.run(
            [sys.executable, "-c", HASH_SCRIPT],
            env={**env, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        outputs.add(proc.stdout)
    assert len(outputs) == 1, outputs
    # and python's own hash() does differ between those seeds (else this proves nothing)
    salted = {
        subprocess.run(
            [sys.executable, "-c", "print(hash('word'))"],
            capture_output=True,
            text=True,
            check=True,
            env={**env, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("0", "1")
    }
    assert len(salted) == 2


def test_hash_on_the_workers_is_the_callers(ua_backend):
    keys = ["word", b"raw", ("a", 2, "b"), 10**30, 0.1, frozenset({1, "x"})]
    assert ua.gather([ua.submit(keyed.stable_hash, k) for k in keys]) == [
        keyed.stable_hash(k) for k in keys
    ]


def test_stable_hash_numbers_follow_equality():
    from decimal import Decimal
    from fractions import Fraction

    assert keyed.stable_hash(1) == keyed.stable_hash(1.0) == keyed.stable_hash(True)
    assert (
        keyed.stable_hash(Fraction(3, 2))
        == keyed.stable_hash(Decimal("1.5"))
        == keyed.stable_hash(1.5)
    )
    assert keyed.stable_hash((1, "a")) != keyed.stable_hash(("a", 1))
    assert keyed.stable_hash(frozenset({"a", "b"})) == keyed.stable_hash(frozenset({"b", "a"}))


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "bad, error, words",
    [
        (("k", 1, 2), TypeError, ["12345", "('k', 1, 2)", "2-tuple"]),
        (["k", 1], TypeError, ["12345", "['k', 1]", "2-tuple"]),
        (([1, 2], 1), TypeError, ["12345", "[1, 2]", "unhashable"]),
        ((object, 1), TypeError, ["12345", "stable hash", "callable"]),
    ],
)
def test_bad_pair_named_with_its_index(ua_backend, bad, error, words):
    pairs = [(i % 10, i) for i in range(12345)] + [bad] + [(1, 1)] * 100
    with pytest.raises(error) as got:
        ua.reduce_by_key(operator.add, pairs, partitions=2)
    for word in words:
        assert word in str(got.value)
    still_works(ua_backend)


def test_unpicklable_key_named_in_the_caller(ua_backend):
    lock = threading.Lock()
    pairs = [(i % 10, i) for i in range(5000)] + [(lock, 1)]
    with pytest.raises(TypeError, match=r"key of pair 5000, <unlocked _thread.lock") as got:
        ua.reduce_by_key(operator.add, pairs)
    assert isinstance(got.value, ua.errors.SerializationError)
    still_works(ua_backend)


def test_partition_callable_out_of_range_or_not_an_int(ua_backend):
    pairs = [(i % 10, i) for i in range(100)]
    with pytest.raises(ValueError, match=r"partition\(3\) returned 3 for pair 3, outside range"):
        ua.reduce_by_key(operator.add, pairs, partition=lambda k: k, partitions=3)
    with pytest.raises(TypeError, match=r"returned 'x' for pair 0"):
        ua.reduce_by_key(operator.add, pairs, partition=lambda k: "x", partitions=3)
    still_works(ua_backend)


def test_bad_partition_arguments_refused_before_any_task(ua_backend, monkeypatch):
    submitted = []
    monkeypatch.setattr(ua_backend._runner, "submit", lambda *a: submitted.append(a))
    pairs = [(1, 2)]
    with pytest.raises(ValueError, match="not sorted"):
        ua.reduce_by_key(operator.add, pairs, partition=[3, 1, 2])
    with pytest.raises(TypeError, match="needs partitions="):
        ua.reduce_by_key(operator.add, pairs, partition=mod3)
    with pytest.raises(ValueError, match="'hash'"):
        ua.reduce_by_key(operator.add, pairs, partition="range")
    with pytest.raises(ValueError, match="partitions must be"):
        ua.reduce_by_key(operator.add, pairs, partitions=0)
    with pytest.raises(ValueError, match="make 3 partitions"):
        ua.reduce_by_key(operator.add, pairs, partition=[1, 2], partitions=4)
    assert submitted == []
    monkeypatch.undo()
    still_works(ua_backend)


def test_task_failure_fails_fast_and_cancels(ua_backend, monkeypatch):
    """fn failing in an early block ends the call long before a huge input is read,
    and what was submitted is cancelled or finished soon after."""
    futures = []
    submit = ua_backend._runner.submit

    def recorded(task, *stream):
        future = submit(task, *stream)
        futures.append(future)
        return future

    monkeypatch.setattr(ua_backend._runner, "submit", recorded)
    read = [0]

    def pairs():
        for i in range(50_000_000):
            read[0] += 1
            yield i % 50, i

    with pytest.raises(ValueError, match="13 met"):
        ua.reduce_by_key(fails_on_13, pairs())
    assert read[0] < 3_000_000, f"read {read[0]} pairs after the failure"
    deadline = time.monotonic() + 30
    while not all(f.done() for f in futures) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(f.done() for f in futures)
    monkeypatch.undo()
    still_works(ua_backend)


# --------------------------------------------------------------------------- streaming
def _watch_blocks(ua_backend, monkeypatch):
    """Record each block task as submitted: (future, its pair count, pairs read then)."""
    blocks = []
    submit = ua_backend._runner.submit

    def recorded(task, *stream):
        future = submit(task, *stream)
        if isinstance(task.fn, keyed._Block):
            blocks.append((future, len(pickle.loads(task.args[0]))))
        return future

    monkeypatch.setattr(ua_backend._runner, "submit", recorded)
    return blocks


def test_generator_consumed_progressively(ua_backend, monkeypatch):
    blocks = _watch_blocks(ua_backend, monkeypatch)
    read = [0]
    at_submit = []
    n = 300_000

    def pairs():
        for i in range(n):
            read[0] += 1
            if len(at_submit) < len(blocks):
                at_submit.append(read[0])
            yield i % 1000, 1

    assert ua.reduce_by_key(operator.add, pairs()) == {k: n // 1000 for k in range(1000)}
    assert sum(size for _, size in blocks) == n
    assert len(blocks) >= 5
    # when the first block was submitted, only it had been read (plus the pair in hand)
    assert at_submit[0] <= blocks[0][1] + 1


def test_read_ahead_stays_within_the_memory_budget(ua_backend, monkeypatch):
    """Blocks of ~4 MB against a 2 MB budget: the caller reads one block ahead of the
    finished work at most (on serial, everything finishes in submit)."""
    monkeypatch.setattr(ua_backend._backend, "memory_budget", 2_000_000)
    blocks = _watch_blocks(ua_backend, monkeypatch)
    ahead = []

    def pairs():
        for i in range(12 * UNIT):
            done = sum(size for future, size in blocks if future.done())
            ahead.append(i - done)
            yield i % 100, i.to_bytes(1000, "big")

    got = ua.reduce_by_key(slow_max, pairs())
    last = {i % 100: i for i in range(12 * UNIT)}
    assert got == {k: i.to_bytes(1000, "big") for k, i in last.items()}
    assert max(ahead) <= 2 * UNIT + 1, max(ahead)


@pytest.mark.ua_exclude("serial", reason="serial computes every node in the caller")
def test_partials_stay_on_the_workers(ua_backend, monkeypatch):
    """Only each partition's root comes to the caller; partials go task to task."""
    loaded = []
    materialize, set_loaded = ua.Future._materialize, ua.Future.set_loaded

    def counting_materialize(self):
        loaded.append(self)
        return materialize(self)

    def counting_set_loaded(self, value):
        loaded.append(self)
        return set_loaded(self, value)

    monkeypatch.setattr(ua.Future, "_materialize", counting_materialize)
    monkeypatch.setattr(ua.Future, "set_loaded", counting_set_loaded)
    pairs = [(i % 300, i) for i in range(20 * UNIT)]
    assert ua.reduce_by_key(operator.add, pairs, partitions=2) == {
        k: sum(v) for k, v in per_key(pairs).items()
    }
    assert len(set(map(id, loaded))) <= 2, f"{len(set(map(id, loaded)))} values came back"
