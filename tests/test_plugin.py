"""The pytest plugin's end-of-run watchdog: a run whose end hangs fails loudly instead."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

HANGING_END = textwrap.dedent("""
    import threading, time

    def test_passes_but_leaves_an_exit_hook_that_never_returns():
        threading._register_atexit(lambda: time.sleep(10_000))
""")


def test_a_hang_at_the_end_of_the_run_prints_stacks_and_fails(tmp_path: Path) -> None:
    (tmp_path / "test_hanging_end.py").write_text(HANGING_END)
    start = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--ua-check-leftovers",
            "--ua-end-timeout=3",
            "test_hanging_end.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - start < 100, "the watchdog did not end the run"
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 passed" in done.stdout
    assert "most recent call first" in done.stderr and "test_hanging_end.py" in done.stderr
