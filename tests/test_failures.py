"""A failing item ends map and pipeline as it ends the builtin map: every result before
it is yielded, in order, then its own exception is raised, identically on every backend."""

from __future__ import annotations

import pytest

import unidist_api as ua


def fail_at_40(x):
    if x == 40:
        raise ValueError(f"bad item {x}")
    return x * 2


def fail_at_33(x):
    if x == 33:
        raise KeyError(x)
    return x + 1


def _prefix_then_error(iterator):
    out = []
    with pytest.raises(Exception) as info:
        for value in iterator:
            out.append(value)
    return out, type(info.value), str(info.value)


@pytest.mark.parametrize("chunksize", [None, 1, 7, 64])
def test_map_yields_every_result_before_the_failing_item(ua_backend, chunksize):
    expected = _prefix_then_error(map(fail_at_40, range(100)))
    got = _prefix_then_error(ua.map(fail_at_40, range(100), chunksize=chunksize))
    assert got == expected


def test_map_failure_leaves_executor_usable(ua_backend):
    with pytest.raises(ValueError):
        list(ua.map(fail_at_40, range(100)))
    assert list(ua.map(abs, [-1, -2])) == [1, 2]


@pytest.mark.parametrize("stages", [(abs, fail_at_40), (fail_at_40, abs), (fail_at_40, fail_at_33)])
def test_pipeline_chunk1_yields_every_output_before_the_failing_item(ua_backend, stages):
    def plain(x):
        for fn in stages:
            x = fn(x)
        return x

    expected = _prefix_then_error(map(plain, range(100)))
    got = _prefix_then_error(ua.pipeline(*stages)(range(100)))
    assert got == expected


@pytest.mark.parametrize("chunksize", [3, 7])
def test_pipeline_batched_failure_is_the_same_on_every_backend(ua_backend, ua_serial, chunksize):
    stages = (fail_at_33, fail_at_40)
    got = _prefix_then_error(ua.pipeline(*stages)(range(100), chunksize=chunksize))
    reference = _prefix_then_error(ua_serial.pipeline(*stages)(range(100), chunksize=chunksize))
    assert got == reference
    assert got[1] is KeyError
