"""ua.pipeline / ua.stage: composition, input order, stage options, errors,
reuse and overlap of stages."""

from __future__ import annotations

import functools
import json
import os
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
