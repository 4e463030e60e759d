"""The driver's memory while streaming a 1M-item map: peak RSS growth, per backend.

Each backend runs in a fresh process (:mod:`benchmarks.memory_child`), so what one
measurement allocated cannot hide another's growth. ``map`` pulls input only as results
are consumed, so a lazily consumed map should grow by no more than its bounded window.
Target: growth < 150 MB on every backend.
"""

from __future__ import annotations

from .child import run_child
from .measure import log
from .report import Row, Section

__all__ = ["run"]

TARGET_MB = 150.0
TIMEOUT = 300.0


def run(backends: list[str], n: int) -> Section:
    section = Section("memory", f"driver memory: streamed map of {n:,} items, kept nothing", "MB")
    for backend in backends:
        name = f"ours {backend}: peak RSS growth"
        log(f"memory: {backend} ({n:,} items, fresh process)")
        try:
            got = run_child("benchmarks.memory_child", [backend, "--n", str(n)], TIMEOUT)
        except Exception as exc:
            log(f"memory: {backend} failed, skipped: {exc}")
            section.rows.append(Row(name, None, error=str(exc)))
            continue
        section.rows.append(
            Row(
                name,
                got["growth_mb"],
                [got["growth_mb"]],
                f"baseline {got['baseline_mb']:.0f} MB, peak {got['peak_mb']:.0f} MB, "
                f"{got['us_per_item']:.2f} µs/item",
            )
        )
        section.target(name, "MB", got["growth_mb"], "<", TARGET_MB)
    section.notes.append(
        "RSS of the calling process sampled every 20 ms; baseline after the "
        "backend started and warmed up; one fresh process per backend"
    )
    return section
