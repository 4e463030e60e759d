"""Moving NumPy arrays: ours against raw Ray, raw Dask, joblib and plain loky.

Five workloads (:mod:`benchmarks.data_workloads`), each at the base size and at 4x the
bytes, on the shared engines (2 workers each): W1 broadcast (one array stored once, 20
tasks read slices), W2 results (20 fresh arrays gathered), W3 chain (B gets A's future),
W4 block matmul (every block stored once), W5 a two-stage pipeline. Pairs: ours on ray
vs raw Ray, ours on dask vs raw Dask, ours on local vs joblib and vs plain loky, ours on
serial as a reference. Per round (alternating, after one warm-up per workload): wall
and CPU seconds (driver + every process it started) and memory (:mod:`.data_meter`).

Targets: ray and dask <= 1.10x raw in wall and CPU (W2 on ray: 1.25x); local <= 1.0x
joblib's CPU on W1, W4, W5 and plain loky's on W2; on ray and dask the driver grows by
<= 5 MB + 1.1x raw's growth in W3/W5 (a value going task to task never enters the
caller); W2 driver growth <= 1.1x the gathered bytes; workers' private peak <= 1.1x
raw's + 5 MB and <= 5 MB held after the round; every result correct.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .data_meter import Meter, Reading, Tree, as_dict
from .data_workloads import WORKLOADS, RayKit, Workload
from .engines import Engines
from .measure import Measured, alternate, bounded, log
from .report import Row, Section

__all__ = ["run", "PAIRS"]

TIMEOUT = 120.0  # seconds one measurement may take before it counts as hung
SLACK_MB = 5.0  # noise allowed on top of a memory target
SPEED = 1.10
SPEED_W2_RAY = 1.25


@dataclass(frozen=True)
class Contender:
    name: str
    kind: str  # which Workload.run_<kind> it calls
    engine: Any  # what that function is given
    group: str | None  # whose worker processes its memory is read from (data_meter)


@dataclass(frozen=True)
class Pair:
    """One table row: ours against its reference (none for serial)."""

    label: str
    ours: str
    raw: str | None
    backend: str


PAIRS = (
    Pair("ray vs raw ray", "ours ray", "raw ray", "ray"),
    Pair("dask vs raw dask", "ours dask", "raw dask", "dask"),
    Pair("local vs joblib", "ours local", "joblib", "local"),
    Pair("local vs plain loky", "ours local", "raw loky", "local"),
    Pair("serial (reference)", "ours serial", None, "serial"),
)


def contenders(engines: Engines) -> list[Contender]:
    """Every contender whose engine runs, in the order of the first round."""
    found = []
    if engines.has("ray"):
        found += [
            Contender("ours ray", "ours", engines.ours["ray"], "ray"),
            Contender("raw ray", "ray", RayKit(engines.ray), "ray"),
        ]
    if engines.has("dask"):
        found += [
            Contender("ours dask", "ours", engines.ours["dask"], "dask"),
            Contender("raw dask", "dask", engines.client, "dask"),
        ]
    if engines.has("local"):
        found += [
            Contender("ours local", "ours", engines.ours["local"], "loky"),
            Contender("joblib", "joblib", None, "joblib"),
            Contender("raw loky", "loky", engines.loky, "loky"),
        ]
    if engines.has("serial"):
        found.append(Contender("ours serial", "ours", engines.ours["serial"], None))
    return found


def _measurement(
    work: Workload, who: Contender, tree: Tree, readings: list[Reading]
) -> Callable[[], float]:
    """One round of ``who`` on ``work``: its wall seconds; every number kept in ``readings``."""

    def measure() -> float:
        meter = Meter(tree, who.group)

        def once() -> Reading:
            meter.start()
            out = work.run(who.kind, who.engine)
            digest = work.digest(out)
            meter.stop()
            meter.mark(exact=True)  # the results are all here: the driver's peak
            work.check(out, digest)
            del out, digest
            return meter.finish()

        try:
            reading = bounded(once, TIMEOUT)
        finally:
            meter.abort()
        readings.append(reading)
        return reading.wall

    return measure


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass
class Stats:
    """One contender's medians over its kept rounds (None: no rounds, see ``error``)."""

    readings: list[Reading]
    error: str | None

    def median(self, field: str) -> float | None:
        if self.error:
            return None
        return _median([getattr(r, field) for r in self.readings])

    @property
    def wrong(self) -> bool:
        return bool(self.error and "WRONG result" in self.error)


def ratio(ours: Stats, raw: Stats, field: str) -> float | None:
    """The median over rounds of ours/raw (round i against round i)."""
    if ours.error or raw.error or not ours.readings or not raw.readings:
        return None
    pairs = zip(ours.readings, raw.readings, strict=False)
    values = [getattr(o, field) / getattr(r, field) for o, r in pairs if getattr(r, field) > 0]
    return _median(values)


def _case(section: Section, work: Workload, stats: dict[str, Stats]) -> None:
    """The rows, ratios and targets of one workload at one size."""
    label = f"{work.key} {work.title} x{work.scale}"
    case: dict[str, Any] = {
        "workload": work.key,
        "title": work.title,
        "scale": work.scale,
        "describe": work.describe(),
        "gathered_mb": work.gathered_bytes() / 2**20,
        "contenders": {},
        "pairs": [],
    }
    for name, st in stats.items():
        case["contenders"][name] = {"error": st.error, "rounds": [as_dict(r) for r in st.readings]}
        row = Row(
            f"{label}: {name}", st.median("wall"), [r.wall for r in st.readings], error=st.error
        )
        if not st.error:
            row.note = (
                f"CPU {st.median('cpu') or 0:.2f} s, driver "
                f"+{st.median('driver_peak_mb') or 0:.0f} MB, workers "
                f"+{st.median('worker_peak_mb') or 0:.0f} MB"
            )
        section.rows.append(row)
        if st.wrong:
            section.target(row.contender, "result correct", 0.0, ">=", 1.0)
        elif st.error and name.startswith("ours"):
            section.target(row.contender, "ran", 0.0, ">=", 1.0)
    for pair in PAIRS:
        ours = stats.get(pair.ours)
        raw = stats.get(pair.raw) if pair.raw else None
        if ours is None or (pair.raw and raw is None):
            continue
        wall = ratio(ours, raw, "wall") if raw else None
        cpu = ratio(ours, raw, "cpu") if raw else None
        case["pairs"].append(
            {
                "label": pair.label,
                "ours": pair.ours,
                "raw": pair.raw,
                "wall_ratio": wall,
                "cpu_ratio": cpu,
            }
        )
        subject = f"{label}: {pair.ours}"
        ours_row = section.row(subject)
        if ours_row is not None and pair.raw:
            if wall is not None:
                ours_row.ratios[f"wall/{pair.raw}"] = wall
            if cpu is not None:
                ours_row.ratios[f"CPU/{pair.raw}"] = cpu
        first = len(section.targets)
        if raw is not None:
            _targets(section, work, pair, subject, ours, raw, wall, cpu)
        case["pairs"][-1]["targets"] = list(range(first, len(section.targets)))
    section.extra.setdefault("cases", {})[label] = case


def _targets(
    section: Section,
    work: Workload,
    pair: Pair,
    subject: str,
    ours: Stats,
    raw: Stats,
    wall: float | None,
    cpu: float | None,
) -> None:
    key, vs = work.key, pair.raw
    if pair.backend in ("ray", "dask"):
        limit = SPEED_W2_RAY if (key, pair.backend) == ("W2", "ray") else SPEED
        section.target(subject, f"wall ours/{vs}", wall, "<=", limit)
        section.target(subject, f"CPU ours/{vs}", cpu, "<=", limit)
        if key in ("W3", "W5"):
            raw_mb = raw.median("driver_peak_mb")
            section.target(
                subject,
                f"driver MB (raw {raw_mb or 0:.1f})",
                ours.median("driver_peak_mb"),
                "<=",
                round(SLACK_MB + 1.1 * max(raw_mb or 0.0, 0.0), 1),
            )
    elif (key, vs) in (("W1", "joblib"), ("W4", "joblib"), ("W5", "joblib"), ("W2", "raw loky")):
        section.target(subject, f"CPU ours/{vs}", cpu, "<=", 1.0)
    reference = "raw loky" if key == "W2" else "joblib"
    if pair.backend == "local" and vs != reference:
        return  # local's memory targets: against one reference only
    if key == "W2":
        gathered = work.gathered_bytes() / 2**20
        section.target(
            subject,
            f"driver MB (gathered {gathered:.0f})",
            ours.median("driver_peak_mb"),
            "<=",
            round(1.1 * gathered, 1),
        )
    raw_mb = raw.median("worker_peak_mb")
    section.target(
        subject,
        f"worker MB (raw {raw_mb or 0:.1f})",
        ours.median("worker_peak_mb"),
        "<=",
        round(SLACK_MB + 1.1 * max(raw_mb or 0.0, 0.0), 1),
    )
    section.target(subject, "worker MB held after", ours.median("worker_held_mb"), "<=", SLACK_MB)


def run(engines: Engines, scales: tuple[int, ...], rounds: int) -> Section:
    """Every workload at every scale, on the engines that run."""
    section = Section(
        "data", "data plane: NumPy arrays between the caller and 2 workers", "s", columns=[]
    )
    section.extra["scales"] = list(scales)
    section.extra["rounds"] = rounds
    who = contenders(engines)
    section.extra["contenders"] = [c.name for c in who]
    tree = Tree()
    for kind in WORKLOADS:
        for scale in scales:
            label = f"data {kind.key} x{scale}"
            try:
                work = kind(scale)
            except Exception as exc:  # e.g. no memory for the inputs: the others go on
                log(f"{label}: could not prepare the inputs, skipped: {type(exc).__name__}: {exc}")
                section.notes.append(f"{kind.key} x{scale}: not run: {exc}")
                continue
            log(f"{label}: {work.describe()}")
            readings: dict[str, list[Reading]] = {c.name: [] for c in who}
            warmup = 1 if scale == scales[0] else 0  # once per workload and contender
            results: dict[str, Measured] = alternate(
                {c.name: _measurement(work, c, tree, readings[c.name]) for c in who},
                rounds,
                warmup=warmup,
                label=label,
            )
            stats = {name: Stats(readings[name][warmup:], results[name].error) for name in readings}
            _case(section, work, stats)
            del work
    section.notes.append(
        "wall and CPU: medians of the rounds; ratios: median of ours/raw "
        "round by round; CPU = driver + all its descendant processes"
    )
    section.notes.append(
        f"memory targets allow {SLACK_MB:g} MB of noise; the JSON file "
        "also has each round's exact USS growth where the caller holds "
        "the results (driver_uss_mb, worker_uss_mb)"
    )
    return section
