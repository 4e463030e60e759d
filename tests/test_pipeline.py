"""ua.pipeline / ua.stage: composition, input order, stage options, errors,
reuse and overlap of stages."""

from __future__ import annotations

import functools
import json
import os
import pickle
import time
from pathlib import Path

import pytest

import unidist_api as ua


# --------------------------------------------------------------------------- tasks
def inc(x):
    return x + 1


def double(x):
    return 2 * x


def to_str(x):
    return f"<{x}>"


def explode_on_three(x):
    if x == 3:
        raise KeyError(f"stage refused item {x}")
    return x


def sleep_by_item(x):
    # later items finish first
    time.sleep(0.03 * (5 - x % 5))
    return x


def bump(path):
    p = Path(path)
    n = int(p.read_text()) + 1 if p.exists() else 1
    p.write_text(str(n))
    return n


def fail_first_attempt(x, tmpdir):
    n = bump(os.path.join(tmpdir, f"attempts-{x}"))
    if n == 1:
        raise ValueError(f"first attempt for {x}")
    return x * 100


def logged(x, stage, delay, logdir):
    start = time.time()
    time.sleep(delay)
    end = time.time()
    Path(logdir, f"{stage}-{x}.json").write_text(json.dumps([stage, x, start, end]))
    return x


def compose(*fns):
    def run(x):
        for f in fns:
            x = f(x)
        return x

    return run


# --------------------------------------------------------------------------- composition
def test_one_stage(ua_backend):
    data = range(10)
    assert list(ua.pipeline(inc)(data)) == [inc(x) for x in data]


def test_two_stages(ua_backend):
    data = range(10)
    assert list(ua.pipeline(inc, double)(data)) == [double(inc(x)) for x in data]


def test_three_stages(ua_backend):
    data = list(range(12))
    got = list(ua.pipeline(inc, double, to_str)(data))
    assert got == [compose(inc, double, to_str)(x) for x in data]


def test_stage_order_matters(ua_backend):
    data = range(5)
    assert list(ua.pipeline(double, inc)(data)) == [inc(double(x)) for x in data]
    assert list(ua.pipeline(inc, double)(data)) == [double(inc(x)) for x in data]


def test_pipeline_returns_iterator(ua_backend):
    it = ua.pipeline(inc)(range(3))
    assert iter(it) is it
    assert next(it) == 1
    assert list(it) == [2, 3]


def test_pipeline_empty_input(ua_backend):
    assert list(ua.pipeline(inc, double)([])) == []


def test_pipeline_generator_input(ua_backend):
    gen = (i for i in range(8))
    assert list(ua.pipeline(inc, double)(gen)) == [double(inc(i)) for i in range(8)]


def test_pipeline_keeps_input_order(ua_backend):
    data = list(range(10))
    got = list(ua.pipeline(sleep_by_item, inc)(data))
    assert got == [inc(x) for x in data]


def test_pipeline_with_stage_objects(ua_backend):
    data = range(9)
    p = ua.pipeline(ua.stage(inc, workers=1), double, ua.stage(to_str, workers=2))
    assert list(p(data)) == [to_str(double(inc(x))) for x in data]


def test_pipeline_single_worker_stages(ua_backend):
    data = range(6)
    p = ua.pipeline(ua.stage(inc, workers=1), ua.stage(double, workers=1))
    assert list(p(data)) == [double(inc(x)) for x in data]


def test_pipeline_stage_with_task_options(ua_backend, tmp_path):
    flaky = functools.partial(fail_first_attempt, tmpdir=str(tmp_path))
    p = ua.pipeline(inc, ua.stage(flaky, retries=1))
    assert list(p(range(4))) == [inc(x) * 100 for x in range(4)]
    for x in range(4):
        assert (tmp_path / f"attempts-{inc(x)}").read_text() == "2"


def test_pipeline_lambda_and_closure_stages(ua_backend):
    k = 5

    def plus_k(x):
        return x + k

    p = ua.pipeline(lambda x: x * 3, plus_k)
    assert list(p(range(6))) == [x * 3 + k for x in range(6)]


def test_pipeline_futures_as_items(ua_backend):
    futs = [ua.submit(double, i) for i in range(4)]
    assert list(ua.pipeline(inc)(futs)) == [inc(double(i)) for i in range(4)]


def test_pipeline_reusable(ua_backend):
    p = ua.pipeline(inc, double)
    assert list(p(range(5))) == [double(inc(x)) for x in range(5)]
    assert list(p([10, 20, 30])) == [double(inc(x)) for x in [10, 20, 30]]
    assert list(p(range(5))) == [double(inc(x)) for x in range(5)]


def test_executor_pipeline_method(ua_backend):
    p = ua_backend.pipeline(inc, to_str)
    assert list(p(range(4))) == [to_str(inc(x)) for x in range(4)]


def test_pipeline_same_as_serial(ua_backend, ua_serial):
    data = list(range(15))
    got = list(ua.pipeline(inc, double, to_str)(data))
    ref = list(ua_serial.pipeline(inc, double, to_str)(data))
    assert got == ref


# --------------------------------------------------------------------------- errors
def test_pipeline_stage_exception_propagates(ua_backend):
    p = ua.pipeline(inc, explode_on_three, double)
    with pytest.raises(KeyError, match="stage refused item 3"):
        list(p(range(6)))


def test_pipeline_first_stage_exception(ua_backend):
    with pytest.raises(KeyError, match="stage refused item 3"):
        list(ua.pipeline(explode_on_three)(range(6)))


def test_pipeline_executor_usable_after_stage_exception(ua_backend):
    with pytest.raises(KeyError):
        list(ua.pipeline(explode_on_three, inc)(range(6)))
    assert list(ua.pipeline(inc)(range(3))) == [1, 2, 3]


# --------------------------------------------------------------------------- overlap
def test_pipeline_stages_overlap(ua_backend, tmp_path):
    n_items = 6
    s1 = functools.partial(logged, stage=1, delay=0.05, logdir=str(tmp_path))
    s2 = functools.partial(logged, stage=2, delay=0.1, logdir=str(tmp_path))
    p = ua.pipeline(ua.stage(s1, workers=1), s2)
    assert list(p(range(n_items))) == list(range(n_items))

    log = {}
    for f in tmp_path.glob("*.json"):
        stage, item, start, end = json.loads(f.read_text())
        log[(stage, item)] = (start, end)
    assert set(log) == {(s, i) for s in (1, 2) for i in range(n_items)}
    for i in range(n_items):
        # an item enters stage 2 only after leaving stage 1
        assert log[(2, i)][0] >= log[(1, i)][1]

    if ua_backend.backend == "serial":
        return  # the serial backend runs one task at a time, in order
    # Some later item j was in stage 1 while an earlier item i was in stage 2.
    overlapping = [
        (i, j)
        for i in range(n_items)
        for j in range(i + 1, n_items)
        if log[(1, j)][0] < log[(2, i)][1] and log[(2, i)][0] < log[(1, j)][1]
    ]
    assert overlapping, f"stages never overlapped: {sorted(log.items())}"


# --------------------------------------------------------------------------- streaming
PULL_LIMIT = 100_000


class CountingSource:
    """An endless iterator that records how many items were pulled from it."""

    def __init__(self):
        self.pulled = 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.pulled >= PULL_LIMIT:
            raise RuntimeError("pipeline consumed far too much of an endless input")
        self.pulled += 1
        return self.pulled - 1


def slow_double(x):
    time.sleep(0.01)
    return 2 * x


@pytest.mark.parametrize("buffersize", [1, 5])
def test_pipeline_buffersize_bounds_items_inside(ua_backend, buffersize):
    src = CountingSource()
    it = ua.pipeline(inc, ua.stage(slow_double, workers=1))(src, buffersize=buffersize)
    for k in range(1, 13):
        assert next(it) == double(inc(k - 1))
        # backpressure: the slow last stage holds back how much input is read
        assert src.pulled <= k + buffersize, (k, src.pulled)
    it.close()


def test_pipeline_endless_input_default_buffersize(ua_backend):
    src = CountingSource()
    it = ua.pipeline(inc, double)(src)
    assert [next(it) for _ in range(5)] == [double(inc(i)) for i in range(5)]
    assert src.pulled < PULL_LIMIT
    it.close()
    assert list(ua.pipeline(inc)(range(3))) == [1, 2, 3]  # still usable


def counting_submits(monkeypatch, executor):
    """Count the tasks ``executor`` is given (map, pipeline and reduce submit through it)."""
    calls = []
    submit = executor._runner.submit

    def counted(task, *stream):
        calls.append(len(task.args[0]) if task.args and isinstance(task.args[0], list) else 1)
        return submit(task, *stream)

    monkeypatch.setattr(executor._runner, "submit", counted)
    return calls


def test_pipeline_batches_tiny_items_automatically(ua_backend, monkeypatch):
    calls = counting_submits(monkeypatch, ua_backend)
    n = 20_000
    got = list(ua.pipeline(inc, double, inc)(range(n)))
    assert got == [inc(double(inc(x))) for x in range(n)]
    tasks_per_stage = len(calls) / 3
    assert tasks_per_stage < n / 20, f"{len(calls)} tasks for {n} tiny items in 3 stages"


def test_pipeline_explicit_chunksize_is_the_batch_size(ua_backend, monkeypatch):
    calls = counting_submits(monkeypatch, ua_backend)
    got = list(ua.pipeline(inc, double)(range(23), chunksize=5))
    assert got == [double(inc(x)) for x in range(23)]
    assert sorted(calls) == [1] * 5 + [3, 5, 5, 5, 5]  # 5 batches in, each a future after


@pytest.mark.parametrize("chunksize", [None, 1, 3])
def test_pipeline_batches_keep_order_and_errors(ua_backend, ua_serial, chunksize):
    data = list(range(40))
    p = [sleep_by_item, inc, to_str]
    assert list(ua.pipeline(*p)(data, chunksize=chunksize)) == list(
        ua_serial.pipeline(*p)(data, chunksize=chunksize)
    )
    it = ua.pipeline(inc, explode_on_three)(range(10), chunksize=chunksize)
    got = []
    with pytest.raises(KeyError, match="item 3"):
        for value in it:
            got.append(value)
    assert got == [1, 2]  # every output before the failing item, as the builtin map
    it = ua.pipeline(explode_on_three, inc, double)(range(10), chunksize=chunksize)
    got = []
    with pytest.raises(KeyError, match="item 3"):
        for value in it:
            got.append(value)
    assert got == [double(inc(x)) for x in range(3)]  # later stages ran on items 0-2


def test_pipeline_progress_shows_a_bar_per_stage(ua_backend, capsys):
    assert list(ua.pipeline(inc, double)(range(12), progress=True)) == [
        double(inc(x)) for x in range(12)
    ]
    err = capsys.readouterr().err
    assert "stage 1 inc" in err and "stage 2 double" in err
    assert "12/12" in err


# A value that refuses to be unpickled in the driver: a pipeline on a backend with
# workers must hand it from stage to stage without ever loading it here.
DRIVER_PID = os.getpid()


def _restore(value, driver):
    if os.getpid() == driver:
        raise RuntimeError("an intermediate value was loaded in the driver")
    return Opaque(value)


class Opaque:
    def __init__(self, value):
        self.value = value

    def __reduce__(self):
        return (_restore, (self.value, DRIVER_PID))


def wrap(x):
    return Opaque(x)


def rewrap(o):
    return Opaque(o.value + 1)


def unwrap(o):
    return o.value


@pytest.mark.ua_exclude("serial", reason="serial runs every stage in the driver")
def test_pipeline_intermediate_values_never_loaded_in_driver(ua_backend):
    with pytest.raises(RuntimeError, match="loaded in the driver"):
        pickle.loads(pickle.dumps(Opaque(1)))  # the guard works here
    data = range(30)
    assert list(ua.pipeline(wrap, rewrap, unwrap)(data)) == [x + 1 for x in data]
    assert list(ua.pipeline(wrap, rewrap, unwrap)(data, chunksize=1)) == [x + 1 for x in data]


# --------------------------------------------------------------------------- batch sizes
def test_equal_one_item_tasks_keep_batches_short():
    """Tasks of one item that each take 22 ms ask for batches of about target / 22 ms.

    (Taking the quickest task's time off as the engine's overhead made them look free,
    and batches jumped to the cap: a stage's items then ran in one task, not overlapping.)
    """
    from unidist_api.mapping import Batcher

    batcher = Batcher(None, growth=4)
    for _ in range(20):
        size = batcher.next_size(Batcher.maximum)
        batcher.record_latency(0.022 * size, size)
    assert batcher.next_size(Batcher.maximum) <= int(Batcher.target / 0.02)


def test_measured_overhead_lets_tiny_batches_grow():
    from unidist_api.mapping import Batcher

    batcher = Batcher(None, growth=4)
    for _ in range(20):  # 1 ms of engine overhead, 1 us of work per item
        size = batcher.next_size(Batcher.maximum)
        batcher.record_latency(0.001 + 1e-6 * size, size, overhead=0.001)
    assert batcher.next_size(Batcher.maximum) >= 1000


# --------------------------------------------------------------------------- sequential sink
def later_first(x):
    """Items finish in reverse order within each group of 4."""
    time.sleep(0.02 * (3 - x % 4))
    return x


def append_line(path, x):
    with open(path, "a") as file:
        file.write(f"{x}\n")
    return x


@pytest.mark.parametrize("chunksize", [None, 1])
def test_a_one_worker_stage_is_a_sequential_sink(ua_backend, ua_serial, tmp_path, chunksize):
    """A workers=1 stage gets its items one at a time, in input order, on every backend."""
    path = tmp_path / "sink.txt"
    sink = ua.stage(functools.partial(append_line, str(path)), workers=1)
    got = list(
        ua_backend.pipeline(ua.stage(later_first, workers=4), sink)(range(16), chunksize=chunksize)
    )
    assert got == list(range(16))
    assert path.read_text().split() == [str(x) for x in range(16)]


def _recorded(n: int, size: int, consumed: list[int]):
    for i in range(n):
        consumed.append(i)
        yield bytes(size - 8) + i.to_bytes(8, "little")


def passthrough(x):
    return x


@pytest.mark.parametrize("size", [10_000, 2 * 2**20], ids=["10kB", "2MiB"])
def test_pipeline_holds_no_more_than_its_memory_budget(ua_backend, size):
    """Items read and not yet yielded stay within memory_budget, as in map (counted, no
    clock); an item larger than the whole budget still goes through, alone."""
    budget = 2**20
    consumed: list[int] = []
    held: list[int] = []
    with ua.Executor(ua_backend.backend, workers=ua_backend.workers, memory_budget=budget) as ex:
        pipe = ex.pipeline(passthrough, ua.stage(len, workers=1))
        for done, length in enumerate(pipe(_recorded(150, size, consumed)), 1):
            assert length == size
            held.append(len(consumed) - done)
    assert len(consumed) == 150
    assert max(held) <= max(1, budget // size) + 1


def two_mib(i):
    return bytes(2 * 2**20 - 8) + i.to_bytes(8, "little")


@pytest.mark.ua_exclude("dask", reason="Dask's client is not told the size of a task's value")
def test_pipeline_counts_large_values_between_stages_in_its_budget(ua_backend):
    """Small input and output, large values between the stages: those count too, as
    sized by the engine, so the items inside stay within the budget (counted, no clock)."""
    budget = 8 * 2**20
    consumed: list[int] = []
    held: list[int] = []

    def numbers(n):
        for i in range(n):
            consumed.append(i)
            yield i

    with ua.Executor(ua_backend.backend, workers=ua_backend.workers, memory_budget=budget) as ex:
        pipe = ex.pipeline(two_mib, len)
        for done, length in enumerate(pipe(numbers(60)), 1):
            assert length == 2 * 2**20
            held.append(len(consumed) - done)
    assert len(consumed) == 60
    # until the first value between the stages is measured, the first batches go unsized
    assert max(held[10:]) <= budget // (2 * 2**20) + 1
