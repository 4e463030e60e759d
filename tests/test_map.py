"""ua.map: equality with the builtin map, laziness and buffersize, ordering,
chunksize, timeout, progress, early exit, errors and argument validation."""

from __future__ import annotations

import collections
import itertools
import time

import pytest

import unidist_api as ua


# --------------------------------------------------------------------------- tasks
def square(x):
    return x * x


def add(a, b):
    return a + b


def add3(a, b, c):
    return a + b + c


def sleepy(x, delay):
    time.sleep(delay)
    return x


def fail_on_three(x):
    if x == 3:
        raise ValueError(f"bad item {x}")
    return x * 10


# A generous cap: a `map` that tries to drain an endless iterable hits it and
# fails instead of hanging forever.
PULL_LIMIT = 100_000


class CountingSource:
    """An endless iterator that records how many items were pulled from it."""

    def __init__(self):
        self.pulled = 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.pulled >= PULL_LIMIT:
            raise RuntimeError("map consumed far too much of an endless input")
        self.pulled += 1
        return self.pulled - 1


# --------------------------------------------------------------------------- basics
@pytest.mark.parametrize("n", [0, 1, 7, 50])
def test_map_equals_builtin_map(ua_backend, n):
    assert list(ua.map(square, range(n))) == list(map(square, range(n)))


def test_map_returns_iterator(ua_backend):
    it = ua.map(square, [1, 2, 3])
    assert iter(it) is it
    assert next(it) == 1
    assert list(it) == [4, 9]


def test_map_many_tiny_items(ua_backend):
    data = list(range(500))
    assert list(ua.map(square, data)) == list(map(square, data))


def test_map_generator_input(ua_backend):
    gen = (i * 3 for i in range(20))
    assert list(ua.map(square, gen)) == [square(i * 3) for i in range(20)]


def test_map_several_iterables(ua_backend):
    a, b, c = range(10), range(100, 110), range(5, 15)
    assert list(ua.map(add3, a, b, c)) == list(map(add3, a, b, c))


def test_map_several_iterables_stop_at_shortest(ua_backend):
    assert list(ua.map(add, range(10), range(3))) == list(map(add, range(10), range(3)))
    assert list(ua.map(add, "abc", "xy")) == list(map(add, "abc", "xy"))


def test_map_shortest_with_endless_iterable(ua_backend):
    src = CountingSource()
    assert list(ua.map(add, range(5), src)) == list(map(add, range(5), range(5)))


def test_map_builtin_function(ua_backend):
    assert list(ua.map(pow, [2, 3, 4], [5, 2, 1])) == list(map(pow, [2, 3, 4], [5, 2, 1]))


def test_map_lambda(ua_backend):
    assert list(ua.map(lambda x: x - 1, range(10))) == [x - 1 for x in range(10)]


def test_map_closure(ua_backend):
    k = 7

    def f(x):
        return x * k

    assert list(ua.map(f, range(10))) == list(map(f, range(10)))


def test_executor_map_method(ua_backend):
    assert list(ua_backend.map(square, range(12))) == list(map(square, range(12)))


def test_map_futures_as_items(ua_backend):
    futs = [ua.submit(square, i) for i in range(4)]
    assert list(ua.map(add, futs, [1, 1, 1, 1])) == [square(i) + 1 for i in range(4)]


def test_map_put_handle_as_item(ua_backend):
    h = ua.put([5, 6, 7])
    assert list(ua.map(sum, [h, h])) == [18, 18]


# --------------------------------------------------------------------------- laziness / buffersize
@pytest.mark.parametrize("buffersize", [1, 4])
def test_map_lazy_with_buffersize(ua_backend, buffersize):
    src = CountingSource()
    it = ua.map(square, src, buffersize=buffersize)
    assert src.pulled <= buffersize
    got = []
    for k in range(1, 6):
        got.append(next(it))
        assert src.pulled <= k + buffersize, (k, src.pulled)
    assert got == [square(i) for i in range(5)]
    del it


def test_map_endless_input_default_buffersize(ua_backend):
    src = CountingSource()
    it = ua.map(square, src)
    got = [next(it) for _ in range(3)]
    assert got == [0, 1, 4]
    assert src.pulled < PULL_LIMIT
    del it


def test_map_endless_itertools_count(ua_backend):
    it = ua.map(square, itertools.count())
    assert [next(it) for _ in range(4)] == [0, 1, 4, 9]
    del it


def test_map_finite_input_larger_than_buffer(ua_backend):
    assert list(ua.map(square, range(30), buffersize=2)) == list(map(square, range(30)))


def test_map_endless_unordered_with_buffersize(ua_backend):
    src = CountingSource()
    it = ua.map(square, src, buffersize=3, ordered=False)
    got = [next(it) for _ in range(4)]
    assert src.pulled <= 4 + 3
    assert len(set(got)) == 4
    assert all(g in {square(i) for i in range(src.pulled)} for g in got)
    del it


# --------------------------------------------------------------------------- ordering / chunks
def test_map_unordered_same_multiset(ua_backend):
    data = [3, 1, 3, 2, 0, 5, 1, 4, 4, 9]
    got = list(ua.map(square, data, ordered=False))
    assert collections.Counter(got) == collections.Counter(map(square, data))


def test_map_unordered_with_varying_durations(ua_backend):
    delays = [0.15, 0.0, 0.05, 0.0, 0.1]
    got = list(ua.map(sleepy, range(5), delays, ordered=False))
    assert sorted(got) == list(range(5))


def test_map_ordered_with_varying_durations(ua_backend):
    delays = [0.15, 0.0, 0.05, 0.0, 0.1]
    assert list(ua.map(sleepy, range(5), delays)) == list(range(5))


@pytest.mark.parametrize("chunksize", [1, 3, 7, 100])
def test_map_chunksize_same_results(ua_backend, chunksize):
    data = range(40)
    assert list(ua.map(square, data, chunksize=chunksize)) == list(map(square, data))


@pytest.mark.parametrize("chunksize", [1, 4])
def test_map_chunksize_unordered(ua_backend, chunksize):
    data = list(range(25))
    got = list(ua.map(square, data, chunksize=chunksize, ordered=False))
    assert sorted(got) == sorted(map(square, data))


def counting_submits(monkeypatch, executor):
    """Record the batch size of every task ``executor`` is given."""
    sizes = []
    submit = executor._runner.submit

    def counted(task, *stream):
        sizes.append(len(task.args[0]))
        return submit(task, *stream)

    monkeypatch.setattr(executor._runner, "submit", counted)
    return sizes


def test_map_batches_tiny_items_automatically(ua_backend, monkeypatch):
    sizes = counting_submits(monkeypatch, ua_backend)
    n = 50_000
    assert list(ua.map(square, range(n))) == list(map(square, range(n)))
    assert sum(sizes) == n
    assert len(sizes) < n / 50, f"{len(sizes)} tasks for {n} tiny items"
    assert max(sizes) > 100


def test_map_slow_items_are_not_batched(ua_backend, monkeypatch):
    sizes = counting_submits(monkeypatch, ua_backend)
    assert list(ua.map(sleepy, range(6), [0.06] * 6)) == list(range(6))
    assert sizes == [1] * 6  # each item is longer than a batch's target duration


@pytest.mark.parametrize("ordered", [True, False])
def test_map_explicit_chunksize_is_the_batch_size(ua_backend, monkeypatch, ordered):
    sizes = counting_submits(monkeypatch, ua_backend)
    got = list(ua.map(square, range(23), chunksize=5, ordered=ordered))
    assert sorted(got) == sorted(map(square, range(23)))
    assert sizes == [5, 5, 5, 5, 3]


def test_map_batch_size_respects_buffersize(ua_backend, monkeypatch):
    sizes = counting_submits(monkeypatch, ua_backend)
    assert list(ua.map(square, range(5000), buffersize=40)) == list(map(square, range(5000)))
    assert max(sizes) <= 40


def test_map_chunksize_and_buffersize(ua_backend):
    data = range(33)
    assert list(ua.map(square, data, chunksize=4, buffersize=8)) == list(map(square, data))


# --------------------------------------------------------------------------- timeout / progress
def test_map_timeout_raises_builtin_timeout_error(ua_backend):
    it = ua.map(sleepy, ["late"], [2.0], timeout=0.2)
    with pytest.raises(TimeoutError):
        next(it)


def test_map_generous_timeout_gives_results(ua_backend):
    assert list(ua.map(square, range(6), timeout=60)) == list(map(square, range(6)))


def test_map_progress(ua_backend, capsys):
    data = range(15)
    assert list(ua.map(square, data, progress=True)) == list(map(square, data))
    assert "15/15" in capsys.readouterr().err  # tqdm's bar, on stderr


def test_map_progress_unordered(ua_backend):
    data = range(15)
    got = list(ua.map(square, data, progress=True, ordered=False))
    assert sorted(got) == sorted(map(square, data))


# --------------------------------------------------------------------------- early exit
def test_map_early_break_leaves_executor_usable(ua_backend):
    got = []
    for i, v in enumerate(ua.map(square, range(200))):
        got.append(v)
        if i == 2:
            break
    assert got == [0, 1, 4]
    assert list(ua.map(square, range(10))) == list(map(square, range(10)))
    assert ua.submit(square, 12).result() == 144


def test_map_abandoned_endless_iterator_leaves_executor_usable(ua_backend):
    it = ua.map(square, CountingSource(), buffersize=2)
    assert next(it) == 0
    del it
    assert list(ua.map(add, range(3), range(3))) == [0, 2, 4]


# --------------------------------------------------------------------------- errors
def test_map_task_exception_original_type_and_message(ua_backend):
    with pytest.raises(ValueError, match="bad item 3"):
        list(ua.map(fail_on_three, range(6)))


def test_map_exception_after_earlier_results(ua_backend):
    got = []
    with pytest.raises(ValueError, match="bad item 3"):
        for v in ua.map(fail_on_three, range(6), chunksize=1):
            got.append(v)  # noqa: PERF402 - keep what came before the error
    assert got == [0, 10, 20]


def test_map_exception_with_auto_chunks_yields_a_prefix(ua_backend):
    expected = [0, 10, 20]
    got = []
    with pytest.raises(ValueError, match="bad item 3"):
        for v in ua.map(fail_on_three, range(6)):
            got.append(v)  # noqa: PERF402 - keep what came before the error
    assert got == expected[: len(got)]


def test_map_unordered_exception(ua_backend):
    with pytest.raises(ValueError, match="bad item 3"):
        list(ua.map(fail_on_three, range(6), ordered=False))


def test_map_executor_usable_after_task_exception(ua_backend):
    with pytest.raises(ValueError):
        list(ua.map(fail_on_three, range(6)))
    assert list(ua.map(square, range(4))) == [0, 1, 4, 9]


# --------------------------------------------------------------------------- invalid arguments
@pytest.mark.parametrize("buffersize", [0, -1])
def test_map_invalid_buffersize_raises_at_call(ua_backend, buffersize):
    src = CountingSource()
    with pytest.raises(ValueError, match="buffersize"):
        ua.map(square, src, buffersize=buffersize)
    assert src.pulled == 0


@pytest.mark.parametrize("chunksize", [0, -2])
def test_map_invalid_chunksize_raises_at_call(ua_backend, chunksize):
    src = CountingSource()
    with pytest.raises(ValueError, match="chunksize"):
        ua.map(square, src, chunksize=chunksize)
    assert src.pulled == 0


def test_map_non_integer_buffersize_raises_type_error(ua_backend):
    # as Python 3.14's Executor.map(buffersize=...)
    src = CountingSource()
    with pytest.raises(TypeError, match="buffersize"):
        ua.map(square, src, buffersize=2.5)
    assert src.pulled == 0


def test_map_without_iterables_is_empty_as_executor_map(ua_backend):
    # as concurrent.futures.Executor.map(fn) (zip() of no iterables), not the builtin map
    import concurrent.futures as cf

    with cf.ThreadPoolExecutor(1) as stdlib:
        expected = list(stdlib.map(square))
    assert list(ua.map(square)) == expected == []
    assert list(ua_backend.map(square)) == expected


def test_executor_map_invalid_buffersize_raises_at_call(ua_backend):
    with pytest.raises(ValueError, match="buffersize"):
        ua_backend.map(square, range(3), buffersize=0)


def test_map_usable_after_invalid_arguments(ua_backend):
    with pytest.raises(ValueError):
        ua.map(square, range(3), chunksize=0)
    assert list(ua.map(square, range(3))) == [0, 1, 4]


def test_map_sends_one_batch_per_worker_until_a_first_result(ua_backend):
    """The first results wait for one round trip, not for 4 batches per worker to be sent."""
    consumed: list[int] = []

    def counting():
        for i in itertools.count():
            consumed.append(i)
            yield i

    it = ua_backend.map(square, counting())
    assert next(it) == 0
    assert len(consumed) <= ua_backend.workers
    assert [next(it) for _ in range(5)] == [1, 4, 9, 16, 25]
    del it


def _consumption(n: int, size: int, consumed: list[int]):
    for i in range(n):
        consumed.append(i)
        yield bytes(size - 8) + i.to_bytes(8, "little")


@pytest.mark.parametrize("size", [10_000, 2 * 2**20], ids=["10kB", "2MiB"])
def test_map_holds_no_more_than_its_memory_budget(ua_backend, size):
    """Items read and not yet yielded stay within memory_budget (counted, no clock);
    an item larger than the whole budget still goes through, alone."""
    budget = 2**20
    consumed: list[int] = []
    held: list[int] = []
    with ua.Executor(ua_backend.backend, workers=ua_backend.workers, memory_budget=budget) as ex:
        for done, length in enumerate(ex.map(len, _consumption(200, size, consumed)), 1):
            assert length == size
            held.append(len(consumed) - done)
    assert len(consumed) == 200
    assert max(held) <= max(1, budget // size) + 1


def test_finished_batches_leave_no_reference_cycles(ua_backend):
    """A batch's future, its call and its result are freed as soon as the map lets go of
    them, not when the cyclic collector runs: a cycle there kept every batch of a map
    alive (300 MB for 300k items of 1 kB on local, against a 64 MiB budget)."""
    import gc

    from unidist_api.futures import Future

    list(ua_backend.map(square, range(8), chunksize=1))  # warm: workers up, function shipped
    gc.collect()
    gc.disable()
    try:
        results = list(ua_backend.map(square, range(200), chunksize=4))
        results += [f.result() for f in [ua_backend.submit(square, i) for i in range(20)]]
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        cycles = [obj for obj in gc.garbage if isinstance(obj, Future)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert results == [x * x for x in range(200)] + [x * x for x in range(20)]
    assert cycles == []
