"""The data-plane tables: one per workload and size, ours and its reference side by side."""

from __future__ import annotations

import statistics
import sys
from typing import Any

from .report import Section, Target

__all__ = ["print_data"]

HEADER = [
    "backend",
    "ours s",
    "raw s",
    "wall x",
    "ours CPU",
    "raw CPU",
    "CPU x",
    "driver MB o/r",
    "worker MB o/r",
    "shared MB o/r",
    "shm MB o/r",
    "held MB o/r",
    "status",
]
LEFT = {0, len(HEADER) - 1}  # the others are numbers, right-aligned


def _median(info: dict[str, Any] | None, field: str) -> float | None:
    if not info or info.get("error") or not info.get("rounds"):
        return None
    return float(statistics.median(r[field] for r in info["rounds"]))


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def _both(ours: dict[str, Any] | None, raw: dict[str, Any] | None, field: str) -> str:
    a, b = _median(ours, field), _median(raw, field)
    return f"{_num(a, '.0f')}/{_num(b, '.0f')}" if raw is not None else _num(a, ".0f")


def _status(ours: dict[str, Any], raw: dict[str, Any] | None, targets: list[Target]) -> str:
    for who, info in (("ours", ours), ("raw", raw)):
        error = (info or {}).get("error")
        if error:
            return f"WRONG ({who})" if "WRONG result" in error else f"FAILED ({who})"
    missed = [t for t in targets if t.ok is False]
    if missed:
        return "MISS: " + ", ".join(
            f"{t.what.split(' (')[0]} {t.measured:.3g}>{t.limit:g}"
            for t in missed
            if t.measured is not None
        )
    if not targets:
        return ""
    return "PASS" if any(t.ok for t in targets) else "n/a"


def _table(case: dict[str, Any], targets: list[Target]) -> tuple[list[list[str]], list[str]]:
    lines, notes = [], []
    contenders: dict[str, dict[str, Any]] = case["contenders"]
    for pair in case["pairs"]:
        ours = contenders[pair["ours"]]
        raw = contenders.get(pair["raw"]) if pair["raw"] else None
        mine = [targets[i] for i in pair["targets"]]
        lines.append(
            [
                pair["label"],
                _num(_median(ours, "wall")),
                _num(_median(raw, "wall")),
                _num(pair["wall_ratio"]) + ("x" if pair["wall_ratio"] is not None else ""),
                _num(_median(ours, "cpu")),
                _num(_median(raw, "cpu")),
                _num(pair["cpu_ratio"]) + ("x" if pair["cpu_ratio"] is not None else ""),
                _both(ours, raw, "driver_peak_mb"),
                _both(ours, raw, "worker_peak_mb"),
                _both(ours, raw, "worker_shared_peak_mb"),
                _both(ours, raw, "shm_peak_mb"),
                _both(ours, raw, "worker_held_mb"),
                _status(ours, raw, mine),
            ]
        )
    for name, info in contenders.items():
        if info.get("error"):
            notes.append(f"{name}: {info['error']}")
        rounds = info.get("rounds") or []
        new = max((r["processes_new"] for r in rounds), default=0)
        gone = max((r["processes_gone"] for r in rounds), default=0)
        if new or gone:
            notes.append(
                f"{name}: up to {new} process(es) appeared in a round (CPU counted "
                f"whole), {gone} disappeared (CPU since the start lost)"
            )
        driver = _median(info, "driver_held_mb") or 0.0
        shm = _median(info, "shm_held_mb") or 0.0
        if driver > 5 or shm > 5:
            store = " (Ray's object store keeps pages it used)" if "ray" in name else ""
            notes.append(
                f"{name}: after the round (and a gc) the driver held {driver:.0f} MB "
                f"more private memory than at its start, /dev/shm {shm:.0f} MB more"
                f"{store}"
            )
    return lines, notes


def print_data(section: Section) -> None:
    """Every case's table, then the notes common to all."""
    for case in section.extra.get("cases", {}).values():
        lines, notes = _table(case, section.targets)
        title = f"data {case['workload']} {case['title']}, x{case['scale']}: {case['describe']}"
        if case["gathered_mb"]:
            notes.insert(
                0,
                f"gathered {case['gathered_mb']:.0f} MB: driver target <= "
                f"{1.1 * case['gathered_mb']:.0f} MB",
            )
        if case["workload"] in ("W3", "W5"):
            notes.insert(
                0,
                "ray/dask driver target: <= 5 MB + 1.1x raw's growth (the "
                "values go worker to worker)",
            )
        print(f"\n== {title} ==")
        widths = [max(len(cells[i]) for cells in [HEADER, *lines]) for i in range(len(HEADER))]
        for cells in [HEADER, *lines]:
            print(
                "  ".join(
                    cell.ljust(w) if i in LEFT else cell.rjust(w)
                    for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
                ).rstrip()
            )
        for note in notes:
            print(f"   {note}")
    print(
        "\n   o/r = ours/reference. MB = 2**20 bytes of peak growth over the round's "
        "start, sampled every 20 ms: driver = the caller's private memory (RssAnon); "
        "worker = the engine's worker processes' private memory, summed; shared = the "
        "shared memory they mapped (RssShmem), summed; shm = the machine's /dev/shm and "
        "shared memory (Shmem, mapped or not; other programs count too); held = worker "
        "private memory still above the start after the round (1 s to settle)"
    )
    for note in section.notes:
        print(f"   {note}")
    sys.stdout.flush()
