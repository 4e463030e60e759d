"""You can see what it started: INFO log lines, ``ex.address``, the ``dashboard`` option.

The session's executors are already started, so a start is watched on a fresh executor:
in this process for serial and local (``caplog``), in a subprocess for dask and ray (a
private Ray cannot start twice in one process), which logs as a user would, with
``logging.basicConfig(level=logging.INFO)``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import unidist_api as ua
from unidist_api.errors import BackendNotInstalledError, InvalidOptionError

ROOT = Path(__file__).resolve().parent.parent

#: Starts two executors of one backend (the second joins what the first started), runs a
#: task on each, reports their address, whether it answers, and describe(); logs to
#: stderr, the phases separated by marker lines.
PROGRAM = textwrap.dedent(
    """
    import json, logging, socket, sys, urllib.request
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import unidist_api as ua

    backend, options = sys.argv[1], json.loads(sys.argv[2])

    def answers(address):
        host, port = address.rpartition("://")[2].rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
            return True
        except OSError:
            return False

    def status(url):
        try:
            return urllib.request.urlopen(url, timeout=10).status
        except Exception as exc:
            return repr(exc)

    report = {}
    first = ua.Executor(backend, workers=1, **options)
    report["before"] = first.address
    print("=== first", file=sys.stderr, flush=True)
    first.submit(abs, -1).result()
    first.submit(abs, -2).result()  # a second task logs nothing more
    print("=== second", file=sys.stderr, flush=True)
    second = ua.Executor(backend, workers=1, **options)
    second.submit(abs, -3).result()
    print("=== end", file=sys.stderr, flush=True)
    report["address"] = first.address
    report["second address"] = second.address
    report["answers"] = answers(first.address) if first.address else None
    report["describe"] = {k: str(v) for k, v in first._backend.describe().items()}
    dashboard = report["describe"].get("dashboard", "")
    report["dashboard status"] = status(dashboard) if dashboard.startswith("http") else None
    client = getattr(first._backend, "_client", None)
    report["dask link"] = client.dashboard_link if client is not None else None
    second.shutdown()
    first.shutdown()
    report["after"] = first.address
    print(json.dumps(report), flush=True)
    """
)


def _run(backend: str, **options: object) -> tuple[dict[str, object], dict[str, list[str]]]:
    """Run PROGRAM; its report and the ``unidist_api`` log lines of each phase."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UNIDIST_API_", "RAY_"))}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, backend, json.dumps(options)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    phases: dict[str, list[str]] = {"start": []}
    phase = "start"
    for line in done.stderr.splitlines():
        if line.startswith("=== "):
            phase = line[4:]
            phases[phase] = []
        else:
            phases[phase].append(line)
    report: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return report, phases


def _ours(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("INFO unidist_api")]


# -- dask and ray: a subprocess each --------------------------------------------------------
def test_dask_logs_what_it_started_and_joined_and_its_address_answers() -> None:
    report, phases = _run("dask")
    started, joined = _ours(phases["first"]), _ours(phases["second"])
    address = report["address"]
    assert isinstance(address, str) and address.startswith("tcp://127.0.0.1:")
    assert report["before"] is None  # reading it started nothing
    assert report["second address"] == address  # the shared embedded cluster
    assert report["answers"] is True
    assert report["after"] == address
    assert len(started) == 1, phases
    assert "dask: started an embedded LocalCluster" in started[0]
    assert address in started[0]
    assert "1 worker processes" in started[0] and "CPU=1" in started[0]
    assert "MEMORY=" in started[0]
    assert len(joined) == 1 and "dask: joined" in joined[0] and address in joined[0]
    assert _ours(phases["end"]) == []
    # no dashboard by default, and no URL anywhere: not Dask's, not ours
    everything = "\n".join(line for lines in phases.values() for line in lines)
    assert "http://" not in everything and "https://" not in everything
    describe = report["describe"]
    assert isinstance(describe, dict)
    assert describe["dashboard"].startswith("off") and report["dashboard status"] is None
    assert report["dask link"] == ""  # Dask's own Client shows none either (it was a 404)


def test_dask_dashboard_answers_on_loopback() -> None:
    pytest.importorskip("bokeh")
    report, phases = _run("dask", dashboard=True)
    started = _ours(phases["first"])
    describe = report["describe"]
    assert isinstance(describe, dict)
    url = describe["dashboard"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/status"), describe
    assert report["dashboard status"] == 200
    assert report["dask link"] == url
    assert len(started) == 1 and f"dashboard at {url}" in started[0]


def test_ray_logs_what_it_started_and_joined_and_its_address_answers() -> None:
    report, phases = _run("ray")
    started, joined = _ours(phases["first"]), _ours(phases["second"])
    address = report["address"]
    assert isinstance(address, str) and address.startswith("127.0.0.1:")
    assert report["before"] is None
    assert report["second address"] == address
    assert report["answers"] is True
    assert len(started) == 1, phases
    assert "ray: started a private local Ray" in started[0] and address in started[0]
    assert "CPU=1" in started[0] and "memory=" in started[0]
    assert "no dashboard" in started[0]
    assert len(joined) == 1 and "ray: joined" in joined[0] and address in joined[0]
    everything = "\n".join(line for lines in phases.values() for line in lines)
    assert "http://" not in everything
    describe = report["describe"]
    assert isinstance(describe, dict) and describe["dashboard"].startswith("off")


def _ray_dashboard_missing() -> bool:
    from ray._private.utils import get_dashboard_dependency_error

    return get_dashboard_dependency_error() is not None


def test_ray_dashboard_without_its_dependencies_names_what_to_install() -> None:
    pytest.importorskip("ray")
    if not _ray_dashboard_missing():
        pytest.skip("Ray's dashboard dependencies are installed")
    with pytest.raises(BackendNotInstalledError, match=r"ray\[default\]"):
        ua.Executor("ray", dashboard=True)


def test_dask_dashboard_without_bokeh_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("distributed")
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "bokeh" else find_spec(name, *a),
    )
    with pytest.raises(BackendNotInstalledError, match=r"unidist-api\[dashboard\]"):
        ua.Executor("dask", dashboard=True)


# -- every backend, in this process ----------------------------------------------------------
def _answers(address: str) -> bool:
    host, port = address.rpartition("://")[2].rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError:
        return False
    return True


def test_address_is_the_running_cluster_or_none(ua_backend: ua.Executor) -> None:
    ua_backend.submit(abs, -1).result()  # started
    address = ua_backend.address
    if ua_backend.backend in ("serial", "local"):
        assert address is None
        return
    assert address is not None and _answers(address)
    host = address.rpartition("://")[2].rsplit(":", 1)[0]
    assert host == "127.0.0.1"
    if ua_backend.backend == "dask":
        assert address.startswith("tcp://")
    facts = ua_backend._backend.describe()
    assert address in str(facts["address"])
    assert "http" not in str(facts["dashboard"])  # none unless asked for


@pytest.mark.parametrize("name", ["serial", "local"])  # dask, ray: in a subprocess (below)
def test_a_fresh_executor_logs_its_start_once(name: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="unidist_api")
    with ua.Executor(name, workers=2) as ex:
        assert ex.address is None
        assert [r for r in caplog.records if r.name.startswith("unidist_api")] == []  # lazy
        ex.submit(abs, -1).result()
        ex.submit(abs, -2).result()
        list(ex.map(abs, range(5)))
    lines = [r for r in caplog.records if r.name.startswith("unidist_api")]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    (record,) = lines
    assert record.levelno == logging.INFO
    message = record.getMessage()
    assert message.startswith(f"{name}: ")
    if name == "local":
        assert "2 worker processes" in message and "OMP_NUM_THREADS=" in message
    else:
        assert "in the calling thread" in message and str(os.getpid()) in message


@pytest.mark.parametrize("backend", ["serial", "local", "dask", "ray"])
def test_reading_address_starts_nothing(backend: str) -> None:
    if backend in ("dask", "ray"):
        pytest.importorskip(backend)
    ex = ua.Executor(backend)
    try:
        assert ex.address is None
        assert getattr(ex._backend, "_client", None) is None  # dask
        assert getattr(ex._backend, "_runtime", None) is None  # ray
        assert getattr(ex._backend, "_pool", None) is None  # local
    finally:
        ex.shutdown()


@pytest.mark.parametrize("backend", ["dask", "ray"])
def test_dashboard_option_is_checked(backend: str) -> None:
    pytest.importorskip(backend)
    with pytest.raises(InvalidOptionError, match="True or False"):
        ua.Executor(backend, dashboard="yes")
    address = "tcp://127.0.0.1:1" if backend == "dask" else "127.0.0.1:1"
    with pytest.raises(InvalidOptionError, match="its own"):
        ua.Executor(backend, address=address, dashboard=True)
    ua.Executor(backend, dashboard=False).shutdown()


@pytest.mark.parametrize("backend", ["serial", "local"])
def test_dashboard_is_refused_where_there_is_none(backend: str) -> None:
    with pytest.raises(InvalidOptionError, match="dashboard"):
        ua.Executor(backend, dashboard=True)


def test_the_library_adds_no_log_handlers(ua_backend: ua.Executor) -> None:
    ua_backend.submit(abs, -1).result()
    for name, logger in logging.root.manager.loggerDict.items():
        if name == "unidist_api" or name.startswith("unidist_api."):
            handlers = getattr(logger, "handlers", [])
            assert all(isinstance(h, logging.NullHandler) for h in handlers), (name, handlers)


def test_unidist_api_info_shows_the_dashboard(tmp_path: Path) -> None:
    pytest.importorskip("bokeh")
    config = tmp_path / "ua.toml"
    config.write_text('backend = "dask"\nworkers = 1\ndashboard = true\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNIDIST_API_")}
    env.update(PYTHONPATH=str(ROOT), UNIDIST_API_CONFIG=str(config))
    done = subprocess.run(
        [sys.executable, "-m", "unidist_api", "info"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "  dashboard: True" in done.stdout  # the configuration
    assert "  dashboard: http://127.0.0.1:" in done.stdout, done.stdout  # the backend's fact
