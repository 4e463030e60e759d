"""The streaming benchmark's tables: memory as backend x case, the grid as cell x backend.

The rows and targets stay ordinary :class:`~benchmarks.report.Section` ones (so the JSON
file and the final summary list them as every other benchmark's); only the printing
lays them out as matrices, which read better than one line per (backend, cell).
"""

from __future__ import annotations

import statistics
import sys
from typing import Any

from .report import Row, Section

__all__ = ["print_memory", "print_grid"]

BACKENDS = ("serial", "local", "dask", "ray")


def _status(section: Section, row: Row) -> str:
    oks = [t.ok for t in section.targets if t.subject == row.contender]
    if row.error:
        return "FAILED"
    if not oks or all(ok is None for ok in oks):
        return ""
    return "MISS" if False in oks else "PASS"


def _table(header: list[str], lines: list[list[str]], left: int = 1) -> None:
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
    for cells in [header, *lines]:
        print(
            "  ".join(
                cell.ljust(w) if i < left else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()
        )


def print_memory(section: Section) -> None:
    """backend x case: MB of growth and PASS/MISS."""
    cases: list[str] = section.extra.get("cases", [])
    backends: list[str] = section.extra.get("backends", [])
    target = next((t.limit for t in section.targets), None)
    print(f"\n== {section.title} ==")
    lines = []
    for backend in backends:
        cells = [backend]
        for case in cases:
            row = section.row(f"{'raw Ray' if backend == 'raw-ray' else 'ours ' + backend}: {case}")
            if row is None or row.value is None:
                cells.append("FAILED" if row is not None else "-")
                continue
            at_least = ">=" if "guard" in row.note else ""
            shared = _shared_mb(row.note)
            extra = f" (s {shared:.0f})" if shared >= 1 else ""
            cells.append(f"{at_least}{row.value:.1f}{extra} {_status(section, row)}".rstrip())
        lines.append(cells)
    _table(["backend", *cases], lines)
    if target is not None:
        print(f"   target: growth <= {target:g} MB per cell")
    for row in section.rows:
        if row.error:
            print(f"   {row.contender}: failed: {row.error}")
    for note in section.notes:
        print(f"   {note}")
    sys.stdout.flush()


def _shared_mb(note: str) -> float:
    """The shared-pages growth a memory row's note gives (0 if none)."""
    marker = "shared pages +"
    if marker not in note:
        return 0.0
    return float(note.split(marker, 1)[1].split(" ", 1)[0])


def _shape(label: str) -> str:
    """A cell's label without its W (serial runs each shape once, whatever the W)."""
    return label.split(" ", 1)[1]


def print_grid(section: Section) -> None:
    """cell x backend: wall/bound and PASS/MISS; a line of totals per backend."""
    cells: list[dict[str, Any]] = section.extra.get("cells", [])
    present = [
        b for b in BACKENDS if any(r.contender.startswith(f"ours {b}: ") for r in section.rows)
    ]
    serial_rows = {
        _shape(r.contender.split(": ", 1)[1]): r
        for r in section.rows
        if r.contender.startswith("ours serial: ")
    }
    lines = []
    for cell in cells:
        label = cell["label"]
        line = [label, _num(cell["bound"]), _num(cell["serial_bound"])]
        for backend in present:
            row = (
                serial_rows.get(_shape(label))
                if backend == "serial"
                else section.row(f"ours {backend}: {label}")
            )
            if row is None:
                line.append("skip" if backend == "serial" else "-")
            elif row.value is None:
                line.append("FAILED")
            else:
                line.append(f"{row.value:.3f} {_status(section, row)}")
        lines.append(line)
    totals = ["totals: PASS / run, median, worst", "", ""]
    for backend in present:
        mine = [r for r in section.rows if r.contender.startswith(f"ours {backend}: ")]
        values = [r.value for r in mine if r.value is not None]
        passed = sum(_status(section, r) == "PASS" for r in mine)
        totals.append(
            f"{passed}/{len(mine)}, {statistics.median(values):.2f}, {max(values):.2f}"
            if values
            else f"0/{len(mine)}"
        )
    print(f"\n== {section.title} ==")
    _table(["cell", "bound s", "serial s", *present], [*lines, totals])
    for row in section.rows:
        if row.error:
            print(f"   {row.contender}: failed: {row.error}")
    for note in section.notes:
        print(f"   {note}")
    print(
        "   skip: serial bound over the limit; serial runs each shape once (W does not "
        "matter there), shown on both W rows"
    )
    sys.stdout.flush()


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
