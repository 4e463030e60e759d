"""Alternating measurements: each round runs every contender once, so noise hits all alike.

A contender is a callable that performs one measurement and returns its number (seconds
per task, an efficiency, ...). Each one is warmed up first; the reported value is the
median over the rounds. A contender that raises, or gives no answer within ``TIMEOUT``
(an engine that lost all its workers waits forever), is reported with its error and
dropped from the later rounds; the others go on.
"""

from __future__ import annotations

import gc
import random
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["Measured", "alternate", "bounded", "fit", "probe", "timed", "log", "TIMEOUT"]

TIMEOUT = 180.0  # seconds one measurement may take before it counts as hung

_START = time.monotonic()
verbose = False  # set by --verbose: print the traceback of a failing contender


def log(message: str) -> None:
    """A progress line on stderr, stamped with the seconds since the suite started."""
    print(f"[{time.monotonic() - _START:6.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass
class Measured:
    samples: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples and not self.error else None


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= 300 else text[:297] + "..."


def alternate(
    contenders: Mapping[str, Callable[[], float]], repeats: int, *, warmup: int = 1, label: str = ""
) -> dict[str, Measured]:
    """Warm every contender up, then ``repeats`` rounds of one measurement each.

    The first round runs in the given order, later ones in a shuffled order (seeded, so
    a rerun shuffles alike): a contender that leaves its engine busy for a while after
    it (unidist's per-item maps leave Ray busy for a second) then slows a different
    neighbour in each round, which the median discards, instead of always the same one.
    """
    results = {name: Measured() for name in contenders}
    names = list(contenders)

    def run(name: str, keep: bool) -> None:
        gc.collect()
        try:
            value = bounded(contenders[name], TIMEOUT)
        except Exception as exc:  # one contender failing must not stop the others
            results[name].error = _describe(exc)
            log(f"{label}: {name} failed, skipped: {results[name].error}")
            if verbose:
                traceback.print_exc()
            return
        if keep:
            results[name].samples.append(value)

    for _ in range(warmup):
        for name in names:
            if results[name].error is None:
                run(name, keep=False)
    for round_ in range(repeats):
        order = list(names)
        if round_:
            random.Random(round_).shuffle(order)
        for name in order:
            if results[name].error is None:
                run(name, keep=True)
        log(f"{label}: round {round_ + 1}/{repeats} done")
    return results


def bounded(fn: Callable[[], T], timeout: float) -> T:
    """``fn()``, run in a daemon thread; TimeoutError if it has not returned by ``timeout``.

    A hung call is abandoned (its thread stays blocked, harmlessly), so one stuck engine
    cannot stop the whole suite.
    """
    outcome: list[tuple[bool, Any]] = []

    def call() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:
            outcome.append((False, exc))

    thread = threading.Thread(target=call, name="benchmark-measurement", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        raise TimeoutError(f"no answer within {timeout:g} s (is the engine stuck?)")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn()`` takes, by the wall clock."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def fit(per_unit: float, budget: float, lo: int, hi: int) -> int:
    """How many units (tasks, items) take about ``budget`` seconds, within ``[lo, hi]``.

    Used for the slow contenders, so the suite keeps to its time on a slow or busy
    machine; rounded to two significant digits, so the n printed reads well.
    """
    n = int(budget / max(per_unit, 1e-9))
    n = max(lo, min(hi, n))
    digits = len(str(n)) - 2
    if digits > 0:
        n = int(round(n, -digits))
    return max(lo, min(hi, n))


def probe(measure_n: Callable[[int], float], n: int) -> float:
    """Seconds per unit of ``measure_n(n)``, which returns the seconds ``n`` units took."""
    return bounded(lambda: measure_n(n), TIMEOUT) / n
