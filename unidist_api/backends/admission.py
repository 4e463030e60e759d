"""The admission gate: how ``local``, ``dask`` and ``ray`` start waiting tasks by ``priority``.

The engines queue the tasks handed to them in FIFO order (loky's pending items and its
call queue, Ray's lease queue; a Dask worker runs the tasks it took before a higher one
arrived), so a task already in that queue cannot be overtaken by a later one of higher
priority. The facade therefore holds tasks back itself and
hands them over by priority as worker slots free: at most ``slots`` (the executor's
``workers``) of an executor's tasks are in the engine at a time, the others wait here
in a heap keyed by ``(-priority, submission order)``, so equal priorities keep FIFO
order, as on Dask.

Holding tasks back has a cost (the engine no longer has the next task at hand when a
worker frees, and on Ray every task must be watched to know when it ends), so the gate
*engages* only once the executor is given its first task with a nonzero priority, and
stays engaged from then on. Before that, tasks go straight to the engine
(:meth:`Gate.admit` is one attribute test), so programs that use no priority pay
nothing. On engaging, the tasks already in the engine count as occupying slots (they
keep their place: a task queued in the engine before the gate engaged is not pulled
back; docs/semantics.md states the rule).

A held future is the caller's: cancelling it is exact (it never runs; the backend's
``cancel`` asks :meth:`Gate.holds`), and a cancelled one is skipped when its turn comes.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable, Iterable
from typing import Any

from ..futures import Future

__all__ = ["Gate"]

Send = Callable[[], None]  # hands one task to the engine (fails its future on error)
Drop = Callable[[], None]  # lets go of what a task withdrawn while it waited holds


class Gate:
    """Holds an executor's tasks beyond ``slots`` in the engine and admits them by priority.

    ``slots`` and ``in_engine`` (the executor's unfinished futures already in the
    engine) are asked once, when the gate engages (asking may start the engine), so
    those futures count as occupying slots.
    """

    def __init__(
        self, slots: Callable[[], int], in_engine: Callable[[], Iterable[Future[Any]]]
    ) -> None:
        self._slots = slots
        self.slots = 1
        #: Set for good by the first task with a nonzero priority (read without the lock).
        self.engaged = False
        self._in_engine = in_engine
        self._lock = threading.Lock()
        self._busy = 0  # tasks in the engine, counted since engaging
        # entries [-priority, order, future, send, drop]; send is None once withdrawn
        self._heap: list[list[Any]] = []
        self._held: dict[Future[Any], list[Any]] = {}  # live entries of the heap
        self._inputs: dict[Future[Any], list[Any]] = {}  # waiting for their inputs first
        self._order = itertools.count()

    def admit(
        self, future: Future[Any], priority: int, send: Send, drop: Drop | None = None
    ) -> None:
        """Hand ``future``'s task to the engine now (``send()``) or when its turn comes.

        Before the gate engages, a task without priority goes straight through. ``drop``
        is called instead of ``send`` when the future is withdrawn while it waits.
        """
        if not self.engaged and not priority:
            send()
            return
        counted: list[Future[Any]] = []
        with self._lock:
            if not self.engaged:
                counted = self._engage()
            if self._busy < self.slots and not self._held:
                self._busy += 1
                now = True
            else:
                entry = [-priority, next(self._order), future, send, drop]
                heapq.heappush(self._heap, entry)
                self._held[future] = entry
                now = False
        for busy in counted:  # outside the lock: a done one calls back at once
            busy.add_done_callback(self._finished)
        if now and not self._start(future, send):
            self._free()

    def admit_when_ready(
        self,
        future: Future[Any],
        inputs: list[Future[Any]],
        priority: int,
        send: Send,
        drop: Drop | None = None,
    ) -> None:
        """:meth:`admit` once the futures ``inputs`` are done: a task waiting for its inputs
        does not take a slot (on Ray and Dask, which would hold it until they are done; a
        slot held so by a task whose input waits here behind it would never free).

        ``future`` can be withdrawn meanwhile (:meth:`withdraw`).
        """
        pending = [dep for dep in inputs if not dep.done()]
        if not pending:
            self.admit(future, priority, send, drop)
            return
        entry = [-priority, -1, future, send, drop]
        with self._lock:
            self._inputs[future] = entry
        count = [len(pending)]
        lock = threading.Lock()

        def on_input_done(_: Any) -> None:
            with lock:
                count[0] -= 1
                if count[0]:
                    return
            with self._lock:
                live = self._inputs.pop(future, None) is entry
            if live:
                self.admit(future, priority, send, drop)

        for dep in pending:
            dep.add_done_callback(on_input_done)

    def withdraw(self, future: Future[Any]) -> bool:
        """Take ``future`` out if it waits here: True then, and it will never be sent
        (its ``drop`` is called). For an exact ``cancel``."""
        with self._lock:
            entry = self._held.pop(future, None) or self._inputs.pop(future, None)
            if entry is None:
                return False
            entry[3] = None  # skipped when popped
            drop = entry[4]
        if drop is not None:
            drop()
        return True

    def held(self) -> list[Future[Any]]:
        """The futures waiting here (for their turn, then those waiting for inputs)."""
        with self._lock:
            queued = [entry[2] for entry in sorted(self._heap) if entry[3] is not None]
            return queued + list(self._inputs)

    def flush(self) -> None:
        """Hand every waiting task to the engine now, in priority order (shutdown without
        waiting: the engine's FIFO queue then keeps that order)."""
        with self._lock:
            items = [entry for entry in sorted(self._heap) if entry[3] is not None]
            self._heap.clear()
            self._held.clear()
            self._busy += len(items)
        for _, _, future, send, _ in items:
            if not self._start(future, send):
                self._free()

    # -- internals ---------------------------------------------------------------------------
    def _engage(self) -> list[Future[Any]]:
        """Under the lock: from now on count slots; what the engine has counts as busy
        (the futures returned, whose completion frees a slot each)."""
        self.engaged = True
        self.slots = max(1, self._slots())
        counted = [future for future in self._in_engine() if not future.done()]
        self._busy += len(counted)
        return counted

    def _start(self, future: Future[Any], send: Send) -> bool:
        """Send one admitted task; False when its future is done already (cancelled while
        it waited, or failed to send), so its slot is free again.

        ``send`` is called for a done future too: the backend lets go of what it holds.
        """
        try:
            send()
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
        if future.done():
            return False
        future.add_done_callback(self._finished)  # its slot frees when it completes
        return True

    def _finished(self, _: Any) -> None:
        self._free()

    def _free(self) -> None:
        """One slot freed: admit the next waiting task (and the next, while they are done)."""
        with self._lock:
            self._busy -= 1
        while True:
            with self._lock:
                while self._heap and self._heap[0][3] is None:  # withdrawn
                    heapq.heappop(self._heap)
                if not self._heap or self._busy >= self.slots:
                    return
                _, _, future, send, _ = heapq.heappop(self._heap)
                del self._held[future]
                self._busy += 1
            if self._start(future, send):
                return
            with self._lock:
                self._busy -= 1
