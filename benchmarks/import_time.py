"""How long ``import unidist_api`` takes, in fresh interpreters (target: < 150 ms).

Prints the median of several runs next to the bare interpreter start-up, and checks
that no engine (loky, ray, dask, distributed) was imported. Run:
``python benchmarks/import_time.py``.
"""

from __future__ import annotations

import statistics
import subprocess
import sys

PROBE = (
    "import sys, time; t = time.perf_counter(); import unidist_api; "
    "dt = time.perf_counter() - t; "
    "heavy = [m for m in ('loky', 'ray', 'dask', 'distributed') if m in sys.modules]; "
    "print(dt, ','.join(heavy))"
)


def main(runs: int = 7) -> None:
    times = []
    heavy = set()
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
        ).stdout.split()
        times.append(float(out[0]))
        heavy.update(m for m in (out[1:] or [""])[0].split(",") if m)
    median_ms = statistics.median(times) * 1000
    print(f"import unidist_api: median {median_ms:.1f} ms over {runs} runs (target < 150 ms)")
    print(f"engines imported: {', '.join(sorted(heavy)) or 'none'}")
    if median_ms >= 150 or heavy:
        sys.exit(1)


if __name__ == "__main__":
    main()
