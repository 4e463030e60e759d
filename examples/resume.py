"""A long map killed with SIGKILL part-way, then resumed from its checkpoint journal.

    python examples/resume.py

The first run (a child process) maps ``simulate`` over 200 seeds with
``checkpoint=PATH`` and is killed outright after 80 results, as a crash or a
``kill -9`` would end it. The second run makes the same call: it yields the recorded
results without running them, runs only the missing seeds, and yields everything in
the order of an uninterrupted run. Each call of ``simulate`` leaves a file, so the
program can tell what ran where. Any backend: ``UNIDIST_API_BACKEND=ray python ...``.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time

import unidist_api as ua

SEEDS = range(200)


def simulate(seed: int, calls: str) -> tuple[int, int]:
    """A stand-in for an expensive step: a few milliseconds of work per seed."""
    with open(os.path.join(calls, f"{seed}"), "a") as file:
        file.write(".")
    time.sleep(0.01)
    x = seed
    for _ in range(2000):
        x = (x * 1103515245 + 12345) % 2**31
    return seed, x % 1000


def run(journal: str, calls: str, kill_after: int | None = None) -> list[tuple[int, int]]:
    results = []
    for i, result in enumerate(
        ua.map(simulate, SEEDS, itertools.repeat(calls), checkpoint=journal)
    ):
        results.append(result)
        if i + 1 == kill_after:
            time.sleep(1.0)  # the journal commits at least every 0.25 s
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no atexit: a hard crash
    return results


def calls_made(calls: str) -> dict[str, int]:
    return {name: len(open(os.path.join(calls, name)).read()) for name in os.listdir(calls)}


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        journal, calls = os.path.join(folder, "simulate.journal"), os.path.join(folder, "calls")
        os.mkdir(calls)
        child = subprocess.Popen(
            [sys.executable, __file__, "--killed-run", journal, calls], start_new_session=True
        )
        child.wait()
        try:  # what the killed program had started goes with it, as with a lost machine
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        print("first run killed by SIGKILL:", child.returncode == -signal.SIGKILL)
        before = calls_made(calls)
        print("seeds it had computed: at least 80 of 200:", 80 <= len(before) < 200)
        results = run(journal, calls)
        after = calls_made(calls)
        again = [after[seed] - before.get(seed, 0) for seed in after]
        print(
            "rerun ran each missing seed once, and no recorded one:",
            set(after) == {str(s) for s in SEEDS}
            and all(n in (0, 1) for n in again)
            and sum(again) < len(SEEDS),
        )
        expected = [simulate(seed, folder) for seed in SEEDS]  # the plain-Python answer
        print("results as an uninterrupted run, in order:", results == expected)
        print("first results:", results[:4])
        print("sum of values:", sum(value for _, value in results))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--killed-run"]:
        run(sys.argv[2], sys.argv[3], kill_after=80)
    else:
        main()
