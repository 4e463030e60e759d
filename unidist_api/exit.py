"""Interpreter exit: first finish what executors were given, then stop what they started.

As with the stdlib's executors, a program that submits work and ends still gets it
done: every executor left open is shut down with ``wait=True`` (an unconsumed map
runs its input to its end). A program ending on Ctrl-C (an uncaught
``KeyboardInterrupt``), or interrupted again while it waits here, does not wait: its
queued tasks are cancelled and every process we started is stopped at once.

It is one threading exit hook (those run before ``atexit`` handlers and before
non-daemon threads are joined, last registered first). :func:`arm` registers it again
after an engine registers its own (loky's waits for queued tasks), so ours runs first.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["on_exit", "arm", "exit_on_sigterm_at_once"]

_finishers: list[Callable[[bool], None]] = []  # called with interrupted=
_stoppers: list[Callable[[], None]] = []
_lock = threading.Lock()
_done = False
_signalled = False  # the program exits on a signal: stop, do not wait


def on_exit(
    *, finish: Callable[[bool], None] | None = None, stop: Callable[[], None] | None = None
) -> None:
    """Run ``finish(interrupted)`` (executors), then ``stop()`` (engines), at exit."""
    with _lock:
        if finish is not None and finish not in _finishers:
            _finishers.append(finish)
        if stop is not None and stop not in _stoppers:
            _stoppers.append(stop)
    arm()


def arm() -> None:
    """Register the hook (again), so it runs before hooks registered until now."""
    try:
        threading._register_atexit(_run)  # type: ignore[attr-defined]
    except RuntimeError:  # the interpreter is shutting down already
        pass


def exit_on_sigterm_at_once() -> None:
    """A SIGTERM handler that exits (Ray's driver installs one) makes exit not wait.

    Called after an engine may have installed its handler; wraps it so our exit hook
    knows the program is being stopped, as by Ctrl-C.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous) or getattr(previous, "_unidist_api", False):
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        global _signalled
        _signalled = True
        previous(signum, frame)

    on_sigterm._unidist_api = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, on_sigterm)


def _run() -> None:
    global _done
    with _lock:
        if _done:
            return
        _done = True
        finishers, stoppers = list(_finishers), list(_stoppers)
    interrupted = _signalled or isinstance(getattr(sys, "last_value", None), KeyboardInterrupt)
    try:
        for finish in finishers:
            finish(interrupted)
    except KeyboardInterrupt:  # Ctrl-C while waiting: stop now
        for finish in finishers:
            _quietly(finish, True)
    except Exception:
        logging.getLogger(__name__).warning("finishing executors at exit failed", exc_info=True)
    for stop in stoppers:
        _quietly(stop)


def _quietly(fn: Callable[..., None], *args: bool) -> None:
    try:
        fn(*args)
    except BaseException:  # stop the others all the same
        logging.getLogger(__name__).warning("stopping at exit failed", exc_info=True)
