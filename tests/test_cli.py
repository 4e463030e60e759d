"""The ``unidist-api`` command, run as ``python -m unidist_api`` in a directory of its own:
``run`` checks the configuration (backend, workers, address, config file) before the
script starts, and refuses a bad one with exit status 2 and the message ``info`` gives;
``--version``; the config file is found in the nearest parent directory whose
``pyproject.toml`` has ``[tool.unidist_api]``. Also the library's side of the same checks.

Not parametrized over backends: nothing here runs tasks on an engine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import unidist_api as ua
from unidist_api import config, registry

ROOT = Path(__file__).resolve().parent.parent
ENV_VARS = (
    "UNIDIST_API_BACKEND",
    "UNIDIST_API_ADDRESS",
    "UNIDIST_API_WORKERS",
    "UNIDIST_API_CONFIG",
)

# The script writes a marker file first thing: its absence proves it never started.
SCRIPT = """\
import pathlib, sys
pathlib.Path("started").write_text(" ".join(sys.argv[1:]))
import unidist_api as ua
ex = ua.current_executor()
print("backend:", ex.backend, "workers:", ex.workers)
"""


@pytest.fixture(autouse=True)
def clean_config(monkeypatch, tmp_path):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    ua.configure(None)
    yield
    ua.configure(None)


def cli(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "unidist_api", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_pyproject(directory, body):
    path = directory / "pyproject.toml"
    path.write_text('[project]\nname = "someone"\n\n[tool.unidist_api]\n' + body)
    return path


def message(result):
    """The error after the ``unidist-api <command>:`` prefix."""
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("unidist-api "), result.stderr
    return line.split(": ", 1)[1]


def refused_before_start(tmp_path, *args, cwd=None):
    """``run`` with ``args`` exits 2 without starting the script; ``info`` says the same."""
    cwd = cwd or tmp_path
    (cwd / "script.py").write_text(SCRIPT)
    result = cli("run", *args, "script.py", cwd=cwd)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert not (cwd / "started").exists(), "the script started"
    assert "Traceback" not in result.stderr
    info = cli("info", *args, cwd=cwd)
    assert info.returncode == 2, (info.stdout, info.stderr)
    assert message(info) == message(result)
    return message(result)


# --------------------------------------------------------------------------- the good path
def test_version():
    result = cli("--version", cwd=Path.cwd())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"unidist-api {ua.__version__}"


def test_run_starts_the_script_with_its_configuration(tmp_path):
    (tmp_path / "script.py").write_text(SCRIPT)
    result = cli("run", "--backend", "serial", "script.py", "a", "--b", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "started").read_text() == "a --b"
    assert "backend: serial workers: 1" in result.stdout


# --------------------------------------------------------------------------- refused before start
def test_unknown_backend(tmp_path):
    msg = refused_before_start(tmp_path, "--backend", "nosuch")
    assert "unknown backend 'nosuch'" in msg and "serial" in msg and "--backend" in msg


@pytest.mark.parametrize("workers", ["0", "-3"])
def test_workers_not_positive(tmp_path, workers):
    msg = refused_before_start(tmp_path, "--workers", workers)
    assert "--workers must be a positive integer" in msg


@pytest.mark.parametrize("backend", ["local", "serial"])
def test_address_with_a_machine_local_backend(tmp_path, backend):
    msg = refused_before_start(tmp_path, "--backend", backend, "--address", "tcp://10.0.0.5:8786")
    assert f"the {backend!r} backend runs on this machine and takes no address" in msg
    assert "drop --address" in msg and "'ray'" in msg


def test_address_with_the_config_file_s_local_backend(tmp_path):
    write_pyproject(tmp_path, 'backend = "local"\n')
    msg = refused_before_start(tmp_path, "--address", "tcp://10.0.0.5:8786")
    assert "takes no address" in msg


@pytest.mark.parametrize("backend", ["ray", "dask"])
@pytest.mark.parametrize("address", ["10.0.0.5", "host:99999", "two words:1", "tcp://"])
def test_malformed_address(tmp_path, backend, address):
    try:
        registry.backend_facts(backend)
    except ImportError:
        pytest.skip(f"{backend} is not installed")
    msg = refused_before_start(tmp_path, "--backend", backend, "--address", address)
    assert f"malformed address {address!r}" in msg and "--address" in msg


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ("backend = 3\n", "'backend'"),
        ('backend = ""\n', "'backend'"),
        ('workers = "x"\n', "'workers'"),
        ("workers = 0\n", "'workers'"),
        ("address = 8786\n", "'address'"),
        ("bogus = 1\n", "'bogus'"),
        ('backend = "serial"\nenv = { A = "1" }\n', "'env'"),  # local's option, not serial's
    ],
)
def test_bad_config_value_names_file_and_key(tmp_path, body, key):
    path = write_pyproject(tmp_path, body)
    msg = refused_before_start(tmp_path)
    assert str(path) in msg and key in msg
    with pytest.raises(ua.errors.InvalidOptionError) as info:  # the library, the same
        config.resolve()
    assert str(path) in str(info.value) and key in str(info.value)


def test_unknown_backend_in_config_file_names_it(tmp_path):
    path = write_pyproject(tmp_path, 'backend = "nosuch"\n')
    msg = refused_before_start(tmp_path)
    assert "unknown backend 'nosuch'" in msg and str(path) in msg


def test_an_option_of_the_chosen_backend_is_accepted(tmp_path):
    write_pyproject(tmp_path, 'backend = "local"\nworkers = 2\nenv = { A = "1" }\n')
    (tmp_path / "script.py").write_text(SCRIPT)
    result = cli("run", "script.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "backend: local workers: 2" in result.stdout


# --------------------------------------------------------------------------- config discovery
def test_config_file_found_in_a_parent_directory(tmp_path):
    path = write_pyproject(tmp_path, 'backend = "serial"\n')
    deep = tmp_path / "src" / "pkg"
    deep.mkdir(parents=True)
    (deep / "script.py").write_text(SCRIPT)
    result = cli("run", "script.py", cwd=deep)
    assert result.returncode == 0, result.stderr
    assert "backend: serial" in result.stdout
    info = cli("info", cwd=deep)
    assert info.returncode == 0, info.stderr
    assert f"backend: serial  (config file {path})" in info.stdout


def test_discovery_passes_over_a_pyproject_without_the_table(tmp_path):
    path = write_pyproject(tmp_path, 'backend = "serial"\n')
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "pyproject.toml").write_text('[project]\nname = "inner"\n')
    assert config.find_config_file(str(inner)) == (str(path), {"backend": "serial"})


def test_discovery_stops_at_the_nearest_table(tmp_path, monkeypatch):
    write_pyproject(tmp_path, "bogus = 1\n")  # would be an error if it were read
    inner = tmp_path / "inner"
    inner.mkdir()
    path = write_pyproject(inner, "workers = 3\n")
    monkeypatch.chdir(inner)
    settings = config.resolve()
    assert settings.workers == 3 and settings.sources["workers"] == f"config file {path}"


def test_no_config_file_anywhere(tmp_path):
    assert config.find_config_file(str(tmp_path)) is None
    assert config.resolve().sources["backend"] == "default"


# --------------------------------------------------------------------------- the checks in-process
def test_not_installed_backend_found_without_import(monkeypatch):
    facts = registry.BackendFacts(("no_such_engine_xyz",), True, frozenset())
    monkeypatch.setitem(
        registry._registry,
        "fake",
        registry._Entry("no_such_engine_xyz.backend:Fake", "fake", facts),
    )
    with pytest.raises(ua.errors.BackendNotInstalledError, match=r"unidist-api\[fake\]"):
        registry.backend_facts("fake")
    settings = config.resolve(config.Layer("command line", "fake"))
    with pytest.raises(ua.errors.BackendNotInstalledError, match="from --backend"):
        config.check_settings(settings, {"command line": "--{}"})


def test_ambient_address_for_a_local_backend_is_not_refused(monkeypatch):
    monkeypatch.setenv("UNIDIST_API_ADDRESS", "tcp://10.0.0.5:8786")  # meant for dask
    config.check_settings(config.resolve(config.Layer("command line", "local")))


@pytest.mark.parametrize("name", ["serial", "local", "ray", "dask"])
def test_registry_facts_match_the_backend_classes(name):
    try:
        cls = registry.load_backend(name)
    except ImportError:
        pytest.skip(f"{name} is not installed")
    facts = registry.backend_facts(name)
    assert facts.takes_address == cls.takes_address
    assert facts.option_names == cls.option_names


def test_bad_value_in_a_named_config_file(tmp_path, monkeypatch):
    path = tmp_path / "unidist.toml"
    path.write_text("backend = 3\n")  # the keys at the top level
    monkeypatch.setenv("UNIDIST_API_CONFIG", str(path))
    with pytest.raises(ua.errors.InvalidOptionError, match="'backend' in .*unidist.toml must"):
        config.resolve()
