"""Handle results as they finish: ``ua.as_completed`` over tasks of uneven length.

Each task sleeps a different time (a stand-in for uneven work: downloads, simulations
of different sizes), so they finish in an order that depends on the backend, the
number of workers and the machine's load. ``ua.as_completed`` yields each future once,
as soon as it is done, so the program can act on early results without waiting for the
slowest task. What it prints does not depend on that order: results are aggregated
(a sum, a maximum) or sorted before printing, so the output is the same on every
backend.

This program names no backend; switch it with configuration alone:

    python examples/as_completed.py                          # the local process pool
    UNIDIST_API_BACKEND=serial python examples/as_completed.py
    unidist-api run --backend ray examples/as_completed.py
"""

import time

import unidist_api as ua

# (job name, seconds of "work"): deliberately uneven, and not in order of length
JOBS = {"alpha": 0.30, "bravo": 0.05, "charlie": 0.20, "delta": 0.10, "echo": 0.25, "fox": 0.02}


def crunch(name: str, seconds: float) -> tuple[str, int]:
    """Pretend to work for ``seconds``, then return a result derived from the name."""
    time.sleep(seconds)
    return name, sum(ord(ch) for ch in name)


def main() -> None:
    # submit returns at once; keep a map from future to its input to know which is which
    futures = {ua.submit(crunch, name, seconds): name for name, seconds in JOBS.items()}

    results = {}
    total = 0
    for future in ua.as_completed(futures):
        # here each result can be used as soon as it is ready (written out, reported...);
        # the order they arrive in varies from run to run and backend to backend, so
        # only order-independent things are computed while they arrive
        name, score = future.result()
        assert name == futures[future]
        results[name] = score
        total += score
    print(f"{len(results)} jobs done, total score {total}")

    # to print per-job results deterministically, sort them (by name, or by value)
    for name in sorted(results):
        print(f"  {name:8} {results[name]}")
    best = max(results, key=lambda name: (results[name], name))
    print("best job:", best, results[best])

    # as_completed takes a timeout too: the iterator raises TimeoutError when the next
    # future is not done in time (seconds from the call), as concurrent.futures does
    quick = [ua.submit(crunch, name, 0.01) for name in ("golf", "hotel")]
    print("quick jobs:", sorted(f.result() for f in ua.as_completed(quick, timeout=60)))


if __name__ == "__main__":
    main()
