"""What runs in a loky worker of the ``local`` backend.

``start_worker`` is the pool's initializer: it watches the caller, so a worker whose
caller died exits by itself, then runs the user's initializer. ``run_call`` runs one
task (:func:`unidist_api.worker.run_pickled`) with the arguments read from a
shared-memory file when they hold large buffers, and writes a result with large
buffers to the file the caller chose for this attempt: only its path goes back
through the pipe. A worker keeps nothing between tasks: its mappings go with the
values that use them, and once it is idle its free heap goes back to the system.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from ...data import Packed
from ...serialization import dumps
from ...worker import OK, InitializerFailed, run_initializer, run_pickled
from . import shm

__all__ = ["start_worker", "run_call", "PARENT_CHECK", "STUCK_EXIT_CODE"]

PARENT_CHECK = 0.25  # seconds between a worker's checks of its caller and of being idle
STUCK_EXIT_CODE = 75  # a worker process ended by a stuck task's on_stuck

Outcome = tuple[int, Any, "str | None"]
"""run_pickled's outcome, or ``(OK, path of the result's file, None)``."""


class _Activity:
    """This worker's tasks so far (written by the task thread, read by the watch)."""

    started = 0
    finished = 0
    last = 0.0  # time.monotonic() when the last one finished


_activity = _Activity()


def start_worker(parent: int, data: bytes | None, note: str | None = None) -> None:
    """A loky worker's start: watch the caller, then run the user's initializer.

    A worker whose caller died without shutting it down (SIGKILL, SIGTERM, a crash) exits
    within a second: loky's workers would otherwise wait for work forever. An initializer
    that raises leaves a note at ``note`` (the pickled :class:`InitializerFailed`), then
    fails loky's initializer: the worker ends and loky reports the pool broken, which the
    caller, reading the note, tells from a lost worker.
    """
    threading.Thread(
        target=_watch, args=(parent,), daemon=True, name="unidist-api-worker-watch"
    ).start()
    if data is not None:
        try:
            run_initializer(data)
        except InitializerFailed as failed:
            if note is not None:
                _leave_note(note, dumps(failed))
            raise


def _leave_note(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` whole (several workers may fail at once)."""
    partial = f"{path}.{os.getpid()}"
    try:
        with open(partial, "wb") as file:
            file.write(data)
        os.replace(partial, path)
    except OSError:  # the caller shut down and removed the folder meanwhile
        pass


def _watch(parent: int) -> None:
    """Exit when the caller is gone; give free memory back once idle after some tasks.

    glibc keeps the heap a freed large array came from (its threshold for giving
    memory back grows with the arrays), so a worker would hold tens of MB after a
    run; trimming between tasks would instead fault the pages in again for each one.
    """
    trim = _malloc_trim()
    trimmed = 0
    while os.getppid() == parent:  # the caller is gone: this process was reparented
        time.sleep(PARENT_CHECK)
        finished = _activity.finished
        if (
            trim is not None
            and finished != trimmed
            and _activity.started == finished
            and time.monotonic() - _activity.last >= PARENT_CHECK
        ):
            trimmed = finished
            trim(0)
    os._exit(1)


def _malloc_trim() -> Callable[[int], Any] | None:
    import ctypes  # here: off the path of the first task

    try:
        trim: Callable[[int], Any] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return trim


def run_call(
    fn_data: bytes,
    payload: bytes | Packed | str,
    mode: int,
    retries: int,
    retry_on: tuple[type[BaseException], ...],
    timeout: float | None,
    stuck_path: str | None,
    inputs: bytes | Packed | str | None,
    result_path: str | None,
) -> Outcome:
    """Run one task; ``payload`` is its pickled arguments, or the path of their file.

    ``inputs``: the values of its input futures, packed (or the path of their file), which
    fill the arguments' placeholders (:class:`~unidist_api.worker.Input`); None without any.

    ``stuck_path`` (with a ``timeout``): an attempt the interrupt cannot stop (stuck in
    one C call) writes this file and ends the worker process, so the caller can tell
    why the pool broke and fail just this task with TaskTimeoutError. ``result_path``:
    where a result with large buffers goes; without room there it goes through the pipe.
    """
    _activity.started += 1
    try:
        arguments = shm.read(payload) if isinstance(payload, str) else payload
        values = shm.read(inputs) if isinstance(inputs, str) else inputs
        on_stuck = None if timeout is None or stuck_path is None else _exit_stuck(stuck_path)
        outcome = run_pickled(
            fn_data, arguments, mode, retries, retry_on, timeout, on_stuck, values
        )
        del arguments, values  # their mappings go with the task's values
        data = outcome[1]
        if result_path is None or type(data) is not Packed:
            return outcome
        try:
            shm.write(result_path, data)
        except OSError:  # /dev/shm full, or the caller shut down and removed the folder
            return outcome
        return (OK, result_path, None)
    finally:
        _activity.last = time.monotonic()
        _activity.finished += 1


def _exit_stuck(path: str) -> Callable[[], None]:
    """The ``on_stuck`` hook: leave a note at ``path``, then end this worker process."""

    def exit_stuck() -> None:
        try:
            with open(path, "w") as file:
                file.write(str(os.getpid()))
        finally:
            os._exit(STUCK_EXIT_CODE)  # the stuck thread dies with the process

    return exit_stuck
