"""``python -m benchmarks [--quick] [--only ...] [--backends ...] [--repeats N] [--json PATH]``.

Starts each engine once, runs the in-process benchmarks on them, stops them, then runs
the benchmarks that need fresh processes; prints one table per benchmark and a summary
of the targets, and writes everything to a JSON file.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import measure
from .child import ROOT, child_env
from .data_report import print_data
from .measure import log
from .report import Section, machine_info, print_section, print_summary, write_json

BENCHMARKS = (
    "submit",
    "map",
    "cpu",
    "pipeline",
    "load",
    "data",
    "keyed",
    "checkpoint",
    "unidist",
    "memory",
    "streaming",
)
BACKENDS = ("serial", "local", "dask", "ray")
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "latest.json"


@dataclass(frozen=True)
class Sizes:
    submit: int  # tasks submitted one at a time
    batch: int  # tasks submitted, then gathered
    map_items: int
    map_slow_items: int  # for the per-item contenders
    cpu_tasks: int
    cpu_seconds: float
    pipeline_items: int
    memory_items: int
    peer_submit: int
    peer_map: int
    load_map_items: int  # the larger map of the load benchmark (the smaller is a tenth)
    load_futures: int  # the larger number of futures in flight (likewise)
    repeats: int
    budget: float  # seconds one measurement of a slow contender should take (sizes its n)
    data_rounds: int  # the data benchmark's rounds (its runs are long): --repeats overrides
    data_scales: tuple[int, ...]  # its sizes: 1 = the base size, 4 = four times the bytes
    keyed_pairs: int  # (key, value) pairs of the reduce_by_key benchmark
    checkpoint_items: int  # tiny items of the map with and without a checkpoint journal


FULL = Sizes(
    submit=200,
    batch=1000,
    map_items=100_000,
    map_slow_items=10_000,
    cpu_tasks=40,
    cpu_seconds=0.05,
    pipeline_items=20,
    memory_items=1_000_000,
    peer_submit=200,
    peer_map=5_000,
    load_map_items=100_000,
    load_futures=10_000,
    repeats=5,
    budget=1.0,
    data_rounds=3,
    data_scales=(1, 4),
    keyed_pairs=1_000_000,
    checkpoint_items=100_000,
)
QUICK = Sizes(
    submit=50,
    batch=200,
    map_items=20_000,
    map_slow_items=1_000,
    cpu_tasks=12,
    cpu_seconds=0.05,
    pipeline_items=8,
    memory_items=200_000,
    peer_submit=30,
    peer_map=500,
    load_map_items=20_000,
    load_futures=2_000,
    repeats=2,
    budget=0.2,
    data_rounds=1,
    data_scales=(1,),
    keyed_pairs=200_000,
    checkpoint_items=20_000,
)


def _names(text: str, known: tuple[str, ...], what: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})"
        )
    return [name for name in known if name in names]  # the suite's order


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="unidist-api benchmarks: ours against the raw engines and the usual "
        "alternatives; prints ratios and writes a JSON file.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and 2 rounds (~2 min), for smoke testing"
    )
    parser.add_argument(
        "--only",
        type=lambda s: _names(s, BENCHMARKS, "benchmark"),
        default=list(BENCHMARKS),
        help=f"comma-separated subset of: {','.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--backends",
        type=lambda s: _names(s, BACKENDS, "backend"),
        default=list(BACKENDS),
        help=f"comma-separated subset of: {','.join(BACKENDS)} "
        "(serial appears in map, pipeline, keyed and memory only)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="alternating rounds per benchmark (default 5, quick: 2; data: 3, quick: 1)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        help="where to write the results (default: %(default)s)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="print the traceback of a contender that fails"
    )
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def _data(engines: Any, scales: tuple[int, ...], rounds: int) -> Section:
    from . import data_plane  # needs NumPy: imported only when the data benchmark runs

    return data_plane.run(engines, scales, rounds)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    sizes = QUICK if args.quick else FULL
    repeats = args.repeats or sizes.repeats
    measure.verbose = args.verbose
    os.environ["PYTHONPATH"] = child_env()["PYTHONPATH"]  # workers import benchmarks.tasks
    info = machine_info()
    start = time.monotonic()
    sections: list[Section] = []
    engine_errors: dict[str, str] = {}

    def section(
        key: str, make: Callable[[], Section], show: Callable[[Section], None] = print_section
    ) -> None:
        log(f"benchmark: {key}")
        try:
            result = make()
        except Exception as exc:  # one benchmark failing must not lose the others
            log(f"benchmark {key} failed: {type(exc).__name__}: {exc}")
            if args.verbose:
                traceback.print_exc()
            return
        sections.append(result)
        show(result)

    in_process = [
        key
        for key in args.only
        if key in ("submit", "map", "cpu", "pipeline", "load", "data", "keyed", "checkpoint")
    ]
    if in_process:
        from . import checkpoint, cpu_bound, keyed, load, map_tiny, pipeline_bound, submit
        from .engines import Engines

        engines = Engines(args.backends)
        try:
            engines.start()
            engine_errors = dict(engines.errors)
            runs = {
                "submit": lambda: submit.run(
                    engines, sizes.submit, sizes.batch, repeats, sizes.budget
                ),
                "map": lambda: map_tiny.run(
                    engines, sizes.map_items, sizes.map_slow_items, repeats, sizes.budget
                ),
                "cpu": lambda: cpu_bound.run(engines, sizes.cpu_tasks, sizes.cpu_seconds, repeats),
                "pipeline": lambda: pipeline_bound.run(engines, sizes.pipeline_items, repeats),
                "load": lambda: load.run(
                    engines, sizes.load_map_items, sizes.load_futures, repeats
                ),
                "keyed": lambda: keyed.run(engines, sizes.keyed_pairs, repeats),
                "checkpoint": lambda: checkpoint.run(engines, sizes.checkpoint_items, repeats),
                "data": lambda: _data(
                    engines, sizes.data_scales, args.repeats or sizes.data_rounds
                ),
            }
            for key in in_process:
                section(key, runs[key], print_data if key == "data" else print_section)
        finally:
            log("stopping the shared engines")
            engines.close()
    if "unidist" in args.only:
        from . import unidist_peer

        peers = [b for b in args.backends if b in ("ray", "dask")]
        section(
            "unidist",
            lambda: unidist_peer.run(
                peers, sizes.peer_submit, sizes.peer_map, repeats, sizes.budget / 2
            ),
        )
    if "memory" in args.only:
        from . import memory

        section("memory", lambda: memory.run(args.backends, sizes.memory_items))
    if "streaming" in args.only:
        from . import streaming  # its own fresh processes, 6 workers (benchmarks/streaming.py)

        for key, make, show in streaming.parts(args.backends, args.quick):
            section(key, make, show)
    wall = time.monotonic() - start
    if engine_errors:
        print("\nnot started: " + "; ".join(f"{b}: {e}" for b, e in engine_errors.items()))
    print_summary(sections, wall)
    options = {
        "quick": args.quick,
        "only": args.only,
        "backends": args.backends,
        "repeats": repeats,
        "sizes": asdict(sizes),
        "engine_errors": engine_errors,
    }
    write_json(args.json, sections, info, options, wall)
    return 0


if __name__ == "__main__":
    sys.exit(main())
