"""A user's program, type-checked by tests/test_typing.py with ``mypy --strict``.

It only uses the public API, and states the types it expects with ``assert_type`` (a
no-op at run time), so a change that loses a type (to ``Any``) or gets one wrong fails
the check. It also runs: ``python tests/typing/user_program.py`` on the serial backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, assert_type

import unidist_api as ua


def square(x: int) -> int:
    return x * x


def describe(x: int, unit: str = "m", *, precision: int = 1) -> str:
    return f"{x:.{precision}f} {unit}"


def scale(x: float, factor: float) -> float:
    return x * factor


@ua.task(retries=1)
def parse(text: str) -> int:
    return int(text)


def add(a: int, b: int) -> int:
    return a + b


def main() -> None:
    with ua.use("serial") as ex:
        assert_type(ex, ua.Executor)

        # submit: the future's type follows fn's return type
        future = ua.submit(square, 7)
        assert_type(future, ua.Future[int])
        assert_type(future.result(), int)
        assert future.result() == 49
        assert_type(ua.submit(describe, 3, "s", precision=2), ua.Future[str])
        assert_type(ua.submit(parse, "42"), ua.Future[int])  # a ua.task keeps its types
        assert_type(ex.submit(scale, 2.0, 1.5).result(), float)

        # a future (or a put handle) may stand for a value
        after = ua.submit(square, future)
        assert_type(after, ua.Future[int])
        handle = ua.put(10)
        assert_type(handle, ua.Future[int])
        assert_type(ua.submit(add, handle, future), ua.Future[int])
        assert ua.submit(add, handle, future).result() == 59

        # map: typed by fn for one to three iterables
        squares = ua.map(square, range(4))
        assert_type(squares, Iterator[int])
        assert list(squares) == [0, 1, 4, 9]
        assert_type(ua.map(scale, [1.0, 2.0], [3.0, 4.0], ordered=False), Iterator[float])
        assert_type(ex.map(describe, [1, 2], ["s", "m"]), Iterator[str])
        assert_type(list(ex.map(str, [1, 2])), list[str])

        # futures helpers
        futures = [ua.submit(square, n) for n in range(3)]
        assert_type(ua.gather(futures), list[int])
        for done in ua.as_completed(futures):
            assert_type(done.result(), int)
        finished, _ = ua.wait(futures)
        assert_type(finished, set[ua.Future[int]])

        # reductions
        assert_type(ua.reduce(add, range(10)), int)
        totals = ua.reduce_by_key(add, [("a", 1), ("b", 2), ("a", 3)])
        assert_type(totals, dict[str, int])
        assert totals == {"a": 4, "b": 2}

        # pipelines yield Any (each stage's type is not tracked)
        doubled: Iterator[Any] = ua.pipeline(square, str)(range(3))
        assert list(doubled) == ["0", "1", "4"]


if __name__ == "__main__":
    main()
    print("ok")
