"""`import unidist_api` stays light: no engine package is imported until a
backend is used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

ENGINES = ("loky", "ray", "dask", "distributed")


def run_python(code, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNIDIST_API_")}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_does_not_import_engines(tmp_path):
    loaded = run_python(
        f"""
        import json, sys
        import unidist_api
        print(json.dumps([m for m in {ENGINES!r} if m in sys.modules]))
        """,
        tmp_path,
    )
    assert loaded == []


def test_public_names_do_not_import_engines(tmp_path):
    loaded = run_python(
        f"""
        import json, sys
        import unidist_api as ua
        ua.errors.UnknownBackendError, ua.Executor, ua.Future, ua.task, ua.stage
        names = list(ua.backends())
        assert "serial" in names and "local" in names, names
        print(json.dumps([m for m in {ENGINES!r} if m in sys.modules]))
        """,
        tmp_path,
    )
    assert loaded == []


def test_serial_backend_does_not_import_other_engines(tmp_path):
    loaded = run_python(
        """
        import json, sys
        import unidist_api as ua
        with ua.Executor("serial") as ex:
            assert ex.submit(pow, 2, 10).result() == 1024
            assert list(ex.map(abs, [-1, -2])) == [1, 2]
        print(json.dumps([m for m in ("ray", "dask", "distributed") if m in sys.modules]))
        """,
        tmp_path,
    )
    assert loaded == []


def test_local_backend_does_not_import_ray_or_dask(tmp_path):
    loaded = run_python(
        """
        import json, sys
        import unidist_api as ua
        with ua.Executor("local", workers=1) as ex:
            assert ex.submit(pow, 2, 10).result() == 1024
        print(json.dumps([m for m in ("ray", "dask", "distributed") if m in sys.modules]))
        """,
        tmp_path,
    )
    assert loaded == []
