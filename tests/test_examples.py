"""The examples are programs written only against the contract; they never
name a backend, so configuration alone switches them, and they must print the
same whatever backend runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


def run_example(script, backend):
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNIDIST_API_")}
    env["UNIDIST_API_BACKEND"] = backend
    proc = subprocess.run(
        [sys.executable, str(script)],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{script.name} on {backend} failed:\n{proc.stderr}"
    return proc.stdout


@pytest.mark.parametrize("name", ["quickstart.py"])
def test_example_same_output_on_serial_and_local(name):
    script = EXAMPLES / name
    assert script.is_file(), f"missing example {script}"
    serial = run_example(script, "serial")
    local = run_example(script, "local")
    assert serial.strip(), "the example printed nothing"
    assert local == serial


def test_quickstart_names_no_backend():
    text = (EXAMPLES / "quickstart.py").read_text()
    for name in (
        '"serial"',
        "'serial'",
        '"local"',
        "'local'",
        '"ray"',
        "'ray'",
        '"dask"',
        "'dask'",
    ):
        assert name not in text, f"quickstart.py names a backend: {name}"
