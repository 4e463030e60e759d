# mypy: disallow-untyped-calls=False
"""Cancelling the Dask tasks that have not started, in one step of the scheduler.

Asking the scheduler which tasks it has handed to workers (``client.processing()``) and
then cancelling the others (``client.cancel``) races it: a task handed over between the
two is cancelled although it started (3-5 of 50 seen under ``shutdown(cancel_futures=
True)``). :func:`cancel_unstarted` instead runs one small function on the scheduler
(``client.run_on_scheduler``) that, within one step of the scheduler's event loop, picks
the tasks no worker has been given yet and cancels those (``Scheduler.stimulus_cancel``,
what ``client.cancel`` asks for), so none of them can start in between; it answers
which it cancelled. A task handed to a worker counts as started even while it waits
there, as the stdlib's process pool counts the calls in its queue (docs/semantics.md).

The function travels by value (it is made by :func:`_canceller`, so cloudpickle does
not refer to this module): a scheduler that cannot import unidist_api runs it too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from dask.typing import Key
from distributed import Client

__all__ = ["cancel_unstarted"]


def cancel_unstarted(client: Client, keys: Iterable[Key]) -> set[Key]:
    """Cancel those of ``keys`` no worker has been given; the ones it cancelled."""
    wanted = list(keys)
    if not wanted:
        return set()
    return set(client.run_on_scheduler(_canceller(), wanted, client.id))


def _canceller() -> Callable[..., list[Any]]:
    def cancel_if_unstarted(keys: list[Any], client: str,
                            dask_scheduler: Any = None) -> list[Any]:
        tasks = dask_scheduler.tasks
        unstarted = [key for key in keys if key in tasks
                     and tasks[key].state in ("released", "waiting", "queued", "no-worker")]
        if unstarted:
            dask_scheduler.stimulus_cancel(unstarted, client, force=False,
                                           reason="cancelled by unidist-api",
                                           msg="the caller cancelled it before it started")
        return unstarted

    return cancel_if_unstarted
