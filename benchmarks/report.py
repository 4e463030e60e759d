"""What a run prints and records: one table per benchmark, the targets, the JSON file."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from .measure import Measured

__all__ = [
    "Row",
    "Target",
    "Section",
    "machine_info",
    "print_section",
    "print_summary",
    "write_json",
]

PACKAGES = (
    "unidist-api",
    "ray",
    "dask",
    "distributed",
    "loky",
    "joblib",
    "unidist",
    "cloudpickle",
    "psutil",
)


@dataclass
class Row:
    """One contender of one benchmark: its median (in the section's unit) and ratios."""

    contender: str
    value: float | None
    samples: list[float] = field(default_factory=list)
    note: str = ""
    error: str | None = None
    ratios: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(
        cls, contender: str, measured: Measured | None, scale: float = 1.0, note: str = ""
    ) -> Row:
        if measured is None:
            return cls(contender, None, note=note, error="not run")
        median = measured.median
        return cls(
            contender,
            None if median is None else median * scale,
            [s * scale for s in measured.samples],
            note,
            measured.error,
        )


@dataclass
class Target:
    """A goal: ``measured op limit``, where measured is a ratio or an absolute value."""

    section: str
    subject: str
    what: str
    measured: float | None
    op: str
    limit: float

    @property
    def ok(self) -> bool | None:
        if self.measured is None:
            return None
        return {
            "<=": self.measured <= self.limit,
            "<": self.measured < self.limit,
            ">=": self.measured >= self.limit,
        }[self.op]

    @property
    def status(self) -> str:
        return {True: "PASS", False: "MISS", None: "n/a"}[self.ok]


@dataclass
class Section:
    key: str
    title: str
    unit: str
    columns: list[str] = field(default_factory=list)  # headers of the ratio columns
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # raw numbers for the JSON file

    def row(self, contender: str) -> Row | None:
        return next((row for row in self.rows if row.contender == contender), None)

    def ratio(self, subject: str, reference: str, column: str) -> float | None:
        """``subject / reference`` (their values), stored in the subject's ``column``."""
        row, ref = self.row(subject), self.row(reference)
        if row is None or ref is None or row.value is None or not ref.value:
            return None
        row.ratios[column] = row.value / ref.value
        return row.ratios[column]

    def target(
        self, subject: str, what: str, measured: float | None, op: str, limit: float
    ) -> None:
        if self.row(subject) is not None:
            self.targets.append(Target(self.key, subject, what, measured, op, limit))


def _fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit.startswith("µs"):
        return (
            f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"
        )
    if unit == "efficiency":
        return f"{value:.3f}"
    if unit == "MB":
        return f"{value:.1f}"
    return f"{value:.2f}"


def _status(section: Section, row: Row) -> str:
    if row.error:
        return "FAILED"
    oks = [t.ok for t in section.targets if t.subject == row.contender]
    if not oks or all(ok is None for ok in oks):
        return ""
    return "MISS" if False in oks else "PASS"


def print_section(section: Section) -> None:
    header = ["contender", section.unit, *section.columns, "target", "note"]
    lines = []
    for row in section.rows:
        targets = [t for t in section.targets if t.subject == row.contender]
        goal = "; ".join(f"{t.what} {t.op} {t.limit:g}" for t in targets)
        status = _status(section, row)
        note = f"failed: {row.error}" if row.error else row.note
        lines.append(
            [
                row.contender,
                _fmt_value(row.value, section.unit),
                *(f"{row.ratios[c]:.2f}x" if c in row.ratios else "" for c in section.columns),
                f"{status} ({goal})" if goal and status and not row.error else "",
                note,
            ]
        )
    numeric = range(1, 2 + len(section.columns))  # the value and the ratio columns
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
    print(f"\n== {section.title} ==")
    for cells in [header, *lines]:
        padded = [
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        print("  ".join(padded).rstrip())
    for note in section.notes:
        print(f"   {note}")
    sys.stdout.flush()


def print_summary(sections: list[Section], wall: float) -> None:
    targets = [t for s in sections for t in s.targets]
    print("\n== Summary of targets ==")
    for t in targets:
        measured = "-" if t.measured is None else f"{t.measured:.3g}"
        print(
            f"{t.status:4}  {t.section}: {t.subject}: {t.what} = {measured} "
            f"(target {t.op} {t.limit:g})"
        )
    passed = sum(t.ok is True for t in targets)
    missed = sum(t.ok is False for t in targets)
    print(
        f"{passed} passed, {missed} missed, {len(targets) - passed - missed} not measured; "
        f"suite wall time {wall / 60:.1f} min"
    )


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": {name: _version(name) for name in PACKAGES},
    }
    try:
        info["load_average_at_start"] = os.getloadavg()
    except OSError:
        pass
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return info


def write_json(
    path: Path, sections: list[Section], info: dict[str, Any], options: dict[str, Any], wall: float
) -> None:
    data: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": info,
        "options": options,
        "wall_seconds": round(wall, 1),
        "benchmarks": {s.key: asdict(s) for s in sections},
        "targets": [{**asdict(t), "ok": t.ok} for s in sections for t in s.targets],
    }
    try:
        info["load_average_at_end"] = os.getloadavg()
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwrote {path}")
