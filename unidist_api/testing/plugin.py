"""pytest plugin: one test, every backend.

``--ua-backends=serial,local,dask,ray`` (default ``serial,local``) selects backends;
a test that takes the ``ua_backend`` fixture runs once per backend (ids such as
``test_x[ray]``), with that backend current, so module functions (``ua.map``) use
it. The fixture's value is the ``ua.Executor``; each backend is started once per
test session. ``ua_serial`` is a serial executor, the reference to compare with.
``--ua-workers=N`` sets the worker count of every backend (default: its own).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import unidist_api as ua

DEFAULT_BACKENDS = "serial,local"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("unidist-api")
    group.addoption(
        "--ua-backends", default=DEFAULT_BACKENDS, metavar="NAMES",
        help=f"comma-separated backends for the ua_backend fixture (default {DEFAULT_BACKENDS})",
    )
    group.addoption(
        "--ua-workers", default=None, type=int, metavar="N",
        help="workers of each backend started for the tests (default: the backend's own)",
    )


def selected_backends(config: pytest.Config) -> list[str]:
    """The backend names given to ``--ua-backends``, checked against the registry."""
    names = [name.strip() for name in str(config.getoption("ua_backends")).split(",")]
    names = [name for name in names if name]
    known = ua.backends()
    unknown = [name for name in names if name not in known]
    if unknown:
        raise pytest.UsageError(
            f"--ua-backends: unknown backend(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "ua_backend" in metafunc.fixturenames:
        names = selected_backends(metafunc.config)
        metafunc.parametrize("ua_backend", names, indirect=True, ids=names)


class _Executors:
    """One executor per backend for the whole session, started on first use."""

    def __init__(self, workers: int | None) -> None:
        self.workers = workers
        self.started: dict[str, ua.Executor] = {}

    def get(self, name: str) -> ua.Executor:
        executor = self.started.get(name)
        if executor is None or executor.is_shutdown:
            executor = ua.Executor(name, workers=self.workers)
            self.started[name] = executor
        return executor

    def close(self) -> None:
        for executor in self.started.values():
            executor.shutdown()


@pytest.fixture(scope="session")
def ua_executors(pytestconfig: pytest.Config) -> Iterator[_Executors]:
    """The session's executors, one per backend; shut down when the session ends."""
    executors = _Executors(pytestconfig.getoption("ua_workers"))
    yield executors
    executors.close()


@pytest.fixture
def ua_backend(request: pytest.FixtureRequest, ua_executors: _Executors) -> Iterator[ua.Executor]:
    """The executor of one selected backend, current while the test runs."""
    name = getattr(request, "param", None)
    if name is None:  # requested without parametrization (e.g. by another fixture)
        name = selected_backends(request.config)[0]
    executor = ua_executors.get(name)
    with ua.use(executor):
        yield executor


@pytest.fixture
def ua_serial(ua_executors: _Executors) -> ua.Executor:
    """A serial executor: the reference every backend's results are compared with."""
    return ua_executors.get("serial")
