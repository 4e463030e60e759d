"""The streaming benchmark's pipeline grid: its axes, the cells it runs, and their bound.

Axes (the issue's): executor slots W in {2, 6}; for each of the 3 stages its
``ua.stage(fn, workers=w)`` with w in {1, 2, unset} and its time per item t in
{5, 20, 100} ms; the kind of work, ``sleep`` (``time.sleep``) or ``cpu`` (a busy loop
until the task's thread used t of CPU); items in {20, 60, 1000}. The full cross
product (2 x 3^3 x 3^3 x 2 x 3 = 8,748 cells) is far too long to run, so:

- **feasible cells**: only cells whose bound (below, with the backend's W) is at most
  ``MAX_BOUND`` = 4 s are candidates;
- **full run: a pairwise covering design.** Every pair of values of two different axes
  that some feasible cell holds is held by at least one chosen cell (greedy, as AETG:
  repeatedly take the candidate holding the most pairs not held yet; ties go to the
  smaller bound, then to the first in a fixed order), then the ``ANCHORS`` (uniform
  stages: every stage as long, no per-stage limit) are added if missing. Pairs that
  no feasible cell holds (1000 items with W = 2, with a 100 ms or 20 ms stage, with a
  ``workers=1`` stage, or with CPU-bound work: each makes the bound over 4 s) are left
  out; ``python -m benchmarks.streaming_grid`` prints the design and those pairs.
- **--quick: a value covering.** Every value of every axis in at least one cell, the
  bound at most ``QUICK_MAX_BOUND``, greedily as above.

The bound (a lower bound on the wall time of any scheduler, used as wall / bound):
the backend has W task slots (1 on serial; a sleeping task holds a slot, not a core);
CPU-bound work also has only C = the machine's cores (``os.sched_getaffinity``), so
for it the slots are ``S = min(W, C)``, else ``S = W``. Stage s may run at most
``L_s = min(w_s or W, S)`` tasks at once (unset = W, as the library does). For every
non-empty set A of stages: the work ``items * sum(t_s for s in A)`` runs at a rate of
at most ``min(S, sum(L_s for s in A))`` tasks at once, cannot start before the first
item went through the stages before A's first one, and the last item still has the
stages after A's last one to go through:

    bound_A = items * sum_A(t_s) / min(S, sum_A(L_s)) + sum(t_r, r < min A)
              + sum(t_r, r > max A)
    bound   = max over the 7 sets A of bound_A

A = {s} gives docs/performance.md's per-stage term (``items * t_s / min(w_s, W) +
sum(t) - t_s``); A = all stages gives its capacity term ``items * sum(t) / W``, here
with ``min(W, sum L_s)`` when the stages' own limits add up to fewer than W slots,
and with C instead of W for CPU-bound work; the other sets cover a pair of stages
that together have fewer slots than W. On serial (W = 1) it is ``items * sum(t)``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Cell", "bound", "cores", "design", "MAX_BOUND", "QUICK_MAX_BOUND"]

WORKERS = (2, 6)
STAGE_WORKERS: tuple[int | None, ...] = (1, 2, None)
TIMES = (0.005, 0.02, 0.1)
KINDS = ("sleep", "cpu")
ITEMS = (20, 60, 1000)
MAX_BOUND = 4.0
QUICK_MAX_BOUND = 2.6  # 1000 items cannot go below 2.5 s (15 ms of work each on 6 slots)


def cores() -> int:
    """The cores this process may run on (CPU-bound work cannot use more at once)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Cell:
    """One pipeline to run: W, and per stage (seconds per item, workers=)."""

    workers: int
    stages: tuple[tuple[float, int | None], ...]
    kind: str
    items: int

    def bound(self, slots: int | None = None) -> float:
        """The lower bound with ``slots`` task slots (default: the cell's W)."""
        return bound(
            self.stages, self.items, slots or self.workers, cores() if self.kind == "cpu" else None
        )

    @property
    def label(self) -> str:
        shape = " ".join(f"{t * 1000:g}" + (f"/w{w}" if w else "") for t, w in self.stages)
        return f"W={self.workers} {self.kind:5} {self.items:>4} x [{shape}] ms"

    def values(self) -> tuple[object, ...]:
        """The cell's value on each axis (for the covering)."""
        return (
            self.workers,
            *(w for _, w in self.stages),
            *(t for t, _ in self.stages),
            self.kind,
            self.items,
        )


AXES = ("W", "w1", "w2", "w3", "t1", "t2", "t3", "kind", "items")


def bound(
    stages: Sequence[tuple[float, int | None]], items: int, slots: int, cpu_cores: int | None = None
) -> float:
    """The lower bound on the wall time (module doc); ``cpu_cores`` for CPU-bound work."""
    usable = slots if cpu_cores is None else min(slots, cpu_cores)
    limits = [min(w or slots, usable) for _, w in stages]
    times = [t for t, _ in stages]
    best = 0.0
    n = len(stages)
    for size in range(1, n + 1):
        for chosen in itertools.combinations(range(n), size):
            rate = min(usable, sum(limits[s] for s in chosen))
            work = items * sum(times[s] for s in chosen) / rate
            best = max(best, work + sum(times[: chosen[0]]) + sum(times[chosen[-1] + 1 :]))
    return best


def _all_cells() -> list[Cell]:
    cells = []
    for w, ws, ts, kind, items in itertools.product(
        WORKERS,
        itertools.product(STAGE_WORKERS, repeat=3),
        itertools.product(TIMES, repeat=3),
        KINDS,
        ITEMS,
    ):
        cells.append(Cell(w, tuple(zip(ts, ws, strict=True)), kind, items))
    return cells


# uniform shapes added to the covering (if missing): one per task length and kind
ANCHORS = (
    Cell(6, ((0.005, None),) * 3, "sleep", 1000),  # many short tasks on many slots
    Cell(6, ((0.005, None),) * 3, "cpu", 60),
    Cell(2, ((0.005, None),) * 3, "sleep", 60),
    Cell(2, ((0.02, None),) * 3, "sleep", 60),
    Cell(6, ((0.02, None),) * 3, "cpu", 60),
    Cell(6, ((0.1, None),) * 3, "sleep", 20),
    Cell(2, ((0.005, None),) * 3, "cpu", 60),
    Cell(2, ((0.1, None),) * 3, "sleep", 20),
)


def _pairs(cell: Cell) -> frozenset[tuple[int, object, int, object]]:
    v = cell.values()
    return frozenset((i, v[i], j, v[j]) for i, j in itertools.combinations(range(len(v)), 2))


def _singles(cell: Cell) -> frozenset[tuple[int, object]]:
    return frozenset(enumerate(cell.values()))


def _greedy(
    candidates: list[Cell], keys: dict[Cell, frozenset[object]], limit: dict[Cell, float]
) -> list[Cell]:
    wanted: set[object] = set().union(*keys.values()) if keys else set()
    chosen: list[Cell] = []
    while wanted:
        best = max(candidates, key=lambda c: (len(keys[c] & wanted), -limit[c]))
        if not keys[best] & wanted:
            break
        chosen.append(best)
        wanted -= keys[best]
    return chosen


def design(quick: bool = False) -> list[Cell]:
    """The cells to run, cheapest first within each W (deterministic)."""
    limit_s = QUICK_MAX_BOUND if quick else MAX_BOUND
    cells = _all_cells()
    limit = {c: c.bound() for c in cells}
    candidates = [c for c in cells if limit[c] <= limit_s]
    cover = _singles if quick else _pairs
    keys: dict[Cell, frozenset[object]] = {c: cover(c) for c in candidates}
    chosen = _greedy(candidates, keys, limit)
    if not quick:
        chosen += [a for a in ANCHORS if a not in chosen and a.bound() <= limit_s]
    return sorted(chosen, key=lambda c: (c.workers, c.bound(), c.label))


def uncovered(cells: Iterable[Cell]) -> list[str]:
    """Pairs of axis values that no feasible cell holds (so the design cannot)."""
    feasible = [c for c in _all_cells() if c.bound() <= MAX_BOUND]
    every = set().union(*(_pairs(c) for c in _all_cells()))
    held = set().union(*(_pairs(c) for c in feasible))
    missing = sorted(every - held, key=repr)
    got = set().union(*(_pairs(c) for c in cells))
    assert held <= got, "the design misses a feasible pair"
    return [f"{AXES[i]}={a} & {AXES[j]}={b}" for i, a, j, b in missing]


def main() -> None:
    """Print both designs with their bounds (and serial's), and the pairs left out."""
    for quick in (False, True):
        cells = design(quick)
        total = sum(c.bound() for c in cells)
        print(f"{'quick' if quick else 'full'}: {len(cells)} cells, bounds sum {total:.1f} s")
        for c in cells:
            print(f"  {c.label:40} bound {c.bound():6.2f} s   serial {c.bound(1):7.2f} s")
    left = uncovered(design())
    print(f"{len(left)} pairs held by no cell with bound <= {MAX_BOUND:g} s, e.g.:")
    for pair in left[:12]:
        print(f"  {pair}")


if __name__ == "__main__":
    main()
