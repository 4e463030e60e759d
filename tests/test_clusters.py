"""Real clusters started with the engines' own command lines, on 127.0.0.1.

A Dask scheduler with two workers, and a Ray head with a second node, each started
once per session as separate processes. A user program runs on each through
``unidist-api run --address`` and must print what it prints on serial; afterwards the
cluster must still be up (we never stop what we did not start). Each cluster is torn
down by the process group of the processes this module started.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "examples" / "quickstart.py"
BIN = Path(sys.executable).parent
START_TIMEOUT = 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(args: list[str], log: Path, **env_extra: str) -> subprocess.Popen[bytes]:
    """A process in its own process group, so teardown reaches all it spawns."""
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", **env_extra)
    with open(log, "wb") as out:
        return subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for process in processes:  # whatever is left of the groups: no draining, no waiting
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def _run_cli(*args: str, **env_extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UNIDIST_API_", "RAY_AUTH_"))}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-m", "unidist_api", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def serial_output() -> str:
    done = _run_cli("run", "--backend", "serial", str(QUICKSTART))
    assert done.returncode == 0, done.stderr
    return done.stdout


def _wait_for(check: str, timeout: float, **env_extra: str) -> None:
    """Run ``check`` (Python code) until it succeeds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    env = dict(os.environ, **env_extra)
    while True:
        probe = subprocess.run(
            [sys.executable, "-c", check], capture_output=True, text=True, timeout=timeout, env=env
        )
        if probe.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"cluster did not come up: {probe.stderr[-2000:]}")
        time.sleep(1)


# -- Dask --------------------------------------------------------------------------------
DASK_PROBE = """
from distributed import Client
with Client({address!r}, timeout=10) as client:
    client.wait_for_workers(2, timeout=30)
    assert client.submit(sum, [1, 2], pure=False).result() == 3
"""


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    logs = tmp_path_factory.mktemp("dask-cluster")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    processes = [
        _start(
            [
                str(BIN / "dask"),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-dashboard",
            ],
            logs / "scheduler.log",
        )
    ]
    try:
        for number in range(2):
            processes.append(
                _start(
                    [
                        str(BIN / "dask"),
                        "worker",
                        address,
                        "--host",
                        "127.0.0.1",
                        "--nthreads",
                        "1",
                        "--no-dashboard",
                        "--name",
                        f"worker-{number}",
                    ],
                    logs / f"worker-{number}.log",
                )
            )
        _wait_for(DASK_PROBE.format(address=address), START_TIMEOUT)
        yield address
    finally:
        _stop(processes)


def test_program_on_a_dask_cluster_prints_what_serial_prints(dask_cluster, serial_output):
    done = _run_cli("run", "--backend", "dask", "--address", dask_cluster, str(QUICKSTART))
    assert done.returncode == 0, done.stderr
    assert done.stdout == serial_output
    _wait_for(DASK_PROBE.format(address=dask_cluster), 30)  # still up and serving


def test_info_reports_the_dask_cluster(dask_cluster):
    done = _run_cli("info", "--backend", "dask", "--address", dask_cluster)
    assert done.returncode == 0, done.stderr
    assert dask_cluster in done.stdout


# -- Ray ----------------------------------------------------------------------------------
RAY_PROBE = """
import ray
ray.init(address={address!r}, logging_level="ERROR")
assert sum(node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]) >= 2
assert ray.get(ray.remote(lambda: 3).remote()) == 3
"""


@pytest.fixture(scope="module")
def ray_token(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A token of this test cluster's own: its processes run with token authentication."""
    path = tmp_path_factory.mktemp("ray-token") / "auth_token"
    path.write_text(secrets.token_hex(32))
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}


@pytest.fixture(scope="module")
def ray_cluster(
    tmp_path_factory: pytest.TempPathFactory, ray_token: dict[str, str]
) -> Iterator[str]:
    logs = tmp_path_factory.mktemp("ray-cluster")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--block", "--num-cpus", "1", "--disable-usage-stats"]
    processes = [
        _start(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                "--node-ip-address",
                "127.0.0.1",
                "--port",
                str(port),
                "--include-dashboard",
                "false",
                *common,
            ],
            logs / "head.log",
            **ray_token,
        )
    ]
    try:
        probe = RAY_PROBE.replace(">= 2", ">= 1").format(address=address)
        _wait_for(probe, START_TIMEOUT, **ray_token)
        processes.append(
            _start(
                [
                    str(BIN / "ray"),
                    "start",
                    "--address",
                    address,
                    "--node-ip-address",
                    "127.0.0.1",
                    *common,
                ],
                logs / "node.log",
                **ray_token,
            )
        )
        _wait_for(RAY_PROBE.format(address=address), START_TIMEOUT, **ray_token)
        yield address
    finally:
        _stop(processes)


def test_program_on_a_ray_cluster_prints_what_serial_prints(ray_cluster, ray_token, serial_output):
    # only the token's path is given, as a user would: we turn token mode on ourselves
    token_path = ray_token["RAY_AUTH_TOKEN_PATH"]
    done = _run_cli(
        "run",
        "--backend",
        "ray",
        "--address",
        ray_cluster,
        str(QUICKSTART),
        RAY_AUTH_TOKEN_PATH=token_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == serial_output
    _wait_for(RAY_PROBE.format(address=ray_cluster), 30, **ray_token)  # still up and serving


def test_ray_cluster_without_a_token_is_a_clear_error(ray_cluster, tmp_path):
    done = _run_cli("info", "--backend", "ray", "--address", ray_cluster, HOME=str(tmp_path))
    assert done.returncode != 0
    assert "token" in done.stderr
    assert "RAY_AUTH_TOKEN" in done.stderr


def test_info_reports_the_ray_cluster(ray_cluster, ray_token):
    done = _run_cli(
        "info",
        "--backend",
        "ray",
        "--address",
        ray_cluster,
        RAY_AUTH_TOKEN_PATH=ray_token["RAY_AUTH_TOKEN_PATH"],
    )
    assert done.returncode == 0, done.stderr
    assert ray_cluster in done.stdout


def test_unreachable_address_fails_fast_with_a_clear_message():
    port = _free_port()  # nothing listens there
    for backend, address in (("dask", f"tcp://127.0.0.1:{port}"), ("ray", f"127.0.0.1:{port}")):
        done = _run_cli("info", "--backend", backend, "--address", address)
        assert done.returncode != 0
        assert address in done.stderr


LOSE_SCHEDULER = """
import sys, time
import unidist_api as ua
ex = ua.Executor("dask", address=sys.argv[1], connect_timeout=5)
future = ex.submit(time.sleep, 120)
print("submitted", flush=True)
try:
    future.result(timeout=100)
except Exception as exc:
    print(f"{type(exc).__module__}.{type(exc).__name__}: {exc}", flush=True)
ex.shutdown(wait=False, cancel_futures=True)
"""


def test_losing_the_dask_scheduler_is_a_cluster_connection_error(tmp_path):
    """The scheduler gone under a pending task: ClusterConnectionError naming it, not
    WorkerLostError (Dask cancels the futures with ``scheduler-connection-lost``)."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = _start(
        [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port)]
        + ["--no-dashboard"],
        tmp_path / "scheduler.log",
    )
    processes = [scheduler]
    try:
        processes.append(
            _start(
                [str(BIN / "dask"), "worker", address, "--host", "127.0.0.1"]
                + ["--nthreads", "1", "--no-dashboard"],
                tmp_path / "worker.log",
            )
        )
        _wait_for(DASK_PROBE.format(address=address).replace("(2,", "(1,"), START_TIMEOUT)
        script = tmp_path / "driver.py"
        script.write_text(LOSE_SCHEDULER)
        driver = subprocess.Popen(
            [sys.executable, str(script), address],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            start_new_session=True,
        )
        try:
            assert driver.stdout is not None
            assert driver.stdout.readline().strip() == "submitted"
            time.sleep(1)  # the task is on the worker
            os.killpg(scheduler.pid, signal.SIGKILL)
            out, err = driver.communicate(timeout=120)
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait()
        assert driver.returncode == 0, err[-3000:]
        assert "unidist_api.errors.ClusterConnectionError" in out, out + err[-3000:]
        assert f"Dask scheduler at {address}" in out, out
        assert "WorkerLost" not in out
    finally:
        _stop(processes)
