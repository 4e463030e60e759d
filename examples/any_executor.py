"""A library function written for any ``concurrent.futures.Executor``, handed ours.

``render_report`` below knows nothing about unidist-api: it is typed to take a
``concurrent.futures.Executor`` and uses only what that interface offers (``submit``,
``map``, futures with ``result()``, ``concurrent.futures.as_completed``). Because
``ua.Executor`` *is* a ``concurrent.futures.Executor`` and its futures *are*
``concurrent.futures.Future`` objects, such code runs on any of our backends without a
change, and gives the same results as with the standard library's
``ThreadPoolExecutor`` (or ``ProcessPoolExecutor``).

This program names no backend; ``ua.Executor()`` takes the configured one:

    UNIDIST_API_BACKEND=serial python examples/any_executor.py
    unidist-api run --backend dask examples/any_executor.py
"""

import concurrent.futures as cf
import math

import unidist_api as ua


def prime_count(limit: int) -> int:
    """How many primes are below ``limit`` (a simple sieve: a small CPU-bound task)."""
    sieve = bytearray([1]) * limit
    sieve[:2] = b"\x00\x00"
    for n in range(2, math.isqrt(limit) + 1):
        if sieve[n]:
            sieve[n * n :: n] = bytes(len(range(n * n, limit, n)))
    return sum(sieve)


# ---- "third-party" code: it depends on the standard library's interface only ----------
def render_report(executor: cf.Executor, limits: list[int]) -> list[str]:
    """Count primes below each limit with ``executor``; one line per limit, in order."""
    counts = list(executor.map(prime_count, limits))  # map: results in input order
    largest = executor.submit(max, counts)  # submit: one call, a Future back
    done = {executor.submit(prime_count, limit): limit for limit in limits[:2]}
    checked = sorted(done[future] for future in cf.as_completed(done))  # any Future works
    return [f"pi({limit}) = {count}" for limit, count in zip(limits, counts, strict=True)] + [
        f"largest count: {largest.result()}",
        f"checked again: {checked}",
    ]


# ---------------------------------------------------------------------------------------


def main() -> None:
    limits = [10_000, 100_000, 1_000_000, 2_000_000]

    with ua.Executor() as ours:  # the configured backend: local, serial, dask, ray...
        print("ua.Executor is a concurrent.futures.Executor:", isinstance(ours, cf.Executor))
        with_ours = render_report(ours, limits)

    with cf.ThreadPoolExecutor(max_workers=2) as threads:  # the stdlib, for comparison
        with_threads = render_report(threads, limits)

    print("\n".join(with_ours))
    print("same report as with ThreadPoolExecutor:", with_ours == with_threads)


if __name__ == "__main__":
    main()
