"""Configuration: precedence of Executor(backend=...) > ua.use > ua.configure >
environment > config file > 'local', context-locality of ua.use, workers and
backend options.

These tests are about configuration, not about running tasks, so they are not
parametrized over backends; they only name 'serial' and 'local'.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

import unidist_api as ua

ENV_VARS = (
    "UNIDIST_API_BACKEND",
    "UNIDIST_API_ADDRESS",
    "UNIDIST_API_WORKERS",
    "UNIDIST_API_CONFIG",
)


@pytest.fixture(autouse=True)
def clean_config(monkeypatch, tmp_path):
    """No environment configuration, an empty working directory, and no
    process default before and after each test."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    ua.configure(None)
    yield
    ua.configure(None)


@pytest.fixture
def created():
    """Executors a test creates itself; shut down at the end."""
    executors = []
    yield executors
    for ex in executors:
        ex.shutdown()


def current_backend():
    return ua.current_executor().backend


def write_pyproject(directory, body):
    (directory / "pyproject.toml").write_text(
        '[project]\nname = "someone-elses-project"\n\n[tool.unidist_api]\n' + body
    )


def write_config_file(path, body):
    # The file named by UNIDIST_API_CONFIG: the same settings both at the top
    # level and under [tool.unidist_api], so either layout is understood.
    path.write_text(body + "\n[tool.unidist_api]\n" + body)


# --------------------------------------------------------------------------- each level alone
def test_default_is_local():
    assert current_backend() == "local"


def test_pyproject_selects_backend(tmp_path):
    write_pyproject(tmp_path, 'backend = "serial"\n')
    assert current_backend() == "serial"


def test_pyproject_without_tool_table_is_ignored(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert current_backend() == "local"


def test_config_file_env_selects_backend(tmp_path, monkeypatch):
    cfg = tmp_path / "settings" / "unidist.toml"
    cfg.parent.mkdir()
    write_config_file(cfg, 'backend = "serial"\n')
    monkeypatch.setenv("UNIDIST_API_CONFIG", str(cfg))
    assert current_backend() == "serial"


def test_env_selects_backend(monkeypatch):
    monkeypatch.setenv("UNIDIST_API_BACKEND", "serial")
    assert current_backend() == "serial"


def test_configure_selects_backend():
    ua.configure("serial")
    assert current_backend() == "serial"


def test_use_selects_backend():
    with ua.use("serial"):
        assert current_backend() == "serial"
    assert current_backend() == "local"


# --------------------------------------------------------------------------- precedence
@pytest.mark.parametrize("low, high", [("serial", "local"), ("local", "serial")])
def test_env_beats_pyproject(tmp_path, monkeypatch, low, high):
    write_pyproject(tmp_path, f'backend = "{low}"\n')
    monkeypatch.setenv("UNIDIST_API_BACKEND", high)
    assert current_backend() == high


@pytest.mark.parametrize("low, high", [("serial", "local"), ("local", "serial")])
def test_env_beats_config_file(tmp_path, monkeypatch, low, high):
    cfg = tmp_path / "ua.toml"
    write_config_file(cfg, f'backend = "{low}"\n')
    monkeypatch.setenv("UNIDIST_API_CONFIG", str(cfg))
    monkeypatch.setenv("UNIDIST_API_BACKEND", high)
    assert current_backend() == high


@pytest.mark.parametrize("low, high", [("serial", "local"), ("local", "serial")])
def test_configure_beats_env(monkeypatch, low, high):
    monkeypatch.setenv("UNIDIST_API_BACKEND", low)
    ua.configure(high)
    assert current_backend() == high


@pytest.mark.parametrize("low, high", [("serial", "local"), ("local", "serial")])
def test_configure_beats_pyproject(tmp_path, low, high):
    write_pyproject(tmp_path, f'backend = "{low}"\n')
    ua.configure(high)
    assert current_backend() == high


@pytest.mark.parametrize("low, high", [("serial", "local"), ("local", "serial")])
def test_use_beats_configure(low, high):
    ua.configure(low)
    with ua.use(high):
        assert current_backend() == high
    assert current_backend() == low


@pytest.mark.parametrize("low, high", [("serial", "local"), ("local", "serial")])
def test_use_beats_env(monkeypatch, low, high):
    monkeypatch.setenv("UNIDIST_API_BACKEND", low)
    with ua.use(high):
        assert current_backend() == high
    assert current_backend() == low


@pytest.mark.parametrize("low, high", [("serial", "local"), ("local", "serial")])
def test_explicit_executor_beats_use(created, low, high):
    with ua.use(low):
        ex = ua.Executor(backend=high)
        created.append(ex)
        assert ex.backend == high
        assert current_backend() == low


def test_executor_without_backend_follows_env(created, monkeypatch):
    monkeypatch.setenv("UNIDIST_API_BACKEND", "serial")
    ex = ua.Executor()
    created.append(ex)
    assert ex.backend == "serial"


def test_nested_use_blocks():
    with ua.use("serial"):
        with ua.use("local"):
            assert current_backend() == "local"
            with ua.use("serial"):
                assert current_backend() == "serial"
            assert current_backend() == "local"
        assert current_backend() == "serial"
    assert current_backend() == "local"


def test_use_restored_after_exception():
    with pytest.raises(KeyError), ua.use("serial"):
        raise KeyError("inside")
    assert current_backend() == "local"


def test_configure_none_resets_process_default(monkeypatch):
    ua.configure("serial")
    assert current_backend() == "serial"
    ua.configure(None)
    assert current_backend() == "local"
    monkeypatch.setenv("UNIDIST_API_BACKEND", "serial")
    ua.configure("local")
    assert current_backend() == "local"
    ua.configure(None)
    assert current_backend() == "serial"


def test_module_functions_use_current_backend():
    with ua.use("serial"):
        assert ua.current_executor().backend == "serial"
        assert ua.submit(sum, [1, 2, 3]).result() == 6
        assert list(ua.map(abs, [-1, 2])) == [1, 2]


# --------------------------------------------------------------------------- use is context-local
@pytest.mark.parametrize("default, inner", [(None, "serial"), ("serial", "local")])
def test_thread_started_in_use_block_sees_process_default(default, inner):
    if default is not None:
        ua.configure(default)
    expected = default or "local"
    seen = []

    def probe():
        try:
            seen.append(current_backend())
        except Exception as exc:  # noqa: BLE001 - report a failure in the thread
            seen.append(repr(exc))

    with ua.use(inner):
        assert current_backend() == inner
        t = threading.Thread(target=probe)
        t.start()
        t.join(60)
        assert current_backend() == inner
    assert seen == [expected]


@pytest.mark.parametrize("first, second", [("serial", "local"), ("local", "serial")])
def test_asyncio_tasks_in_different_use_blocks(first, second):
    seen = {}

    async def main():
        a_in, b_in, a_rec, b_rec = (asyncio.Event() for _ in range(4))

        async def task_a():
            with ua.use(first):
                a_in.set()
                await b_in.wait()  # task_b is now inside its own block
                seen["a"] = current_backend()
                a_rec.set()
                await b_rec.wait()
                seen["a_after"] = current_backend()

        async def task_b():
            await a_in.wait()
            with ua.use(second):
                b_in.set()
                await a_rec.wait()  # task_a recorded while we were inside our block
                seen["b"] = current_backend()
                b_rec.set()

        await asyncio.wait_for(asyncio.gather(task_a(), task_b()), 60)
        seen["main"] = current_backend()

    asyncio.run(main())
    assert seen == {"a": first, "b": second, "a_after": first, "main": "local"}


# --------------------------------------------------------------------------- workers
def test_workers_from_env(monkeypatch):
    monkeypatch.setenv("UNIDIST_API_BACKEND", "local")
    monkeypatch.setenv("UNIDIST_API_WORKERS", "3")
    ex = ua.current_executor()
    assert ex.backend == "local"
    assert ex.workers == 3


@pytest.mark.parametrize("bad", ["abc", "2.5"])
def test_workers_env_not_an_integer(monkeypatch, bad):
    monkeypatch.setenv("UNIDIST_API_BACKEND", "local")
    monkeypatch.setenv("UNIDIST_API_WORKERS", bad)
    with pytest.raises(ValueError, match="UNIDIST_API_WORKERS"):
        ua.current_executor()


@pytest.mark.parametrize("bad", ["0", "-2"])
def test_workers_env_not_positive(monkeypatch, bad):
    monkeypatch.setenv("UNIDIST_API_BACKEND", "local")
    monkeypatch.setenv("UNIDIST_API_WORKERS", bad)
    with pytest.raises(ValueError, match="UNIDIST_API_WORKERS"):
        ua.current_executor()


def test_workers_from_pyproject(tmp_path):
    write_pyproject(tmp_path, 'backend = "local"\nworkers = 3\n')
    ex = ua.current_executor()
    assert ex.backend == "local"
    assert ex.workers == 3


def test_workers_from_configure():
    ua.configure("local", workers=2)
    assert ua.current_executor().workers == 2


def test_workers_from_use():
    with ua.use("local", workers=3):
        assert ua.current_executor().workers == 3


def test_executor_workers(created):
    ex = ua.Executor("local", workers=3)
    created.append(ex)
    assert ex.workers == 3


def test_executor_max_workers_synonym(created):
    ex = ua.Executor(max_workers=2)
    created.append(ex)
    assert ex.backend == "local"
    assert ex.workers == 2


def test_executor_workers_and_max_workers_conflict():
    with pytest.raises(TypeError, match="max_workers"):
        ua.Executor("local", workers=2, max_workers=3)


@pytest.mark.parametrize("bad", [0, -1])
def test_executor_workers_not_positive(bad):
    with pytest.raises(ValueError, match="workers"):
        ua.Executor("local", workers=bad)


def test_default_workers_positive():
    ex = ua.current_executor()
    assert isinstance(ex.workers, int)
    assert ex.workers >= 1


# --------------------------------------------------------------------------- backend options
@pytest.mark.parametrize("backend", ["serial", "local"])
def test_unknown_backend_option(backend):
    with pytest.raises(ua.errors.InvalidOptionError, match="bogus") as info:
        ua.Executor(backend, bogus=1)
    assert isinstance(info.value, ValueError)


def test_unknown_backend_option_in_use():
    with pytest.raises(ua.errors.InvalidOptionError, match="bogus"), ua.use("local", bogus=1):
        ua.current_executor()


def test_unknown_backend_option_in_configure():
    with pytest.raises(ua.errors.InvalidOptionError, match="bogus"):
        ua.configure("local", bogus=1)
        ua.current_executor()


def test_unknown_backend_from_env(monkeypatch):
    monkeypatch.setenv("UNIDIST_API_BACKEND", "no_such_backend_xyz")
    with pytest.raises(ua.errors.UnknownBackendError) as info:
        ua.current_executor()
    msg = str(info.value)
    assert "no_such_backend_xyz" in msg and "serial" in msg and "local" in msg


def test_unknown_backend_from_pyproject(tmp_path):
    write_pyproject(tmp_path, 'backend = "no_such_backend_xyz"\n')
    with pytest.raises(ua.errors.UnknownBackendError, match="no_such_backend_xyz"):
        ua.current_executor()


def test_explicit_address_is_refused_by_machine_local_backends_only(ua_backend):
    name = ua_backend.backend
    if ua.registry.load_backend(name).takes_address:  # a cluster backend: kept, not used yet
        ex = ua.Executor(name, address="tcp://127.0.0.1:1")
        assert ex.address == "tcp://127.0.0.1:1"
        ex.shutdown()
        return
    with pytest.raises(ua.errors.InvalidOptionError, match="takes no address"):
        ua.Executor(name, address="tcp://127.0.0.1:1")


def test_ambient_address_does_not_break_machine_local_backends(monkeypatch):
    # an address in the environment is meant for a cluster backend chosen elsewhere
    monkeypatch.setenv("UNIDIST_API_ADDRESS", "tcp://127.0.0.1:1")
    ex = ua.Executor("serial")
    try:
        assert ex.address is None
        assert ex.submit(abs, -2).result() == 2
    finally:
        ex.shutdown()
