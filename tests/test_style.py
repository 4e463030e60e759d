"""The code is formatted by ``ruff format`` and passes ``ruff check`` (issue 16: CI checks it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def ruff(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_the_code_is_formatted_by_ruff_format() -> None:
    done = ruff("format", "--check", ".")
    assert done.returncode == 0, f"run `ruff format .`:\n{done.stdout}{done.stderr}"


def test_ruff_check_finds_nothing() -> None:
    done = ruff("check", ".")
    assert done.returncode == 0, f"ruff check:\n{done.stdout}{done.stderr}"
