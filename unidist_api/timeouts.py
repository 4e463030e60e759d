"""The ``timeout`` task option on the worker: stop an attempt that runs too long.

One watchdog thread per process, started by the first attempt that has a timeout
(tasks without one never reach this module), keeps the deadlines. When one passes,
it interrupts the thread running that attempt:

- the main thread (loky and Ray workers run tasks there, and the serial backend when
  called from it): a SIGALRM sent to that very thread (``signal.pthread_kill``), whose
  handler, installed for the attempt, raises :class:`Interrupt`. The signal also breaks
  a blocking call (``time.sleep``, a socket read, waiting for a lock or a process),
  which Python abandons when the handler raises (PEP 475).
- any other thread (Dask runs tasks in a thread pool): an asynchronous exception
  (``PyThreadState_SetAsyncExc``), raised at the thread's next Python instruction. A
  blocking C call is not interrupted by it; if the attempt still runs ``GRACE`` seconds
  later, the attempt's ``on_stuck`` hook runs (Dask's asks the caller to replace the
  worker).

:class:`Interrupt` derives from ``BaseException``, so a task's ``except Exception`` does
not swallow it; the task's wrapper (:mod:`unidist_api.worker`) reports the attempt as
timed out, whatever the task made of the interrupt.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["GRACE", "Interrupt", "Attempt", "arm", "disarm", "is_handler"]

GRACE = 2.0  # seconds an interrupted attempt off the main thread gets before on_stuck runs


class Interrupt(BaseException):
    """Raised inside a task whose attempt ran past its timeout (internal)."""


class Attempt:
    """One running attempt with a deadline, as the watchdog sees it."""

    __slots__ = (
        "thread",
        "main",
        "deadline",
        "on_stuck",
        "fired",
        "raised",
        "reported",
        "previous",
    )

    def __init__(self, timeout: float, on_stuck: Callable[[], None] | None) -> None:
        self.thread = threading.get_ident()
        self.main = threading.current_thread() is threading.main_thread()
        self.deadline = time.monotonic() + timeout
        self.on_stuck = on_stuck
        self.fired = False  # the watchdog interrupted it: the attempt timed out
        self.raised = False  # the SIGALRM handler raised Interrupt for it
        self.reported = False  # on_stuck ran
        self.previous: Any = None  # the SIGALRM handler before this attempt's


class _Watchdog:
    """The process's watchdog thread and the attempts it watches."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.attempts: list[Attempt] = []
        self.next_wake = 0.0  # when the thread wakes up next (monotonic): notify if earlier
        threading.Thread(target=self._run, daemon=True, name="unidist-api-timeouts").start()

    def _run(self) -> None:
        while True:
            stuck: list[Attempt] = []
            with self.wake:
                now = time.monotonic()
                wait: float | None = None
                for attempt in self.attempts:
                    if attempt.deadline <= now:
                        if not attempt.fired:
                            self._fire(attempt)
                            attempt.deadline = now + GRACE
                        elif attempt.on_stuck is not None and not attempt.reported:
                            attempt.reported = True
                            stuck.append(attempt)
                    if not (attempt.fired and (attempt.reported or attempt.on_stuck is None)):
                        left = max(0.0, attempt.deadline - now)
                        wait = left if wait is None else min(wait, left)
                if not stuck:
                    self.next_wake = float("inf") if wait is None else now + wait
                    self.wake.wait(wait)
                    self.next_wake = 0.0
            for attempt in stuck:
                try:
                    attempt.on_stuck()  # type: ignore[misc]
                except Exception:  # never stop watching the others
                    logging.getLogger(__name__).warning("on_stuck failed", exc_info=True)

    @staticmethod
    def _fire(attempt: Attempt) -> None:
        """Interrupt ``attempt``'s thread (with the lock held, so it is still running)."""
        attempt.fired = True
        if attempt.main:
            signal.pthread_kill(attempt.thread, signal.SIGALRM)
        else:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(attempt.thread), ctypes.py_object(Interrupt)
            )


_watchdog: _Watchdog | None = None
_start_lock = threading.Lock()


def _get_watchdog() -> _Watchdog:
    global _watchdog
    watchdog = _watchdog
    if watchdog is None or watchdog.pid != os.getpid():  # none yet, or a fork's copy
        with _start_lock:
            if _watchdog is None or _watchdog.pid != os.getpid():
                _watchdog = _Watchdog()
            watchdog = _watchdog
    return watchdog


def _on_alarm(signum: int, frame: Any) -> None:
    """The SIGALRM handler during an attempt on the main thread."""
    watchdog = _watchdog  # no lock: this runs in the main thread, which may hold it
    if watchdog is not None:
        for attempt in reversed(list(watchdog.attempts)):  # the innermost first (nested serial)
            if attempt.main and attempt.fired and not attempt.raised:
                attempt.raised = True  # only this thread's handler sets it: no race
                raise Interrupt
    # not ours (someone else's SIGALRM): what the handler before ours would have done
    previous = _previous_handler()
    if callable(previous):
        previous(signum, frame)


def is_handler(frame: Any) -> bool:
    """Whether ``frame`` is the SIGALRM handler's (tracebacks leave it out)."""
    return frame.f_code is _on_alarm.__code__


def _previous_handler() -> Any:
    watchdog = _watchdog
    if watchdog is not None:
        for attempt in watchdog.attempts:
            if attempt.main and attempt.previous is not _on_alarm:
                return attempt.previous
    return None


def arm(timeout: float, on_stuck: Callable[[], None] | None = None) -> Attempt:
    """Start watching an attempt that runs in this thread for ``timeout`` seconds."""
    watchdog = _get_watchdog()
    attempt = Attempt(timeout, on_stuck)
    if attempt.main:
        previous = signal.signal(signal.SIGALRM, _on_alarm)
        attempt.previous = signal.SIG_DFL if previous is None else previous  # None: set in C
    with watchdog.wake:
        watchdog.attempts.append(attempt)
        if attempt.deadline < watchdog.next_wake:  # else it wakes up in time anyway
            watchdog.wake.notify()
    return attempt


def disarm(attempt: Attempt) -> bool:
    """Stop watching ``attempt`` (idempotent); True if it timed out.

    After this, nothing of the watchdog reaches the thread any more: a pending
    asynchronous exception is withdrawn, a pending SIGALRM discarded.
    """
    watchdog = _get_watchdog()
    with watchdog.lock:
        if attempt in watchdog.attempts:
            watchdog.attempts.remove(attempt)
            if attempt.fired and not attempt.main:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(attempt.thread), None)
    if attempt.main and attempt.previous is not None:
        previous, attempt.previous = attempt.previous, None
        if attempt.fired:
            signal.signal(signal.SIGALRM, signal.SIG_IGN)  # discards one still pending
        signal.signal(signal.SIGALRM, previous)
    return attempt.fired
