# mypy: disallow-untyped-calls=False
"""Completing our futures from the messages the scheduler sends our client.

The client's handlers of "key-in-memory", "task-erred", "cancelled-keys" and "restart"
also note our keys, and each batch of messages goes in one piece to our completion
thread, which completes our futures (the value stays on the cluster until asked for:
:class:`~.data.Result`). Dask's public ``add_done_callback`` would cost, per future, a
coroutine on the client's event loop and a hop to Dask's callback thread: about a tenth
of Dask's own cost per task. Those handlers are not public API: a client without them
(another Dask version) gets one ``add_done_callback`` per future instead, and once a
second the completion thread also completes any future whose Dask future is no longer
pending, in case Dask finished one without a message (it does when the client loses its
scheduler).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from dask.typing import Key
from distributed import Client
from distributed import Future as DaskFuture

from ...futures import Future
from .data import Result
from .errors import fail

__all__ = ["Completion"]

# the client's handlers of the reports that finish a future (``Completion.watch``)
_REPORTS = ("key-in-memory", "task-erred", "cancelled-keys", "restart")
_SWEEP_INTERVAL = 1.0  # seconds between two looks at every unfinished future


class Completion:
    """Our futures not completed yet, by key, and what completes them.

    ``lock`` guards ``unfinished``, ``cancelling``, ``cancelled`` and ``unread``.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.unfinished: dict[Key, Future[Any]] = {}  # our futures not completed yet
        self.cancelling: set[Key] = set()  # keys of tasks we asked Dask to cancel
        self.cancelled: set[Key] = set()  # of those, the ones the scheduler cancelled
        # finished tasks' and puts' values still on the cluster (loaded ones drop out), by key
        self.unread: weakref.WeakValueDictionary[Key, Result] = weakref.WeakValueDictionary()
        # from the client's report stream to our thread (None: one add_done_callback each)
        self._completions: queue.SimpleQueue[list[Key] | None] | None = None
        self._reported: list[Key] = []  # keys reported done, not handed over (event loop only)

    def watch(self, client: Client) -> None:
        """Learn which tasks finished from the messages the scheduler sends ``client``.

        A client without the handlers we extend (another Dask version) is left alone:
        :meth:`submitted` then adds one ``add_done_callback`` per future.
        """
        handlers = getattr(client, "_stream_handlers", None)
        if not isinstance(handlers, dict) or not all(op in handlers for op in _REPORTS):
            return
        for op in _REPORTS:
            handlers[op] = functools.partial(self._on_report, op, handlers[op])
        completions: queue.SimpleQueue[list[Key] | None] = queue.SimpleQueue()
        threading.Thread(
            target=self._complete_loop,
            args=(completions,),
            daemon=True,
            name="unidist-api-dask-completion",
        ).start()
        self._completions = completions

    def submitted(self, future: Future[Any], handle: DaskFuture[Any]) -> None:
        """``future`` has its Dask future ``handle`` now: make sure its end is noticed."""
        completions = self._completions
        if completions is None:
            handle.add_done_callback(functools.partial(self.on_done, future))
        elif handle.status != "pending":  # reported before it had its handle: once more
            completions.put([handle.key])

    def _on_report(self, op: str, handler: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Dask's handler of one report (on the event loop), then note our keys in it."""
        result = handler(*args, **kwargs)
        try:
            if op == "cancelled-keys":
                keys = list(kwargs["keys"] if "keys" in kwargs else args[0])
            elif op == "restart":
                with self.lock:
                    keys = list(self.unfinished)
            else:
                keys = [kwargs["key"] if "key" in kwargs else args[0]]
            ours = [key for key in keys if key in self.unfinished]
            if ours:
                if not self._reported:  # hand them over once this batch of reports is handled
                    asyncio.get_running_loop().call_soon(self._hand_over)
                self._reported.extend(ours)
        except Exception:  # never break Dask's report loop; the sweep finds them
            logging.getLogger(__name__).debug("unexpected %r report", op, exc_info=True)
        return result

    def _hand_over(self) -> None:
        """On the event loop: pass the keys reported since to the completion thread."""
        keys, self._reported = self._reported, []
        completions = self._completions
        if keys and completions is not None:
            completions.put(keys)

    def _complete_loop(self, completions: queue.SimpleQueue[list[Key] | None]) -> None:
        """Our completion thread: complete reported futures; once a second, sweep.

        The sweep completes any future whose Dask future is no longer pending, in case
        Dask finished one without a report (e.g. when the client lost its scheduler).
        """
        swept = time.monotonic()
        while True:
            try:
                keys = completions.get(timeout=_SWEEP_INTERVAL)
            except queue.Empty:
                keys = []
            if keys is None:
                return
            sweep = time.monotonic() - swept >= _SWEEP_INTERVAL
            try:
                # in a call of its own, so no future stays referenced from here while this
                # thread waits: Dask releases a task's value when its last future goes
                self._complete_reported(keys, sweep)
            except Exception:  # keep completing the others
                logging.getLogger(__name__).warning("completing dask futures failed", exc_info=True)
            if sweep:
                swept = time.monotonic()

    def _complete_reported(self, keys: list[Key], sweep: bool) -> None:
        for key in keys:
            future = self.unfinished.get(key)
            if future is not None:
                self._finish(future)
        if sweep:
            with self.lock:
                futures = list(self.unfinished.values())
            for future in futures:
                self._finish(future)

    def _finish(self, future: Future[Any]) -> None:
        """Complete ``future`` if Dask is done with its task (its handle may not be set yet)."""
        handle: DaskFuture[Any] | None = future.handle
        if handle is not None and handle.status != "pending":
            self.on_done(future, handle)

    def on_done(self, future: Future[Any], handle: DaskFuture[Any]) -> None:
        """Complete ``future`` from its finished Dask future, leaving the value there.

        Runs on our completion thread, or as Dask's done callback on its callback thread.
        """
        key = handle.key
        with self.lock:
            if self.unfinished.get(key) is future:
                del self.unfinished[key]
            # asked to cancel, and Dask did (it may have started meanwhile: then not)
            cancelled = key in self.cancelling and handle.status == "cancelled"
            self.cancelling.discard(key)
            self.cancelled.discard(key)
        if future.done():  # completed by fetch (or shutdown) already
            return
        try:
            if cancelled:
                future.cancel()
            elif handle.status in ("error", "cancelled"):
                fail(future, handle)
            else:
                result = Result(handle)
                with self.lock:
                    self.unread[handle.key] = result
                future.set_serialized_result(result, Result.read)
        except cf.InvalidStateError:
            pass  # failed by shutdown meanwhile
        except BaseException as exc:  # the client closed under us: never raise into Dask
            try:
                future.set_exception(exc)
            except cf.InvalidStateError:
                pass

    def fetched(self, future: Future[Any], value: Any) -> None:
        """Complete ``future`` with its fetched value, unless its callback did meanwhile."""
        with self.lock:
            self.unfinished.pop(future.handle.key, None)
        try:
            future.set_result(value)
        except cf.InvalidStateError:  # the callback came first (or shutdown)
            future.set_loaded(value)

    def close(self) -> list[Future[Any]]:
        """Stop the completion thread; the futures not completed yet, for the caller to fail."""
        with self.lock:
            dropped = list(self.unfinished.values())
            self.unfinished.clear()
            completions, self._completions = self._completions, None
        if completions is not None:
            completions.put(None)  # stops the completion thread
        return dropped
