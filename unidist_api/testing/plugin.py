"""pytest plugin: one test, every backend.

``--ua-backends=serial,local,dask,ray`` (default ``serial,local``) selects backends;
a test that takes the ``ua_backend`` fixture runs once per backend (ids such as
``test_x[ray]``), with that backend current, so module functions (``ua.map``) use
it. The fixture's value is the ``ua.Executor``; each backend is started once per
test session. ``ua_serial`` is a serial executor, the reference to compare with.
``--ua-workers=N`` sets the worker count of every backend (default: its own).
``--ua-check-leftovers`` fails the run if a process started during it outlives it;
the ``ua_no_leftovers`` fixture checks one test (docs/testing.md).
"""

from __future__ import annotations

import faulthandler
import os
from collections.abc import Iterator

import pytest

import unidist_api as ua

from . import leftovers

DEFAULT_BACKENDS = "serial,local"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("unidist-api")
    group.addoption(
        "--ua-backends",
        default=DEFAULT_BACKENDS,
        metavar="NAMES",
        help=f"comma-separated backends for the ua_backend fixture (default {DEFAULT_BACKENDS})",
    )
    group.addoption(
        "--ua-workers",
        default=None,
        type=int,
        metavar="N",
        help="workers of each backend started for the tests (default: the backend's own)",
    )
    group.addoption(
        "--ua-check-leftovers",
        action="store_true",
        default=False,
        help="fail the run if a process started during it is still alive at its end "
        "(after the session's executors are shut down and a grace period; Linux)",
    )
    group.addoption(
        "--ua-leftover-grace",
        default=30.0,
        type=float,
        metavar="SECONDS",
        help="how long processes get to exit before they count as left behind (default 30)",
    )
    group.addoption(
        "--ua-end-timeout",
        default=300.0,
        type=float,
        metavar="SECONDS",
        help="with --ua-check-leftovers: if the end of the run (executors shutting down, "
        "the leftover check, interpreter exit) takes longer, print every thread's "
        "stack and exit with status 1 instead of hanging (default 300)",
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
        excluded = {
            name for mark in metafunc.definition.iter_markers("ua_exclude") for name in mark.args
        }
        names = [name for name in selected_backends(metafunc.config) if name not in excluded]
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
        """Shut every one down, even when one of them fails to (then raise that)."""
        failures: list[BaseException] = []
        for executor in self.started.values():
            try:
                executor.shutdown()
            except Exception as exc:
                failures.append(exc)
        if failures:
            raise failures[0]


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


# -- no process left behind ------------------------------------------------------------------
_SESSION_KEY = pytest.StashKey[tuple[set[leftovers.Ident], leftovers.Sampler]]()
_FOUND_KEY = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "ua_exclude(*backends, reason): the test does not apply to these backends; "
        "it is not generated for them (rather than skipped at run time)",
    )
    if config.getoption("ua_check_leftovers") and leftovers.supported():
        before = set(leftovers.descendants())
        config.stash[_SESSION_KEY] = (before, leftovers.Sampler().start())


@pytest.hookimpl(trylast=True)  # after the session fixtures (our executors) are torn down
def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    state = config.stash.get(_SESSION_KEY, None)
    if state is None:
        return
    del config.stash[_SESSION_KEY]
    before, sampler = state
    # from here to the end of the process: a hang ends loudly, with every thread's stack
    faulthandler.dump_traceback_later(float(config.getoption("ua_end_timeout")), exit=True)
    from ..executor import _shutdown_all

    _shutdown_all()  # executors a test left open stop here, as at interpreter exit
    seen = sampler.stop()
    grace = float(config.getoption("ua_leftover_grace"))
    left = leftovers.wait_gone(set(seen) - before, grace)
    if not left:
        return
    config.stash[_FOUND_KEY] = [seen.get(ident) or leftovers.describe(ident) for ident in left]
    leftovers.kill(left)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    found = terminalreporter.config.stash.get(_FOUND_KEY, None)
    if found:
        terminalreporter.section("processes left behind (--ua-check-leftovers)", red=True)
        terminalreporter.line(
            f"{len(found)} process(es) started during this run were still alive "
            f"{terminalreporter.config.getoption('ua_leftover_grace')} s after it ended "
            "(now killed); whatever started them did not stop them:",
            red=True,
        )
        for line in found:
            terminalreporter.line(f"  {line}")


@pytest.fixture
def ua_no_leftovers(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if a process it started is still alive after it (and a grace period).

    Processes of the session's executors are not the test's: the backend of
    ``ua_backend`` (if the test uses it) is started before the test, and a process
    whose parent (or grand-parent...) existed before the test is that engine's own,
    e.g. a Ray worker the raylet started. A worker that *replaces* one that died during
    the test (a local pool or a Dask worker restarted) is allowed too: for each process
    of before the test that is gone, one new process may stay.
    """
    if not leftovers.supported():
        pytest.skip("the leftover-process check reads /proc: Linux only")
    if "ua_backend" in request.fixturenames:
        executor: ua.Executor = request.getfixturevalue("ua_backend")
        executor.submit(os.getpid).result()  # start the engine now, not during the test
        _settle()
    before = set(leftovers.descendants())
    sampler = leftovers.Sampler(every=0.2).start()
    yield
    seen = sampler.stop()
    grace = float(request.config.getoption("ua_leftover_grace"))
    new = [ident for ident in seen if ident not in before]
    left: list[leftovers.Ident] = []
    deadline = grace
    for _ in range(2):  # once to let them go, once more for replacements to appear
        left = [
            ident
            for ident in leftovers.wait_gone(new, deadline)
            if not leftovers.allowed_by_ancestry(ident, before)
        ]
        replaced = sum(1 for ident in before if not leftovers.alive(ident))
        if len(left) <= replaced:
            return
        deadline = 1.0
    pytest.fail(
        f"{len(left)} process(es) started during this test are still alive {grace} s "
        f"after it ({replaced} replace(s) allowed for processes that died):\n  "
        + "\n  ".join(seen[ident] for ident in left),
        pytrace=False,
    )


def _settle(quiet: float = 1.0, limit: float = 20.0) -> None:
    """Wait until this process's descendants stop changing (an engine finishing its start)."""
    import time

    last = set(leftovers.descendants())
    stable_since = time.monotonic()
    end = stable_since + limit
    while time.monotonic() < end:
        time.sleep(0.2)
        now = set(leftovers.descendants())
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= quiet:
            return
