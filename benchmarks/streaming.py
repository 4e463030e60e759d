"""``--only streaming``: does streaming stay bounded and overlapped for any item size,
worker count and task length? Three tables, every backend, each engine in fresh processes:

(a) **memory** (``streaming-memory``): the calling process's peak RSS growth over its
    value after warm-up, with ``ua.Executor(backend, workers=6)``, one fresh process per
    backend and case (:mod:`benchmarks.streaming_child`): 300,000 inputs of ~1 kB,
    3,000 inputs of 1 MB, 1,000 results of 1 MB, kept nothing. Target <= 96 MB.
(b) **pipeline grid** (``streaming-pipeline``): 3-stage pipelines over the axes of
    :mod:`benchmarks.streaming_grid` (W, per-stage workers, task length, sleeping or
    CPU-bound, item count), a covering design of about 25 cells, each run once, wall
    time over the general bound documented there. Target <= 1.3 (serial <= 1.05).
    One process per backend and W (Ray's task slots are fixed when it starts).
(c) **first results** (``streaming-first``): on the warm 6-worker executor of (b), right
    after a 1,000-item map of ``inc``, ``ex.map(inc, itertools.count())`` to its first 10
    results, 5 times. Target: median and max <= 50 ms.

Sizes shrink with ``--quick`` (memory: 60,000 / 500 / 200 items; the grid: a covering of
each axis value only); a quick run is a smoke test, its numbers are rough.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable
from typing import Any

from .child import ROOT, run_child
from .measure import log
from .report import Row, Section, print_section
from .streaming_child import CASES, GUARD_MB, MEMORY_WORKERS, cells_for
from .streaming_grid import MAX_BOUND, cores, design
from .streaming_report import print_grid, print_memory

__all__ = ["parts"]

MEMORY_MB = 96.0
RATIO = 1.3
SERIAL_RATIO = 1.05
FIRST_MS = 50.0
CHILD = "benchmarks.streaming_child"
CASE_LABELS = {
    "small": "{n:,} x 1 kB in",
    "big-in": "{n:,} x 1 MB in",
    "big-out": "{n:,} x 1 MB out",
}


def _case_label(case: str, quick: bool) -> str:
    return CASE_LABELS[case].format(n=CASES[case][1 if quick else 0])


def memory(backends: list[str], quick: bool) -> Section:
    """Table (a): one fresh process per backend and case."""
    labels = [_case_label(case, quick) for case in CASES]
    state = library_state()
    section = Section(
        "streaming-memory",
        f"streaming: driver memory, peak RSS growth "
        f"(MB) with {MEMORY_WORKERS} workers, kept nothing",
        "MB",
        extra={"backends": [], "cases": labels, "runs": []},
    )
    rows = [*backends, *(["raw-ray"] if "ray" in backends else [])]  # Ray's own, as a yardstick
    section.extra["backends"] = rows
    for backend in rows:
        for case, label in zip(CASES, labels, strict=True):
            name = f"{'raw Ray' if backend == 'raw-ray' else 'ours ' + backend}: {label}"
            log(f"streaming memory: {backend} {case} (fresh process)")
            try:
                got = run_child(CHILD, ["memory", backend, case, *(["--quick"] * quick)], 300)
            except Exception as exc:
                log(f"streaming memory: {backend} {case} failed: {exc}")
                section.rows.append(Row(name, None, error=str(exc)[:300]))
                continue
            section.extra["runs"].append(got)
            note = (
                f"baseline {got['baseline_mb']:.0f} MB, {got['seconds']:.2f} s, "
                f"{got['workers']} workers, shared pages +{got['shared_growth_mb']:.0f} MB"
            )
            if got["stopped_early"]:
                note += (
                    f"; stopped at the {GUARD_MB:g} MB guard after {got['consumed']:,} "
                    f"items: at least this"
                )
            section.rows.append(Row(name, got["growth_mb"], [got["growth_mb"]], note))
            if backend != "raw-ray":
                section.target(name, "MB", got["growth_mb"], "<=", MEMORY_MB)
    section.notes.append(
        "growth = peak RSS of the calling process while streaming - its RSS "
        "after warm-up; sampled every 20 ms, and the kernel's VmHWM (reset "
        "at the start) where readable; one fresh process per cell"
    )
    section.notes.append(
        "(s N): N MB of that growth are shared pages (RssShmem), e.g. Ray's "
        "object store as mapped by the driver; raw Ray: the same stream by "
        "hand, batches of 64 MiB / 12, 12 in flight (ray.wait)"
    )
    section.notes.append(
        f"a cell marked >= stopped its input at {GUARD_MB:g} MB of growth "
        "(the rest would have grown further)"
    )
    _state_note(section, state)
    return section


class Grid:
    """Tables (b) and (c): the grid's processes run once, on the first table's demand."""

    def __init__(self, backends: list[str], quick: bool) -> None:
        self.backends = backends
        self.quick = quick
        self.runs: list[dict[str, Any]] | None = None
        self.errors: dict[tuple[str, int], str] = {}
        self.load: list[float] = []  # 1-minute load average before and after the grid
        self.state = ""

    def _run(self) -> list[dict[str, Any]]:
        if self.runs is not None:
            return self.runs
        self.runs = []
        self.state = library_state()
        self.load = [_load()]
        for backend in self.backends:
            for workers in [MEMORY_WORKERS] if backend == "serial" else [2, MEMORY_WORKERS]:
                cells = cells_for(backend, workers, self.quick)
                slots = 1 if backend == "serial" else workers
                timeout = 120 + 8 * sum(c.bound(slots) for c in cells)
                log(
                    f"streaming pipeline: {backend} W={workers}, {len(cells)} cells (fresh process)"
                )
                try:
                    self.runs.append(
                        run_child(
                            CHILD,
                            ["pipeline", backend, str(workers), *(["--quick"] * self.quick)],
                            timeout,
                        )
                    )
                except Exception as exc:
                    log(f"streaming pipeline: {backend} W={workers} failed: {exc}")
                    self.errors[(backend, workers)] = str(exc)[:300]
        self.load.append(_load())
        return self.runs

    def pipeline(self) -> Section:
        runs = self._run()
        cells = design(self.quick)
        section = Section(
            "streaming-pipeline",
            f"streaming: pipeline grid, {len(cells)} cells x backends, wall / bound",
            "wall/bound",
            extra={
                "cells": [
                    {"label": c.label, "bound": c.bound(), "serial_bound": c.bound(1)}
                    for c in cells
                ],
                "cores": cores(),
                "runs": runs,
                "errors": {f"{b} W={w}": e for (b, w), e in self.errors.items()},
            },
        )
        for run in runs:
            backend = run["backend"]
            limit = SERIAL_RATIO if backend == "serial" else RATIO
            for cell in run["cells"]:
                name = f"ours {backend}: {cell['label']}"
                if "wall" not in cell:
                    section.rows.append(Row(name, None, error=cell.get("error", "not run")))
                    continue
                ratio = cell["wall"] / cell["bound"]
                section.rows.append(
                    Row(
                        name,
                        ratio,
                        [ratio],
                        f"wall {cell['wall']:.2f} s, "
                        f"bound {cell['bound']:.2f} s, slots {cell['slots']}",
                    )
                )
                section.target(name, "wall/bound", ratio, "<=", limit)
        for (backend, workers), error in self.errors.items():
            for cell in cells_for(backend, workers, self.quick):
                section.rows.append(Row(f"ours {backend}: {cell.label}", None, error=error))
        section.notes.append(
            "cell: W=executor workers, sleep|cpu, items x [per stage: ms per "
            "item, /wN = ua.stage(workers=N), none = unset]; run once each"
        )
        section.notes.append(
            "bound = max over sets A of stages of items*sum_A(t)/min(S, "
            "sum_A(L)) + the stages before and after A; S = W slots (CPU-"
            f"bound: min(W, {cores()} cores)), L_s = min(w_s or W, S); "
            "see benchmarks/streaming_grid.py"
        )
        section.notes.append(
            f"load average (1 min) {self.load[0]:.1f} before the grid, "
            f"{self.load[-1]:.1f} after, on {cores()} cores: CPU-bound "
            "cells share them with whatever else runs"
        )
        section.notes.append(
            f"serial: W = 1, only the cells whose serial bound <= "
            f"{MAX_BOUND:g} s; target {SERIAL_RATIO:g}, else {RATIO:g}"
        )
        _state_note(section, self.state)
        return section

    def first(self) -> Section:
        runs = self._run()
        section = Section(
            "streaming-first",
            "streaming: time to the first 10 results of "
            "ex.map(inc, itertools.count()), warm 6-worker executor, right "
            "after a 1,000-item map",
            "ms",
            extra={"runs": []},
        )
        for run in runs:
            first = run.get("first")
            if not first:
                continue
            name = f"ours {run['backend']}: first 10 results"
            section.extra["runs"].append({"backend": run["backend"], **first})
            samples = ", ".join(f"{s:.0f}" for s in first["samples_ms"])
            section.rows.append(
                Row(
                    name,
                    first["median_ms"],
                    first["samples_ms"],
                    f"max {first['max_ms']:.1f} ms; samples {samples}",
                )
            )
            section.target(name, "median ms", first["median_ms"], "<=", FIRST_MS)
            section.target(name, "max ms", first["max_ms"], "<=", FIRST_MS)
        for (backend, workers), error in self.errors.items():
            if workers == MEMORY_WORKERS:
                section.rows.append(Row(f"ours {backend}: first 10 results", None, error=error))
        section.notes.append(
            "median of 5; each time the infinite map is closed after 10 "
            "results (its rest cancelled)"
        )
        _state_note(section, self.state)
        return section


def library_state() -> str:
    """The library these numbers measure: its commit, and the files changed since (the
    children import it afresh, so a change during the run shows in the next child)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--", "unidist_api").splitlines()
    digest = hashlib.sha1(git("diff", "HEAD", "--", "unidist_api").encode()).hexdigest()[:8]
    return (
        f"{commit} + {len(changed)} changed file(s) in unidist_api (diff {digest})"
        if changed
        else f"{commit}, unidist_api unchanged"
    )


def _state_note(section: Section, before: str) -> None:
    after = library_state()
    section.extra["library"] = {"before": before, "after": after}
    section.notes.append(
        f"library: {before}" + ("" if after == before else f"; CHANGED during the run: {after}")
    )


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def parts(
    backends: list[str], quick: bool
) -> list[tuple[str, Callable[[], Section], Callable[[Section], None]]]:
    """The three tables, as (key, make, print) for ``python -m benchmarks``."""
    grid = Grid(backends, quick)
    return [
        ("streaming-memory", lambda: memory(backends, quick), print_memory),
        ("streaming-pipeline", grid.pipeline, print_grid),
        ("streaming-first", grid.first, print_section),
    ]
