"""ua.reduce: equality with functools.reduce for associative functions, order
preservation, initial values, empty input, and bit-identical floats."""

from __future__ import annotations

import functools
import operator
import random

import pytest

import unidist_api as ua


# --------------------------------------------------------------------------- tasks
def concat(a, b):
    return a + b


def never_called(a, b):
    raise AssertionError("fn must not be called for a single item")


def matmul2(a, b):
    # 2x2 integer matrices: associative, not commutative
    (a11, a12), (a21, a22) = a
    (b11, b12), (b21, b22) = b
    return (
        (a11 * b11 + a12 * b21, a11 * b12 + a12 * b22),
        (a21 * b11 + a22 * b21, a21 * b12 + a22 * b22),
    )


def merge_sorted(a, b):
    return sorted(a + b)


def wide_floats(n, seed):
    rng = random.Random(seed)
    return [rng.uniform(-1.0, 1.0) * 10.0 ** rng.randint(-15, 15) for _ in range(n)]


# ------------------------------------------------------------------- equality with functools.reduce
@pytest.mark.parametrize("n", [1, 2, 3, 10, 100, 257])
def test_reduce_add_ints(ua_backend, n):
    data = list(range(n))
    assert ua.reduce(operator.add, data) == functools.reduce(operator.add, data)


def test_reduce_string_concatenation_keeps_order(ua_backend):
    words = [f"{i}:" + chr(ord("a") + i % 26) for i in range(60)]
    assert ua.reduce(concat, words) == functools.reduce(concat, words)
    assert ua.reduce(operator.add, words) == "".join(words)


def test_reduce_list_concatenation(ua_backend):
    lists = [[i, -i] for i in range(40)]
    assert ua.reduce(operator.add, lists) == functools.reduce(operator.add, lists)


def test_reduce_matrix_product_keeps_order(ua_backend):
    rng = random.Random(7)
    mats = [
        ((rng.randint(-3, 3), rng.randint(-3, 3)), (rng.randint(-3, 3), rng.randint(-3, 3)))
        for _ in range(25)
    ]
    assert ua.reduce(matmul2, mats) == functools.reduce(matmul2, mats)


def test_reduce_max(ua_backend):
    rng = random.Random(3)
    data = [rng.randint(-1000, 1000) for _ in range(200)]
    assert ua.reduce(max, data) == functools.reduce(max, data)


def test_reduce_merge_sorted(ua_backend):
    rng = random.Random(11)
    runs = [sorted(rng.randint(0, 50) for _ in range(5)) for _ in range(20)]
    assert ua.reduce(merge_sorted, runs) == functools.reduce(merge_sorted, runs)


def test_reduce_generator_input(ua_backend):
    assert ua.reduce(operator.add, (i * i for i in range(50))) == sum(i * i for i in range(50))


def test_reduce_lambda(ua_backend):
    data = list(range(1, 30))
    assert ua.reduce(lambda a, b: a * b, data) == functools.reduce(operator.mul, data)


def test_executor_reduce_method(ua_backend):
    data = list(range(64))
    assert ua_backend.reduce(operator.add, data) == functools.reduce(operator.add, data)


# --------------------------------------------------------------------------- initial / edge cases
def test_reduce_with_initial(ua_backend):
    data = list(range(10))
    assert ua.reduce(operator.add, data, initial=100) == functools.reduce(operator.add, data, 100)


def test_reduce_with_initial_positional(ua_backend):
    data = list(range(10))
    assert ua.reduce(operator.add, data, 100) == functools.reduce(operator.add, data, 100)


def test_reduce_initial_comes_first(ua_backend):
    words = ["b", "c", "d", "e", "f"]
    assert ua.reduce(concat, words, initial="a") == functools.reduce(concat, words, "a")


def test_reduce_empty_with_initial_returns_initial(ua_backend):
    sentinel = ["initial"]
    assert ua.reduce(operator.add, [], initial=sentinel) == sentinel
    assert ua.reduce(operator.add, iter([]), initial=0) == 0


def test_reduce_initial_none_is_a_value(ua_backend):
    assert ua.reduce(operator.add, [], initial=None) is None


def test_reduce_empty_without_initial_raises_type_error(ua_backend):
    # functools.reduce says: "reduce() of empty iterable with no initial value"
    with pytest.raises(TypeError, match="empty") as got:
        ua.reduce(operator.add, [])
    assert "initial" in str(got.value)


def test_reduce_empty_generator_without_initial_raises_type_error(ua_backend):
    with pytest.raises(TypeError, match="empty"):
        ua.reduce(operator.add, (x for x in []))


def test_reduce_single_item(ua_backend):
    assert ua.reduce(never_called, [42]) == functools.reduce(never_called, [42])
    assert ua.reduce(never_called, ["only"]) == "only"


def test_reduce_single_item_with_initial(ua_backend):
    assert ua.reduce(operator.add, [5], initial=1) == functools.reduce(operator.add, [5], 1)
    assert ua.reduce(concat, ["b"], initial="a") == "ab"


# --------------------------------------------------------------------------- floats
def test_reduce_floats_bit_identical_to_serial(ua_backend, ua_serial):
    values = wide_floats(1000, seed=20240601)
    got = ua.reduce(operator.add, values)
    ref = ua_serial.reduce(operator.add, values)
    assert isinstance(got, float)
    assert got.hex() == ref.hex()


def test_reduce_floats_with_initial_bit_identical_to_serial(ua_backend, ua_serial):
    values = wide_floats(333, seed=5)
    got = ua.reduce(operator.add, values, initial=0.1)
    ref = ua_serial.reduce(operator.add, values, initial=0.1)
    assert got.hex() == ref.hex()


@pytest.mark.parametrize("n", [2, 7, 64, 129, 1000])
def test_reduce_float_shape_independent_of_backend(ua_backend, ua_serial, n):
    values = wide_floats(n, seed=n)
    got = ua_backend.reduce(operator.add, values)
    ref = ua_serial.reduce(operator.add, values)
    assert got.hex() == ref.hex()


def test_reduce_float_product_bit_identical_to_serial(ua_backend, ua_serial):
    rng = random.Random(99)
    values = [1.0 + rng.uniform(-1e-3, 1e-3) for _ in range(500)]
    got = ua.reduce(operator.mul, values)
    ref = ua_serial.reduce(operator.mul, values)
    assert got.hex() == ref.hex()


def test_reduce_floats_deterministic_between_calls(ua_backend):
    values = wide_floats(800, seed=1)
    first = ua.reduce(operator.add, values)
    second = ua.reduce(operator.add, values)
    assert first.hex() == second.hex()


def test_reduce_floats_same_for_list_and_generator(ua_backend, ua_serial):
    values = wide_floats(300, seed=2)
    got = ua.reduce(operator.add, iter(values))
    ref = ua_serial.reduce(operator.add, values)
    assert got.hex() == ref.hex()


# --------------------------------------------------------------------------- streaming
def slow_concat(a, b):
    import time

    time.sleep(0.002)
    return a + b


@pytest.mark.ua_exclude("serial", reason="serial computes every node in the driver")
def test_reduce_partial_results_never_loaded_in_driver(ua_backend, monkeypatch):
    """Only the final value comes to the caller; partial sums go task to task."""
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
    words = [[i] for i in range(300)]
    assert ua.reduce(slow_concat, words) == list(range(300))
    assert len(set(map(id, loaded))) <= 1, f"{len(loaded)} values came to the driver"


def test_reduce_consumes_a_long_generator_with_bounded_tasks(ua_backend, monkeypatch):
    submitted = []
    submit = ua_backend._runner.submit

    def counted(task, *stream):
        submitted.append(task)
        return submit(task, *stream)

    monkeypatch.setattr(ua_backend._runner, "submit", counted)
    n = 100_000
    assert ua.reduce(operator.add, (i for i in range(n))) == sum(range(n))
    leaves = [t for t in submitted if t.args and isinstance(t.args[0], list)]
    assert sum(len(t.args[0]) for t in leaves) == n
    assert len(leaves) < n / 20, "tiny items must be reduced in blocks"
