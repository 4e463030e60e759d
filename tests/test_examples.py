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


@pytest.fixture(scope="module")
def serial_outputs():
    """Each example's output on serial, the reference, computed once."""
    return {}


#: every program under examples/ (a new one is run on every backend without listing it)
NAMES = sorted(path.name for path in EXAMPLES.glob("*.py"))


@pytest.mark.parametrize("name", NAMES)
def test_example_prints_the_same_as_on_serial(name, ua_backend, serial_outputs):
    # the backend is chosen by UNIDIST_API_BACKEND alone, in a fresh process
    script = EXAMPLES / name
    assert script.is_file(), f"missing example {script}"
    if name not in serial_outputs:
        serial_outputs[name] = run_example(script, "serial")
    assert serial_outputs[name].strip(), "the example printed nothing"
    assert run_example(script, ua_backend.backend) == serial_outputs[name]


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


@pytest.mark.parametrize("name", NAMES)
def test_no_example_names_a_backend(name):
    # every example is switched by configuration alone, as quickstart.py is
    text = (EXAMPLES / name).read_text()
    for backend in ("serial", "local", "ray", "dask"):
        for quoted in (f'"{backend}"', f"'{backend}'"):
            assert quoted not in text, f"{name} names a backend: {quoted}"
