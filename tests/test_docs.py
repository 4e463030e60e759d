"""The documentation site builds with ``mkdocs build --strict``: no broken link or anchor
between pages, and an API reference that covers every name in ``unidist_api.__all__``.

mkdocs, mkdocs-material and mkdocstrings[python] are in the ``test`` extra.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import unidist_api as ua

ROOT = Path(__file__).resolve().parent.parent


def test_docs_build_strict(tmp_path: Path) -> None:
    missing = _missing_packages()
    assert not missing, (
        f"cannot build the docs: {', '.join(missing)} not installed; "
        'install the test extra: pip install -e ".[test]"'
    )
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{output}"
    assert "WARNING" not in output, output

    reference = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    headings = set(re.findall(r'<h\d id="unidist_api\.([\w.]+)"', reference))
    documented = {path.rsplit(".", 1)[-1] for path in headings}
    absent = [name for name in ua.__all__ if name not in documented and name != "errors"]
    assert not absent, f"not in docs/reference/api.md: {absent}"
    errors_page = (site / "reference" / "errors" / "index.html").read_text(encoding="utf-8")
    assert 'id="unidist_api.errors"' in errors_page


def _missing_packages() -> list[str]:
    wanted = {
        "mkdocs": "mkdocs",
        "material": "mkdocs-material",
        "mkdocstrings": "mkdocstrings",
        "mkdocstrings_handlers.python": "mkdocstrings[python]",
    }
    missing = []
    for module, package in wanted.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(package)
    return missing
