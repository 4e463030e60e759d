"""submit, the Future API, gather / as_completed / wait, cancellation, callbacks,
asyncio and concurrent.futures interop, futures and put handles as arguments,
and copy semantics of arguments and results.

Every test runs on each backend selected by ``--ua-backends``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
import time

import pytest

import unidist_api as ua


# --------------------------------------------------------------------------- tasks
def square(x):
    return x * x


def add(a, b=0):
    return a + b


def identity(x):
    return x


def sleepy(x, delay):
    time.sleep(delay)
    return x


def boom(msg):
    raise ValueError(msg)


def takes_fn(fn):
    # `fn` as a keyword argument of the task: submit's own first parameter is
    # positional-only, so this must reach the task.
    return fn * 2


def make_list(n):
    return list(range(n))


def append_and_return(lst, item):
    lst.append(item)
    return lst


def set_key_and_return(d, key, value):
    d[key] = value
    return d


def total_length(seq):
    return len(seq), sum(seq)


def item_at(seq, i):
    return seq[i]


class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y


def make_point(x, y):
    return Point(x, y)


# --------------------------------------------------------------------------- submit / results
def test_submit_returns_future_with_result(ua_backend):
    fut = ua.submit(square, 7)
    assert isinstance(fut, ua.Future)
    assert isinstance(fut, cf.Future)
    assert fut.result() == square(7)


def test_submit_kwargs(ua_backend):
    assert ua.submit(add, 2, b=5).result() == add(2, b=5)
    assert ua.submit(add, a=3, b=4).result() == add(a=3, b=4)


def test_submit_keyword_named_fn_reaches_task(ua_backend):
    assert ua.submit(takes_fn, fn=21).result() == takes_fn(fn=21)


def test_executor_submit_method(ua_backend):
    fut = ua_backend.submit(square, 9)
    assert isinstance(fut, ua.Future)
    assert fut.result() == square(9)


def test_submit_builtin_function(ua_backend):
    assert ua.submit(pow, 3, 4).result() == pow(3, 4)
    assert ua.submit(sorted, [3, 1, 2], reverse=True).result() == sorted([3, 1, 2], reverse=True)


def test_submit_lambda(ua_backend):
    assert ua.submit(lambda x: x + 1, 41).result() == 42


def test_submit_closure(ua_backend):
    offset = 100
    scale = 3

    def scaled(x):
        return x * scale + offset

    assert ua.submit(scaled, 5).result() == scaled(5)
    assert ua.submit(lambda x: x - offset, 150).result() == 50


def test_submit_returns_instance_of_test_module_class(ua_backend):
    p = ua.submit(make_point, 1, 2).result()
    assert isinstance(p, Point)
    assert (p.x, p.y) == (1, 2)


def test_many_submits_keep_their_own_results(ua_backend):
    futs = [ua.submit(square, i) for i in range(20)]
    assert [f.result() for f in futs] == [square(i) for i in range(20)]


# --------------------------------------------------------------------------- Future API
def test_future_state_after_success(ua_backend):
    fut = ua.submit(square, 3)
    assert fut.result() == 9
    assert fut.done() is True
    assert fut.running() is False
    assert fut.cancelled() is False
    assert fut.exception() is None
    # result() may be asked again
    assert fut.result() == 9


def test_future_exception_method(ua_backend):
    fut = ua.submit(boom, "exploded here")
    exc = fut.exception()
    assert isinstance(exc, ValueError)
    assert str(exc) == "exploded here"
    assert fut.done() is True
    assert fut.cancelled() is False
    with pytest.raises(ValueError, match="exploded here"):
        fut.result()


def test_timeouts_on_a_pending_future(ua_backend):
    slow = ua.submit(sleepy, "slow", 1.0)
    fast = ua.submit(square, 4)
    if not slow.done():
        with pytest.raises(TimeoutError):
            slow.result(timeout=0.05)
        with pytest.raises(TimeoutError):
            slow.exception(timeout=0.05)
        done, not_done = ua.wait([slow], timeout=0.05)
        assert slow in not_done and slow not in done
        with pytest.raises(TimeoutError):
            list(ua.as_completed([slow], timeout=0.05))
    assert slow.result() == "slow"
    assert fast.result() == 16
    assert list(ua.as_completed([slow], timeout=5)) == [slow]


def test_cancel_finished_future_returns_false(ua_backend):
    fut = ua.submit(square, 3)
    assert fut.result() == 9
    assert fut.cancel() is False
    assert fut.cancelled() is False
    assert fut.result() == 9


def test_cancel_queued_future_is_consistent(ua_backend):
    n = max(1, int(ua_backend.workers))
    blockers = [ua.submit(sleepy, i, 0.2) for i in range(n)]
    target = ua.submit(square, 5)
    cancelled = target.cancel()
    assert isinstance(cancelled, bool)
    if cancelled:
        assert target.cancelled() is True
        assert target.done() is True
        with pytest.raises(cf.CancelledError):
            target.result()
    else:
        assert target.cancelled() is False
        assert target.result() == 25
    assert ua.gather(blockers) == list(range(n))


# --------------------------------------------------------------------------- done callbacks
def test_add_done_callback_called_with_future(ua_backend):
    called = []
    fired = threading.Event()

    def cb(f):
        called.append(f)
        fired.set()

    fut = ua.submit(square, 6)
    fut.add_done_callback(cb)
    assert fut.result() == 36
    assert fired.wait(10), "done callback never ran"
    assert len(called) == 1
    assert called[0] is fut
    assert called[0].result() == 36


def test_add_done_callback_on_finished_future_runs_immediately(ua_backend):
    fut = ua.submit(square, 2)
    fut.result()
    seen = []
    fut.add_done_callback(lambda f: seen.append(f.result()))
    assert seen == [4]


def test_add_done_callback_on_failed_future(ua_backend):
    fired = threading.Event()
    seen = []

    def cb(f):
        seen.append(f.exception())
        fired.set()

    fut = ua.submit(boom, "cb failure")
    fut.add_done_callback(cb)
    assert fired.wait(10)
    assert isinstance(seen[0], ValueError)
    assert str(seen[0]) == "cb failure"


# --------------------------------------------------------------------- gather / as_completed / wait
def test_gather_in_order(ua_backend):
    futs = [ua.submit(square, i) for i in range(10)]
    assert ua.gather(futs) == [square(i) for i in range(10)]


def test_gather_order_independent_of_completion_order(ua_backend):
    delays = [0.15, 0.0, 0.1, 0.0]
    futs = [ua.submit(sleepy, i, d) for i, d in enumerate(delays)]
    assert ua.gather(futs) == list(range(len(delays)))


def test_gather_empty(ua_backend):
    assert ua.gather([]) == []


def test_gather_raises_task_exception(ua_backend):
    futs = [ua.submit(square, 1), ua.submit(boom, "gather failure"), ua.submit(square, 2)]
    with pytest.raises(ValueError, match="gather failure"):
        ua.gather(futs)


def test_executor_gather_method(ua_backend):
    futs = [ua_backend.submit(square, i) for i in range(5)]
    assert ua_backend.gather(futs) == [square(i) for i in range(5)]


def test_as_completed_yields_each_future_once(ua_backend):
    futs = [ua.submit(sleepy, i, d) for i, d in enumerate([0.1, 0.0, 0.05, 0.0])]
    seen = list(ua.as_completed(futs))
    assert len(seen) == len(futs)
    assert set(seen) == set(futs)
    assert sorted(f.result() for f in seen) == list(range(4))


def test_as_completed_duplicates_yielded_once(ua_backend):
    f = ua.submit(square, 3)
    g = ua.submit(square, 4)
    seen = list(ua.as_completed([f, f, g]))
    assert len(seen) == 2
    assert set(seen) == {f, g}


def test_as_completed_only_done_futures(ua_backend):
    futs = [ua.submit(square, i) for i in range(6)]
    for f in ua.as_completed(futs):
        assert f.done()


def test_wait_all_completed(ua_backend):
    futs = [ua.submit(square, i) for i in range(6)]
    done, not_done = ua.wait(futs)
    assert done == set(futs)
    assert not not_done
    assert sorted(f.result() for f in done) == sorted(square(i) for i in range(6))


def test_wait_first_completed_partitions(ua_backend):
    futs = [ua.submit(sleepy, i, 0.1 if i else 0.0) for i in range(3)]
    done, not_done = ua.wait(futs, return_when=cf.FIRST_COMPLETED)
    assert len(done) >= 1
    assert done | not_done == set(futs)
    assert not (done & not_done)
    assert all(f.done() for f in done)
    ua.wait(futs)


def test_wait_first_exception(ua_backend):
    bad = ua.submit(boom, "first exception")
    good = ua.submit(square, 2)
    done, not_done = ua.wait([bad, good], return_when=cf.FIRST_EXCEPTION)
    assert bad in done
    assert done | not_done == {bad, good}
    assert isinstance(bad.exception(), ValueError)


@pytest.mark.ua_exclude("serial", reason="serial runs each task inside submit")
def test_wait_first_exception_is_prompt(ua_backend):
    slow = ua.submit(sleepy, "slow", 5)
    bad = ua.submit(boom, "first exception")
    start = time.monotonic()
    done, not_done = ua.wait([slow, bad], return_when=cf.FIRST_EXCEPTION)
    assert time.monotonic() - start < 4, "wait(FIRST_EXCEPTION) waited for the slow task"
    assert bad in done and slow in not_done
    assert isinstance(bad.exception(), ValueError)
    assert slow.result() == "slow"
    # no failure: the same as ALL_COMPLETED
    good = [ua.submit(sleepy, i, 0.1) for i in range(3)]
    done, not_done = ua.wait(good, return_when=cf.FIRST_EXCEPTION)
    assert done == set(good) and not not_done


# --------------------------------------------------------------------------- asyncio
def test_await_future(ua_backend):
    async def main():
        return await ua.submit(square, 5)

    assert asyncio.run(main()) == 25


def test_await_future_exception(ua_backend):
    async def main():
        return await ua.submit(boom, "awaited failure")

    with pytest.raises(ValueError, match="awaited failure"):
        asyncio.run(main())


def test_asyncio_gather_of_futures(ua_backend):
    async def main():
        return await asyncio.gather(*(ua.submit(square, i) for i in range(5)))

    assert asyncio.run(main()) == [square(i) for i in range(5)]


def test_asyncio_wrap_future(ua_backend):
    async def main():
        return await asyncio.wrap_future(ua.submit(add, 1, 2))

    assert asyncio.run(main()) == 3


def test_loop_run_in_executor(ua_backend):
    async def main():
        loop = asyncio.get_running_loop()
        return await asyncio.gather(
            loop.run_in_executor(ua_backend, square, 6),
            loop.run_in_executor(ua_backend, add, 1, 2),
        )

    assert asyncio.run(main()) == [36, 3]


# ----------------------------------------------------------------------- concurrent.futures interop
def test_concurrent_futures_wait(ua_backend):
    futs = [ua.submit(square, i) for i in range(5)]
    done, not_done = cf.wait(futs, timeout=30)
    assert done == set(futs)
    assert not not_done


def test_concurrent_futures_as_completed(ua_backend):
    futs = [ua.submit(sleepy, i, d) for i, d in enumerate([0.05, 0.0, 0.0])]
    seen = list(cf.as_completed(futs, timeout=30))
    assert set(seen) == set(futs)
    assert sorted(f.result() for f in seen) == [0, 1, 2]


def test_concurrent_futures_first_completed(ua_backend):
    futs = [ua.submit(square, i) for i in range(3)]
    done, not_done = cf.wait(futs, timeout=30, return_when=cf.FIRST_COMPLETED)
    assert len(done) >= 1
    assert done | not_done == set(futs)


# --------------------------------------------------------------- futures & put handles as arguments
def test_future_as_argument(ua_backend):
    f1 = ua.submit(square, 3)
    f2 = ua.submit(add, f1, 1)
    assert f2.result() == square(3) + 1


def test_future_as_keyword_argument(ua_backend):
    f1 = ua.submit(square, 4)
    assert ua.submit(add, 1, b=f1).result() == 1 + square(4)


def test_chain_of_futures(ua_backend):
    f = ua.submit(identity, 0)
    for _ in range(5):
        f = ua.submit(add, f, 1)
    assert f.result() == 5


def test_futures_inside_list_tuple_dict_arguments(ua_backend):
    f1 = ua.submit(square, 2)
    f2 = ua.submit(square, 3)
    f3 = ua.submit(square, 4)
    got = ua.submit(identity, [f1, "x", 5]).result()
    assert got == [4, "x", 5]
    got = ua.submit(identity, (f2, 7)).result()
    assert got == (9, 7)
    assert isinstance(got, tuple)
    got = ua.submit(identity, {"a": f3, "b": 1}).result()
    assert got == {"a": 16, "b": 1}


def test_future_inside_container_in_kwargs(ua_backend):
    f1 = ua.submit(square, 5)
    got = ua.submit(set_key_and_return, {"k": f1}, "z", 0).result()
    assert got == {"k": 25, "z": 0}


def test_failed_future_as_argument_propagates(ua_backend):
    bad = ua.submit(boom, "upstream failed")
    dependent = ua.submit(identity, bad)
    with pytest.raises(ValueError, match="upstream failed"):
        dependent.result()


def test_put_returns_future_with_value(ua_backend):
    obj = {"weights": list(range(100)), "name": "model"}
    h = ua.put(obj)
    assert isinstance(h, ua.Future)
    assert h.result() == obj


def test_put_handle_as_argument_to_many_tasks(ua_backend):
    data = list(range(1000))
    h = ua.put(data)
    assert ua.submit(total_length, h).result() == total_length(data)
    futs = [ua.submit(item_at, h, i) for i in (0, 10, 999)]
    assert ua.gather(futs) == [data[0], data[10], data[999]]


def test_put_handle_inside_containers(ua_backend):
    h = ua.put([1, 2, 3])
    assert ua.submit(identity, [h, h]).result() == [[1, 2, 3], [1, 2, 3]]
    assert ua.submit(identity, (h,)).result() == ([1, 2, 3],)
    assert ua.submit(identity, {"data": h}).result() == {"data": [1, 2, 3]}


def test_put_snapshots_the_object(ua_backend):
    obj = [1, 2]
    h = ua.put(obj)
    obj.append(3)
    assert ua.submit(identity, h).result() == [1, 2]


def test_put_handle_in_executor_method(ua_backend):
    h = ua_backend.put("payload")
    assert ua_backend.submit(add, h, "!").result() == "payload!"


# --------------------------------------------------------------------------- copy semantics
def test_task_mutating_argument_does_not_affect_caller(ua_backend):
    data = [1, 2]
    got = ua.submit(append_and_return, data, 3).result()
    assert got == [1, 2, 3]
    assert data == [1, 2]

    d = {"a": 1}
    got = ua.submit(set_key_and_return, d, "b", 2).result()
    assert got == {"a": 1, "b": 2}
    assert d == {"a": 1}


def test_task_mutating_nested_argument_does_not_affect_caller(ua_backend):
    inner = [0]
    outer = [inner, inner]

    def mutate_inner(x):
        x[0].append(1)
        return x

    got = ua.submit(mutate_inner, outer).result()
    assert inner == [0]
    assert got == [[0, 1], [0, 1]]
    # identity of shared sub-objects survives the round trip
    assert got[0] is got[1]


def test_result_is_callers_own_object(ua_backend):
    data = [1, 2, 3]
    got = ua.submit(identity, data).result()
    assert got == data
    assert got is not data
    got.append(4)
    assert data == [1, 2, 3]


def test_task_mutating_put_value_does_not_affect_other_tasks(ua_backend):
    h = ua.put([1, 2])
    assert ua.submit(append_and_return, h, 3).result() == [1, 2, 3]
    assert ua.submit(identity, h).result() == [1, 2]
    assert h.result() == [1, 2]


def test_task_mutating_future_value_does_not_affect_other_tasks(ua_backend):
    f = ua.submit(make_list, 3)
    assert ua.submit(append_and_return, f, 99).result() == [0, 1, 2, 99]
    assert ua.submit(identity, f).result() == [0, 1, 2]
    assert f.result() == [0, 1, 2]
