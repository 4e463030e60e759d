"""Running one measurement in a fresh Python process, which reports JSON on stdout.

Used where a measurement needs a process of its own: the driver's peak memory, and
modin-project's ``unidist``, which takes one engine per process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["ROOT", "emit", "run_child", "child_env"]

ROOT = Path(__file__).resolve().parent.parent  # the repository: `benchmarks` imports from it
MARK = "@@benchmark-result@@ "


def child_env() -> dict[str, str]:
    """This environment, with the repository on PYTHONPATH for the workers' imports."""
    env = dict(os.environ)
    paths = [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


def emit(result: dict[str, Any]) -> None:
    """In the child: hand ``result`` to the parent (one marked line on stdout)."""
    print(MARK + json.dumps(result), flush=True)


def run_child(module: str, args: list[str], timeout: float) -> dict[str, Any]:
    """``python -m module *args``; its result, or RuntimeError with the end of its stderr.

    The child runs in a session of its own, so on timeout it is stopped with every
    process it started.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
        process.communicate()
        raise RuntimeError(f"{module} {' '.join(args)} took over {timeout:g} s") from None
    for line in reversed(stdout.splitlines()):
        if line.startswith(MARK):
            result: dict[str, Any] = json.loads(line[len(MARK) :])
            return result
    tail = " | ".join(stderr.strip().splitlines()[-5:])
    raise RuntimeError(
        f"{module} {' '.join(args)} exited {process.returncode} without a result: {tail}"
    )
