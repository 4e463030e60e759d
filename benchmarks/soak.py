"""``python -m benchmarks.soak [--minutes 20] [--backends local,dask,ray] [--kill-every 4]``.

A long run under faults, outside the unit tests: on each backend in turn it alternates
maps, pipelines and reduces of random sizes while a killer thread SIGKILLs a random
worker process (one whose pid a task reported) every few seconds. Every result is
checked against plain Python (builtin ``map``, ``functools.reduce``). It reports, per
backend, the tasks run, workers killed, results lost (must be 0: a run with any lost
result exits with status 1) and the driver's memory at start (engine started) and end,
and writes JSON. A round that makes no progress for 5 minutes is a hang: the soak
prints every thread's stack and exits with status 2.
"""

from __future__ import annotations

import argparse
import faulthandler
import functools
import json
import os
import random
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import unidist_api as ua

from .child import ROOT
from .measure import log
from .tasks import soak_add, soak_minus, soak_square, soak_triple

BACKENDS = ("local", "dask", "ray")
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "soak.json"


@dataclass
class Report:
    backend: str
    seconds: float = 0.0
    rounds: int = 0
    tasks: int = 0  # items through map, pipeline stages and reduce inputs
    kills: int = 0
    lost: int = 0  # items whose result was missing or wrong
    errors: list[str] = field(default_factory=list)
    rss_start_mb: float = 0.0
    rss_end_mb: float = 0.0


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Killer(threading.Thread):
    """SIGKILLs a random live worker (from the pids tasks reported) every ``every`` s."""

    def __init__(self, every: float, seed: int) -> None:
        super().__init__(daemon=True, name="soak-killer")
        self.every = every
        self.random = random.Random(seed)
        self.pids: set[int] = set()
        self.kills = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.random.uniform(0.5, 1.5) * self.every):
            alive = [pid for pid in list(self.pids) if pid != os.getpid() and _alive(pid)]
            if not alive:
                continue
            pid = self.random.choice(alive)
            try:
                os.kill(pid, signal.SIGKILL)
                self.kills += 1
            except ProcessLookupError:
                pass
            self.pids.discard(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _mismatches(got: list[int], want: list[int]) -> int:
    """Items missing from ``got`` or different from ``want``."""
    return sum(a != b for a, b in zip(got, want, strict=False)) + abs(len(want) - len(got))


def _round(ex: ua.Executor, kind: str, rng: random.Random, killer: Killer, report: Report) -> None:
    """One map, pipeline or reduce checked against plain Python; lost items counted."""
    n = rng.randint(100, 2000)
    items = list(range(rng.randint(0, 10_000), 0, -1))[:n]
    try:
        if kind == "map":
            got = list(ex.map(soak_square, items, ordered=rng.random() < 0.7))
            killer.pids.update(pid for _, pid in got)
            values = sorted(value for value, _ in got)
            want = sorted(x * x for x in items)
            report.lost += _mismatches(values, want)
            report.tasks += len(items)
        elif kind == "pipeline":
            pipe = ex.pipeline(soak_triple, ua.stage(soak_minus, workers=1), soak_triple)
            got = list(pipe(items))
            want = [3 * (3 * x - 7) for x in items]  # what the three stages compute
            report.lost += _mismatches(got, want)
            report.tasks += 3 * len(items)
        else:
            got_sum = ex.reduce(soak_add, items, 0)
            report.lost += int(got_sum != functools.reduce(lambda a, b: a + b, items, 0))
            report.tasks += len(items)
    except Exception as exc:  # a round that fails loses all its items
        report.lost += n
        report.errors.append(f"{kind}: {type(exc).__name__}: {exc}"[:300])
        log(f"  {kind} failed: {type(exc).__name__}: {exc}"[:200])


ROUND_LIMIT = 300.0  # seconds one round may take before the soak counts it as hung


class HangWatch(threading.Thread):
    """Ends the soak, with every thread's stack, when a round outlasts ROUND_LIMIT.

    A hang is a failure the soak must report, not sit in: exit status 2.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True, name="soak-hang-watch")
        self.last = time.monotonic()
        self.what = "starting"
        self.stop = threading.Event()

    def beat(self, what: str) -> None:
        self.last, self.what = time.monotonic(), what

    def run(self) -> None:
        while not self.stop.wait(5):
            if time.monotonic() - self.last > ROUND_LIMIT:
                log(f"HUNG: no progress for {ROUND_LIMIT:g} s in {self.what}; stacks follow")
                faulthandler.dump_traceback(all_threads=True)
                os._exit(2)


def soak(backend: str, seconds: float, kill_every: float, seed: int) -> Report:
    report = Report(backend)
    rng = random.Random(seed)
    start = time.monotonic()
    ex = ua.Executor(backend, workers=2)
    killer = Killer(kill_every, seed)
    watch = HangWatch()
    watch.start()
    try:
        killer.pids.update(pid for _, pid in ex.map(soak_square, range(20)))
        report.rss_start_mb = _rss_mb()  # the engine started and warmed up
        killer.start()
        while time.monotonic() - start < seconds:
            kind = ("map", "pipeline", "reduce")[report.rounds % 3]
            watch.beat(f"{backend} round {report.rounds + 1} ({kind})")
            _round(ex, kind, rng, killer, report)
            report.rounds += 1
            if report.rounds % 10 == 0:
                log(
                    f"{backend}: {report.rounds} rounds, {report.tasks} tasks, "
                    f"{killer.kills} kills, {report.lost} lost, rss {_rss_mb():.0f} MB"
                )
    finally:
        killer.stop.set()
        killer.join()
        report.kills = killer.kills
        watch.beat(f"{backend} shutdown")
        ex.shutdown()
        watch.stop.set()
    report.seconds = time.monotonic() - start
    report.rss_end_mb = _rss_mb()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument(
        "--minutes",
        type=float,
        default=20.0,
        help="total length, shared evenly by the backends (default 20)",
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"comma-separated (default {','.join(BACKENDS)})",
    )
    parser.add_argument(
        "--kill-every",
        type=float,
        default=4.0,
        help="mean seconds between two worker kills (default 4)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.backends.split(",") if name.strip()]
    unknown = sorted(set(names) - set(BACKENDS))
    if unknown:
        parser.error(f"unknown backend(s) {', '.join(unknown)}; known: {', '.join(BACKENDS)}")
    share = args.minutes * 60 / len(names)
    reports = []
    for name in names:
        log(f"soak: {name} for {share:.0f} s, a worker killed every ~{args.kill_every:g} s")
        reports.append(soak(name, share, args.kill_every, args.seed))
    print(f"\n== Soak: {args.minutes:g} min, a worker killed every ~{args.kill_every:g} s ==")
    print(
        f"{'backend':8} {'rounds':>7} {'tasks':>9} {'kills':>6} {'lost':>5} "
        f"{'rss start':>10} {'rss end':>8}"
    )
    for r in reports:
        print(
            f"{r.backend:8} {r.rounds:>7} {r.tasks:>9,} {r.kills:>6} {r.lost:>5} "
            f"{r.rss_start_mb:>8.0f}MB {r.rss_end_mb:>6.0f}MB"
        )
        for error in r.errors[:5]:
            print(f"   {error}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps([asdict(r) for r in reports], indent=2))
    print(f"\nwrote {args.json}")
    lost = sum(r.lost for r in reports)
    print("PASS: no result lost" if not lost else f"FAIL: {lost} results lost")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
