"""What a user's type checker sees: ``mypy --strict`` on tests/typing/user_program.py (a
program stating its expected types with ``assert_type``) finds nothing, ``submit`` and
``map`` follow ``fn``'s types, and a wrong argument is an error.

One mypy run checks every file (it analyses the whole package once, which takes a while).
The package is found through ``MYPYPATH`` (this checkout, whatever is installed).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
USER_PROGRAM = ROOT / "tests" / "typing" / "user_program.py"

REVEALS = """\
import unidist_api as ua


def f(x: int) -> int:
    return x


def g(x: int, y: str) -> bytes:
    return y.encode() * x


fut = ua.submit(f, 1)
reveal_type(ua.submit(f, 1).result())  # R: int
reveal_type(ua.submit(f, fut))  # R: unidist_api.futures.Future[int]
reveal_type(ua.submit(ua.task(g, retries=2), 2, "y"))  # R: unidist_api.futures.Future[bytes]
reveal_type(ua.map(f, [1, 2]))  # R: typing.Iterator[int]
reveal_type(ua.map(g, [1], ["a"]))  # R: typing.Iterator[bytes]
with ua.Executor("serial") as ex:
    reveal_type(ex.submit(f, 1).result())  # R: int
    reveal_type(ex.map(f, range(3)))  # R: typing.Iterator[int]
"""

ERRORS = """\
import unidist_api as ua


def f(x: int) -> int:
    return x


def g(x: int, y: str) -> bytes:
    return y.encode() * x


fut = ua.submit(f, 1)
ua.submit(f, "x")  # E
ua.submit(f, 1, 2)  # E
ua.submit(f, y=1)  # E
ua.submit(g, 1, fut)  # E
ua.submit(ua.task(f, retries=1), "x")  # E
ua.map(f, ["x"])  # E
ua.map(g, [1], [2])  # E
with ua.Executor("serial") as ex:
    ex.submit(f, "x")  # E
    ex.map(f, ["x"])  # E
"""


@pytest.fixture(scope="module")
def mypy_run(tmp_path_factory):
    pytest.importorskip("mypy", reason="mypy is in the test extra")
    work = tmp_path_factory.mktemp("typing")
    reveals, errors = work / "reveals.py", work / "errors.py"
    reveals.write_text(REVEALS)
    errors.write_text(ERRORS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYPY")}
    env["MYPYPATH"] = str(ROOT)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--follow-imports=silent",  # errors in the given files only
            "--no-error-summary",
            "--show-error-codes",
            "--cache-dir",
            str(work / "cache"),
            str(USER_PROGRAM),
            str(reveals),
            str(errors),
        ],
        cwd=work,  # no project config: what a user's own mypy run sees
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert not proc.stderr.strip(), proc.stderr
    by_file: dict[str, dict[int, list[str]]] = {}
    for line in proc.stdout.splitlines():
        match = re.match(r"(.+?):(\d+): (error|note): (.*)", line)
        assert match, f"unexpected mypy output: {line}"
        name = Path(match[1]).name
        by_file.setdefault(name, {}).setdefault(int(match[2]), []).append(f"{match[3]}: {match[4]}")
    return by_file, proc.stdout


def test_the_user_program_type_checks(mypy_run):
    by_file, out = mypy_run
    assert "user_program.py" not in by_file, out


def test_the_user_program_runs():
    proc = subprocess.run(
        [sys.executable, str(USER_PROGRAM)],
        env={k: v for k, v in os.environ.items() if not k.startswith("UNIDIST_API_")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def _marked(source: str, mark: str) -> dict[int, str]:
    return {
        number: line.split(mark, 1)[1].strip()
        for number, line in enumerate(source.splitlines(), 1)
        if mark in line
    }


def test_submit_and_map_reveal_fns_types(mypy_run):
    by_file, out = mypy_run
    found = by_file.get("reveals.py", {})
    expected = _marked(REVEALS, "# R:")
    assert set(found) == set(expected), out
    for number, wanted in expected.items():
        # older mypy spells builtins with their module ("builtins.int")
        got = [entry.replace("builtins.", "") for entry in found[number]]
        assert got == [f'note: Revealed type is "{wanted}"'], out


def test_wrong_arguments_are_errors(mypy_run):
    by_file, out = mypy_run
    found = by_file.get("errors.py", {})
    expected = set(_marked(ERRORS, "# E"))
    assert set(found) == expected, out
    for number in expected:
        assert any(entry.startswith("error:") for entry in found[number]), out


def test_a_wrong_argument_names_the_expected_type(mypy_run):
    # ua.submit(f, "x") for def f(x: int) -> int
    by_file, out = mypy_run
    (number,) = [n for n, text in enumerate(ERRORS.splitlines(), 1) if 'ua.submit(f, "x")' in text]
    messages = " ".join(by_file["errors.py"][number])
    assert "submit" in messages and "int" in messages, out


def test_the_sources_are_strict_clean():
    """``mypy --strict unidist_api`` (also what the project's own [tool.mypy] says)."""
    pytest.importorskip("mypy", reason="mypy is in the test extra")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "unidist_api"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
