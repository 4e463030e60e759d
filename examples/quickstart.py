"""The tour: submit + as_completed, a lazy map, a 3-stage pipeline and a reduce.

This program names no backend. It runs on the embedded default (a local process
pool); switch it with configuration alone, for example:

    UNIDIST_API_BACKEND=serial python examples/quickstart.py
    unidist-api run --backend local --workers 2 examples/quickstart.py

and it prints the same lines on every backend.
"""

import itertools
import math
import operator
import sys

import unidist_api as ua


def collatz_steps(n: int) -> int:
    """How many Collatz steps take n to 1: a small CPU-bound task."""
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


def tokenize(line: str) -> list[str]:
    return line.lower().split()


def count_vowels(words: list[str]) -> int:
    return sum(ch in "aeiou" for word in words for ch in word)


def label(count: int) -> str:
    return f"{count:2d} vowels"


def main() -> None:
    # 1. submit + as_completed: futures finish in any order; sort for a stable print.
    futures = {ua.submit(collatz_steps, n): n for n in (27, 97, 871, 6171)}
    done = sorted((futures[f], f.result()) for f in ua.as_completed(futures))
    print("collatz steps:", done)

    # 2. map is lazy: it pulls from an endless generator only as results are consumed.
    squares = ua.map(math.isqrt, (n * n for n in itertools.count(1)))
    print("first isqrt results:", list(itertools.islice(squares, 8)))
    print("sum of steps 1..2000:", sum(ua.map(collatz_steps, range(1, 2001))))

    # 3. a 3-stage pipeline: stages overlap, outputs keep the input order.
    lines = ["The quick brown fox", "jumps over", "the lazy dog", "unidist api"]
    for line, out in zip(lines, ua.pipeline(tokenize, count_vowels, label)(lines), strict=True):
        print(f"pipeline: {line!r:24} -> {out}")

    # 4. reduce: a tree with a fixed shape, so every backend gives identical results.
    print("reduce sum:", ua.reduce(operator.add, range(1, 10_001)))
    print("reduce float sum:", ua.reduce(operator.add, (1 / k for k in range(1, 5001))))
    print("ran on backend:", ua.current_executor().backend, file=sys.stderr)


if __name__ == "__main__":
    main()
