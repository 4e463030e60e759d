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

:func:`cancel_unfinished` does so for all of an executor's unfinished tasks
(``shutdown(cancel_futures=True)``); :func:`started` tells which tasks the scheduler
has handed over (``Future.running()``).

The function travels by value (it is made by :func:`_canceller`, so cloudpickle does
not refer to this module): a scheduler that cannot import unidist_api runs it too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from dask.typing import Key
from distributed import Client
from distributed import Future as DaskFuture

from .complete import Completion

__all__ = ["cancel_unstarted", "cancel_unfinished", "started"]


def cancel_unstarted(
    client: Client | None, completion: Completion, handles: list[DaskFuture[Any]]
) -> set[Key]:
    """Cancel those of these tasks no worker has been given; the keys of those cancelled,
    whose done callbacks then cancel our futures (``completion`` notes them first)."""
    if client is None or not handles:
        return set()
    keys = [handle.key for handle in handles]
    with completion.lock:
        completion.cancelling.update(keys)
    try:
        cancelled = set(client.run_on_scheduler(_canceller(), keys, client.id))
    except Exception:  # the scheduler cannot be asked: nothing is cancelled
        logging.getLogger(__name__).debug("cancelling on the scheduler failed", exc_info=True)
        cancelled = set()
    with completion.lock:
        completion.cancelling.difference_update(set(keys) - cancelled)
        completion.cancelled.update(key for key in cancelled if key in completion.unfinished)
    return cancelled


def cancel_unfinished(client: Client | None, completion: Completion) -> None:
    """``shutdown(cancel_futures=True)``: cancel every task not handed to a worker yet."""
    with completion.lock:  # those still in client.submit have no handle yet: they run
        futures = [future for future in completion.unfinished.values() if future.handle is not None]
    cancelled = cancel_unstarted(client, completion, [future.handle for future in futures])
    for future in futures:
        if future.handle.key in cancelled:
            future.cancel()  # at once, not when Dask calls back


def started(client: Client | None, handles: Iterable[DaskFuture[Any]]) -> set[DaskFuture[Any]]:
    """Those of ``handles`` the scheduler has handed to a worker (they may be running)."""
    if client is None:
        return set(handles)
    try:
        processing = {key for keys in client.processing().values() for key in keys}
    except Exception:  # cannot tell: count them as started
        return set(handles)
    return {handle for handle in handles if handle.key in processing}


def _canceller() -> Callable[..., list[Any]]:
    def cancel_if_unstarted(keys: list[Any], client: str, dask_scheduler: Any = None) -> list[Any]:
        tasks = dask_scheduler.tasks
        unstarted = [
            key
            for key in keys
            if key in tasks and tasks[key].state in ("released", "waiting", "queued", "no-worker")
        ]
        if unstarted:
            dask_scheduler.stimulus_cancel(
                unstarted,
                client,
                force=False,
                reason="cancelled by unidist-api",
                msg="the caller cancelled it before it started",
            )
        return unstarted

    return cancel_if_unstarted
