"""The source distribution: it carries the license, the typing marker and everything its
own test suite needs (examples, docs, benchmarks), and its metadata names the license
and classifiers.

The sdist is built once per module with ``python -m build --sdist`` (an isolated build,
so the ``setuptools>=77`` that ``pyproject.toml`` asks for is what builds it).
"""

from __future__ import annotations

import email.parser
import os
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

import unidist_api as ua

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_pyproject_uses_the_spdx_license_form():
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"  # a string (PEP 639), not the old table
    assert project["license-files"] == ["LICENSE"]
    # License :: classifiers are superseded by the expression (setuptools rejects both)
    assert not [c for c in project["classifiers"] if c.startswith("License ::")]
    assert any(req.startswith("setuptools>=77") for req in PYPROJECT["build-system"]["requires"])
    assert (ROOT / "LICENSE").read_text().startswith("Copyright ")


def test_editable_installs_are_a_plain_path_entry():
    # with an explicit root package dir, setuptools' editable install is a static .pth
    # naming the checkout (which mypy follows), not an import-hook finder (which it can't)
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"": "."}


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    pytest.importorskip("build", reason="python -m build is in the test extra")
    out = tmp_path_factory.mktemp("sdist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    (path,) = out.glob("unidist_api-*.tar.gz")
    return path, log


@pytest.fixture(scope="module")
def members(sdist):
    path, _ = sdist
    with tarfile.open(path) as tar:
        names = tar.getnames()
    top = f"unidist_api-{ua.__version__}/"
    assert all(name == top.rstrip("/") or name.startswith(top) for name in names)
    return {name[len(top) :] for name in names if name.startswith(top)}


def test_build_warns_of_no_license_deprecation(sdist):
    _, log = sdist
    bad = [
        line
        for line in log.splitlines()
        if "license" in line.lower() and "deprecat" in line.lower()
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "name",
    [
        "LICENSE",
        "README.md",
        "unidist_api/py.typed",
        "examples/quickstart.py",
        "tests/test_examples.py",
        "tests/typing/user_program.py",
        "docs/index.md",
        "benchmarks/__init__.py",
    ],
)
def test_sdist_contains(members, name):
    assert name in members


def test_sdist_has_every_tracked_file_its_tests_use(members):
    listed = subprocess.run(
        ["git", "ls-files", "tests", "examples", "docs", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if listed.returncode != 0:
        pytest.skip("not a git checkout (an unpacked sdist, say)")
    tracked = {name for name in listed.stdout.splitlines() if (ROOT / name).is_file()}
    assert tracked, "git listed nothing"
    assert sorted(tracked - members) == []
    assert not [name for name in members if name.endswith((".pyc", ".pyo"))]


def test_sdist_metadata(sdist):
    path, _ = sdist
    with tarfile.open(path) as tar:
        member = tar.extractfile(f"unidist_api-{ua.__version__}/PKG-INFO")
        assert member is not None
        info = email.parser.Parser().parsestr(member.read().decode())
    assert info["Name"] == "unidist-api"
    assert info["Version"] == ua.__version__
    assert info["License-Expression"] == "Apache-2.0"
    assert info.get_all("License-File") == ["LICENSE"]
    assert info["Requires-Python"] == ">=3.11"
    assert info["Author"] == "unidist-api developers"
    classifiers = set(info.get_all("Classifier") or [])
    for wanted in (
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Operating System :: POSIX :: Linux",
        "Typing :: Typed",
        "Topic :: System :: Distributed Computing",
    ):
        assert wanted in classifiers
    assert any(c.startswith("Development Status ::") for c in classifiers)
    urls = {entry.split(",", 1)[0] for entry in info.get_all("Project-URL") or []}
    assert {"Homepage", "Documentation", "Source", "Issues"} <= urls


def test_the_sdists_own_tests_find_the_examples(sdist, tmp_path):
    """A test of the unpacked sdist that reads examples/ passes there."""
    path, _ = sdist
    with tarfile.open(path) as tar:
        tar.extractall(tmp_path, filter="data")
    (tree,) = tmp_path.iterdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNIDIST_API_")}
    env["PYTHONPATH"] = str(tree)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--ua-backends=serial",
            "tests/test_examples.py::test_quickstart_names_no_backend",
        ],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout
