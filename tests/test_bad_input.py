"""Bad input on every backend: a clear error naming the problem and the fix, raised early.

What tests/test_errors.py, test_task_options.py, test_config.py and test_clusters.py
already check is not repeated here: this file covers a function or argument the workers
cannot import, resource requests no worker can satisfy, wrong cluster addresses (a
server that is not a scheduler, malformed addresses, one engine's address given to the
other), missing engine packages of the real backends, the option and shutdown cases
those files leave out, and what an unpicklable result's error says.
"""

from __future__ import annotations

import importlib.util
import json
import operator
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import cloudpickle
import pytest

import unidist_api as ua

ROOT = Path(__file__).resolve().parent.parent
MODULE_SOURCE = """
class Box:
    def __init__(self, value):
        self.value = value


def triple(x):
    return 3 * x


def quadruple(x):
    return 4 * x
"""


# --------------------------------------------------------------------------- tasks
def square(x):
    return x * x


def unbox(box):
    return box.value


def bump(path, *rest):
    """Count calls in a file (to check that nothing ran); returns its first argument."""
    p = Path(path)
    p.write_text(str(int(p.read_text()) + 1 if p.exists() else 1))
    return path


def make_lock():
    import threading

    return threading.Lock()


def lock_for(x):
    return make_lock() if x == 3 else x


# ------------------------------------------------------------- a module the workers cannot import
@pytest.fixture
def private_module(tmp_path):
    """A module the caller imports but the workers cannot: loaded from tmp_path by file.

    Its directory is on nobody's ``sys.path`` (not even the caller's, so a worker process
    spawned later cannot inherit it), and it lies outside the program's directory, so
    cloudpickle pickles its functions and classes by reference, as for any installed
    module the workers lack.
    """
    name = f"ua_private_{uuid.uuid4().hex[:12]}"
    path = tmp_path / f"{name}.py"
    path.write_text(MODULE_SOURCE)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    yield module
    try:
        cloudpickle.unregister_pickle_by_value(module)
    except ValueError:  # was not registered
        pass
    del sys.modules[name]


def assert_names_the_module(error, module, what):
    message = str(error)
    assert isinstance(error, ua.errors.SerializationError), repr(error)
    assert isinstance(error, TypeError)
    assert module.__name__ in message, message
    assert what in message, message
    assert "register_pickle_by_value" in message, message  # the fix
    assert "install" in message.lower(), message


def test_function_the_workers_cannot_import(ua_backend, private_module):
    future = ua.submit(private_module.triple, 5)
    if ua_backend.backend == "serial":  # runs in this process, which imports it
        assert future.result() == 15
        return
    error = future.exception(timeout=120)  # never a hang
    assert_names_the_module(error, private_module, "triple")
    with pytest.raises(ua.errors.SerializationError):
        future.result()
    assert ua.submit(square, 6).result() == 36  # the executor is still usable


def test_function_the_workers_cannot_import_in_map(ua_backend, private_module):
    results = ua.map(private_module.triple, range(20), timeout=120)
    if ua_backend.backend == "serial":
        assert list(results) == [3 * x for x in range(20)]
        return
    with pytest.raises(ua.errors.SerializationError) as info:
        list(results)
    assert_names_the_module(info.value, private_module, "triple")
    assert list(ua.map(square, range(4))) == [0, 1, 4, 9]


def test_argument_the_workers_cannot_import(ua_backend, private_module):
    future = ua.submit(unbox, private_module.Box(7))
    if ua_backend.backend == "serial":
        assert future.result() == 7
        return
    error = future.exception(timeout=120)
    assert_names_the_module(error, private_module, "unbox")  # the task it was passed to
    assert "argument" in str(error)
    boxes = [private_module.Box(i) for i in range(5)]
    with pytest.raises(ua.errors.SerializationError, match=private_module.__name__):
        list(ua.map(unbox, boxes, timeout=120))
    assert ua.submit(square, 3).result() == 9


def test_put_object_the_workers_cannot_import(ua_backend, private_module):
    # dask: its worker unpickles a put object at once, so put itself raises;
    # elsewhere the object is stored as a pickle and the task using it fails
    try:
        handle = ua.put(private_module.Box(4))
        error = ua.submit(unbox, handle).exception(timeout=120)
    except ua.errors.SerializationError as raised:
        assert ua_backend.backend == "dask"
        error = raised
    if ua_backend.backend == "serial":
        assert error is None
        return
    assert_names_the_module(
        error, private_module, "put" if ua_backend.backend == "dask" else "unbox"
    )
    assert ua.submit(square, 4).result() == 16


def test_shipping_the_module_by_value_is_the_fix(ua_backend, private_module):
    cloudpickle.register_pickle_by_value(private_module)
    # quadruple was never pickled by reference, so no executor has it cached that way
    assert ua.submit(private_module.quadruple, 5).result(timeout=120) == 20
    assert ua.submit(unbox, private_module.Box(8)).result(timeout=120) == 8


# --------------------------------------------------------------------------- unpicklable result
def test_unpicklable_result_names_the_task_and_the_fix(ua_backend):
    error = ua.submit(make_lock).exception(timeout=120)
    assert isinstance(error, ua.errors.SerializationError), repr(error)
    message = str(error)
    assert "make_lock" in message and "lock" in message.split("make_lock", 1)[1], message
    assert "Return something picklable" in message, message
    with pytest.raises(ua.errors.SerializationError, match="lock_for"):
        list(ua.map(lock_for, range(6), timeout=120))
    assert ua.submit(square, 2).result() == 4


# -------------------------------------------------------------------------- resources no worker has
IMPOSSIBLE = [
    pytest.param({"resources": {"nope": 1}}, "nope", id="resources"),
    pytest.param({"cpus": 64}, "64", id="cpus"),
    pytest.param({"memory": 10**15}, "memory", id="memory"),
]


@pytest.mark.parametrize(("options", "named"), IMPOSSIBLE)
def test_resource_request_no_worker_can_satisfy_is_refused_at_submit(
    ua_backend, tmp_path, options, named
):
    counter = tmp_path / "ran"
    started = time.monotonic()
    with pytest.raises(ua.errors.UnsupportedOptionError) as info:
        ua.submit(ua.task(bump, **options), str(counter))
    assert time.monotonic() - started < 60  # refused, not queued for ever
    assert isinstance(info.value, ValueError)
    assert named in str(info.value).lower(), str(info.value)
    assert not counter.exists()
    assert ua.submit(square, 5).result() == 25


@pytest.mark.parametrize(("options", "named"), IMPOSSIBLE[:1])
def test_resource_request_refused_before_any_task_starts(ua_backend, tmp_path, options, named):
    counter = tmp_path / "ran"
    fn = ua.task(bump, **options)
    items = [str(counter)] * 10
    with pytest.raises(ua.errors.UnsupportedOptionError, match=named):
        list(ua.map(fn, items))
    with pytest.raises(ua.errors.UnsupportedOptionError, match=named):
        list(ua.pipeline(ua.stage(bump), ua.stage(bump, **options))(items))
    with pytest.raises(ua.errors.UnsupportedOptionError, match=named):
        ua.reduce(fn, items)
    assert not counter.exists()  # not even the first stage ran
    assert ua.reduce(operator.add, range(10)) == 45


@pytest.mark.ua_exclude(
    "serial", "local", reason="serial and local schedule no resources (their refusal says so)"
)
def test_refusal_names_what_the_cluster_offers(ua_backend):
    backend = ua_backend.backend
    with pytest.raises(ua.errors.UnsupportedOptionError) as info:
        ua.submit(ua.task(square, resources={"nope": 1}), 1)
    message = str(info.value)
    assert "CPU" in message, message  # what the workers do have
    assert ("add a node" in message) if backend == "ray" else ("--resources" in message), message


# --------------------------------------------------------------------------- options and shutdown
def test_unknown_backend_option_on_every_backend(ua_backend):
    with pytest.raises(ua.errors.InvalidOptionError, match="bogus") as info:
        ua.Executor(ua_backend.backend, bogus=1)
    assert "accepts" in str(info.value)  # the options it does take


def test_unknown_stage_option():
    with pytest.raises(ua.errors.InvalidOptionError, match="bogus") as info:
        ua.stage(square, bogus=1)
    assert "retries" in str(info.value)  # the valid ones


def test_pipeline_bound_to_a_shut_down_executor(ua_backend):
    executor = ua.Executor(ua_backend.backend)
    run = executor.pipeline(square)
    assert list(run(range(3))) == [0, 1, 4]
    executor.shutdown()
    with pytest.raises(ua.errors.ExecutorShutdownError, match="ua.Executor"):
        list(run(range(3)))


# -------------------------------------------------------------------------- missing engine packages
@pytest.mark.parametrize(("backend", "engine"), [("ray", "ray"), ("dask", "distributed")])
def test_missing_engine_package_names_the_extra(backend, engine):
    code = textwrap.dedent(f"""
        import sys
        sys.modules[{engine!r}] = None  # as if the package were not installed
        import unidist_api as ua
        try:
            ua.Executor({backend!r})
        except ua.errors.BackendNotInstalledError as exc:
            print(exc)
        else:
            print("no error")
    """)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert f'pip install "unidist-api[{backend}]"' in done.stdout, done.stdout


# -------------------------------------------------------------------------- wrong cluster addresses
CONNECT_TIMEOUT = 3.0
ADDRESS_PROBE = r"""
import http.server, json, socket, sys, threading, time
import unidist_api as ua

backend, timeout, other = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
accepted = []
threading.Thread(target=lambda: [accepted.append(silent.accept()) for _ in iter(int, 1)],
                 daemon=True).start()
http.server.BaseHTTPRequestHandler.log_message = lambda *args: None
web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
threading.Thread(target=web.serve_forever, daemon=True).start()
silent_port, web_port = silent.getsockname()[1], web.server_address[1]
if backend == "dask":
    addresses = [f"tcp://127.0.0.1:{silent_port}", f"127.0.0.1:{web_port}", "tcp://",
                 "nope:abc", f"ray://127.0.0.1:{silent_port}", *other]
else:
    addresses = [f"127.0.0.1:{silent_port}", f"127.0.0.1:{web_port}", "tcp://", "nope:abc",
                 *other]
for address in addresses:
    started = time.monotonic()
    try:
        executor = ua.Executor(backend, address=address, connect_timeout=timeout)
        executor.submit(abs, -1).result()
        outcome = {"error": None}
    except Exception as exc:
        outcome = {"error": type(exc).__name__, "connection": isinstance(exc, ConnectionError),
                   "message": str(exc)}
    outcome.update(address=address, seconds=time.monotonic() - started)
    print(json.dumps(outcome), flush=True)
"""

RAY_HEAD = r"""
import os, sys, time, ray
ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


def _probe_addresses(backend: str, *other: str) -> list[dict]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("UNIDIST_API_", "RAY_ADDRESS", "DASK_SCHEDULER"))
    }
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    args = [sys.executable, "-c", ADDRESS_PROBE, backend, str(CONNECT_TIMEOUT), *other]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _check_refused(outcomes: list[dict], count: int) -> None:
    assert len(outcomes) == count, outcomes
    for outcome in outcomes:
        assert outcome["error"] == "ClusterConnectionError", outcome
        assert outcome["connection"], outcome  # a ConnectionError
        assert outcome["address"] in outcome["message"], outcome
        # bounded by connect_timeout (plus start-up), never a hang
        assert outcome["seconds"] < CONNECT_TIMEOUT + 30, outcome


def test_wrong_dask_addresses_fail_within_the_connect_timeout(tmp_path):
    # a real Ray head's GCS address, given to dask
    head = subprocess.Popen(
        [sys.executable, "-c", RAY_HEAD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"),
        start_new_session=True,
    )
    try:
        assert head.stdout is not None
        gcs = head.stdout.readline().strip()
        assert gcs, "the Ray head did not start"
        outcomes = _probe_addresses("dask", gcs)
    finally:
        _stop_server(head)
    print(json.dumps(outcomes, indent=1))
    _check_refused(outcomes, 6)
    by_address = {outcome["address"]: outcome["message"] for outcome in outcomes}
    assert "ray backend" in by_address[next(a for a in by_address if a.startswith("ray://"))]
    assert "tcp://host:port" in by_address["nope:abc"]


def _stop_server(server: subprocess.Popen[str]) -> None:
    """Close a test server's stdin (it exits then); kill its process group if it hangs."""
    assert server.stdin is not None
    server.stdin.close()
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, 9)
        server.wait()


DASK_SCHEDULER = r"""
import sys
from distributed import LocalCluster
with LocalCluster(n_workers=0, dashboard_address=None, host="127.0.0.1") as cluster:
    print(cluster.scheduler_address, flush=True)
    sys.stdin.read()
"""


def test_wrong_ray_addresses_fail_within_the_connect_timeout():
    scheduler = subprocess.Popen(
        [sys.executable, "-c", DASK_SCHEDULER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert scheduler.stdout is not None
        address = scheduler.stdout.readline().strip()
        assert address.startswith("tcp://"), address
        outcomes = _probe_addresses("ray", address, address.removeprefix("tcp://"))
    finally:
        _stop_server(scheduler)
    print(json.dumps(outcomes, indent=1))
    _check_refused(outcomes, 6)
    assert "dask backend" in outcomes[4]["message"], outcomes[4]  # tcp://: a Dask address


def test_dask_cluster_resources_are_checked_against_its_workers():
    """On a running cluster: what its workers declare, looked up again after a refusal."""
    import distributed

    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tcp://",
        host="127.0.0.1",
        dashboard_address=None,
        resources={"special": 1},
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    ) as cluster:
        executor = ua.Executor("dask", address=cluster.scheduler_address)
        late = None
        try:
            assert executor.submit(ua.task(square, resources={"special": 1}), 3).result() == 9
            with pytest.raises(ua.errors.UnsupportedOptionError, match="special=1"):
                executor.submit(ua.task(square, resources={"special": 2}), 3)
            wants_late = ua.task(square, resources={"late": 1})
            with pytest.raises(ua.errors.UnsupportedOptionError, match="late=1"):
                executor.submit(wants_late, 4)
            # a worker that has it joins: a later request is accepted (no restart needed)
            late = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "dask"),
                    "worker",
                    cluster.scheduler_address,
                    "--host",
                    "127.0.0.1",
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                    "--resources",
                    "late=1",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            deadline = time.monotonic() + 120
            while True:
                try:
                    assert executor.submit(wants_late, 4).result(timeout=60) == 16
                    break
                except ua.errors.UnsupportedOptionError:
                    assert time.monotonic() < deadline, "the new worker was never seen"
                    time.sleep(0.5)
        finally:
            executor.shutdown()
            if late is not None:
                os.killpg(late.pid, 15)
                late.wait(timeout=60)
