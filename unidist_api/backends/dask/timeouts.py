# mypy: disallow-untyped-calls=False
"""Tasks past their timeout that their worker thread cannot stop.

The worker interrupts a task past its timeout with an asynchronous exception in its
thread (:mod:`unidist_api.timeouts`); a thread blocked in a C call ignores that, so after
a grace the worker reports the task (event topic ``unidist-api-stuck-task``,
:func:`~.worker.stuck_reporter`) and this client fails its future with
``TaskTimeoutError``, cancels it and has that worker process exit (its nanny starts a new
one; docs/reliability.md, "Task timeouts").
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
from collections.abc import Callable
from typing import Any

from dask.typing import Key
from distributed import Client

from ...errors import TaskTimeoutError
from ...futures import Future
from .complete import Completion
from .worker import exit_worker

__all__ = ["StuckTasks", "RESTART_TIMEOUT"]

RESTART_TIMEOUT = 30.0  # seconds shutdown waits for a stuck worker's replacement to be asked


class StuckTasks:
    """Fails a stuck task (and the tasks waiting for it) and has its worker replaced.

    ``client()`` is the executor's client, None once it is closed.
    """

    def __init__(self, completion: Completion, client: Callable[[], Client | None]) -> None:
        self._completion = completion
        self._client = client
        self._restarting: list[threading.Thread] = []  # replacing workers with a stuck task
        self._timeouts = False  # a task with a timeout was submitted (see _dependents)

    def note(self, future: Future[Any], timeout: float | None, inputs: list[Future[Any]]) -> None:
        """At submit: remember which of ``future``'s inputs may get stuck, if any may."""
        if timeout is not None or (inputs and self._timeouts and _after_timeout(inputs)):
            self._timeouts = True
            # a stuck task is cancelled in Dask, and with it these: see _stop
            future._timed_inputs = [  # type: ignore[attr-defined]
                dep.handle.key for dep in inputs if hasattr(dep, "_timed_inputs")
            ]

    def on_stuck(self, event: tuple[float, dict[str, Any]]) -> None:
        """A worker reports a task past its timeout that its thread could not stop.

        On the client's event loop: the rest happens in a thread of its own, since it
        completes a future (whose callbacks must not run here) and makes client calls.
        """
        report = event[1]
        future = self._completion.unfinished.get(report["key"])
        if future is not None:
            thread = threading.Thread(
                target=self._stop,
                args=(future, report),
                daemon=True,
                name="unidist-api-dask-timeout",
            )
            self._restarting = [t for t in self._restarting if t.is_alive()] + [thread]
            thread.start()

    def join(self) -> None:
        """Wait (a bounded time) until each stuck worker's replacement has been asked for."""
        for thread in self._restarting:
            thread.join(RESTART_TIMEOUT)

    def _stop(self, future: Future[Any], report: dict[str, Any]) -> None:
        """Fail ``future`` with TaskTimeoutError, drop its Dask task, replace its worker.

        The Dask task is cancelled first, else Dask would run it again elsewhere once its
        worker is gone. The worker process then exits (the stuck thread dies with it) and
        its nanny starts a new one; the other tasks that worker was running or had queued
        are run again elsewhere, which Dask counts as one of their ``allowed-failures``.
        """
        message = (
            f"{report['message']} (it was blocked outside Python, where a Dask worker "
            f"thread cannot be interrupted, so its worker {report['worker']} was restarted)"
        )
        try:
            future.set_exception(TaskTimeoutError(message))
        except cf.InvalidStateError:
            return  # it finished (or failed) meanwhile: leave the worker alone
        for dependent in self._dependents(report["key"]):  # Dask cancels them with it
            try:
                dependent.set_exception(TaskTimeoutError(message))
            except cf.InvalidStateError:
                pass
        client = self._client()
        handle = future.handle
        if client is None or handle is None:
            return
        try:
            client.cancel([handle])
            # The worker process exits at once and its nanny starts a new one, as after a
            # crash. (Client.restart_workers asks the worker to close first, which waits
            # 4 s for the stuck thread; under load its nanny then at times never restarted
            # it, leaving the cluster without workers.)
            client.run(exit_worker, workers=[report["worker"]], wait=False)
        except Exception:  # closed meanwhile, or the worker is gone already
            logging.getLogger(__name__).debug("restarting a stuck worker failed", exc_info=True)

    def _dependents(self, key: Key) -> list[Future[Any]]:
        """Our unfinished futures whose tasks need ``key``'s value, directly or not."""
        with self._completion.lock:
            candidates = {
                k: f for k, f in self._completion.unfinished.items() if hasattr(f, "_timed_inputs")
            }
        found: set[Key] = {key}
        grown = True
        while grown:
            grown = False
            for k, f in candidates.items():
                if k not in found and not found.isdisjoint(f._timed_inputs):
                    found.add(k)
                    grown = True
        return [candidates[k] for k in found if k in candidates and k != key]


def _after_timeout(inputs: list[Future[Any]]) -> bool:
    """Whether one of ``inputs`` is (or needs) a task with a timeout."""
    return any(hasattr(dep, "_timed_inputs") for dep in inputs)
