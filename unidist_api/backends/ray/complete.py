"""How a task's future completes: fetched in bulk, watched when something waits, swept.

Waiting is mostly ``result()`` and ``gather``, and those go through
:meth:`RayBackend.fetch` (``fetches`` is set): ``ray.get`` in the caller's thread for
all the futures asked for, done or not, which then completes them with their values
(:func:`loaded`); many futures are fetched in a few parts (``FETCH_PARTS``), so that the
caller copies one part's large values while the tasks of the next ones still run.
Nothing else is needed for them, so a task's future is not *watched* when it is
submitted: Ray's ``ObjectRef._on_ready`` callback costs Ray's I/O thread a GIL round
trip per task (5-10% of a tiny task's cost). Whatever else waits for a future watches it
first: ``done()``, ``exception()``, ``add_done_callback`` (so ``await`` and asyncio),
``concurrent.futures.wait``/``as_completed`` (through the future's ``_waiters`` list,
where they install their waiters), and a fetch that did not finish (timeout, a failed
task). A *sweep* watches every future nothing waited for within a second
(``WATCH_AFTER``), so a future nobody reads still completes and lets go of its
``ObjectRef``, and the tasks left by ``shutdown(wait=False)`` end the runtime; futures a
fetch is waiting for are left to it.

A watched future's callback, which does not fetch the value, runs on Ray's I/O thread
and only queues the future for one completer thread per runtime (which also sweeps),
which completes it with the ``ObjectRef`` itself: the value is fetched on the first
``result()`` (:func:`.data.load`), so a result passed on to another task never visits
the caller. A failed task is never completed by a fetch: the fetch leaves it to that
path, so ``result()`` raises the task's own exception with its remote traceback.

Whether a task failed shows only when its value is read, so a watched future is
completed as a success with its ObjectRef (``exception()`` then loads the value to tell)
except in two cases. Tasks that ask to report failures (``Task.report_failure``: a
pipeline's middle stages and every task of a ``reduce``, whose values stay on the
workers) return a tiny status value first (``num_returns=2``), which the completer
reads. And a future that ``concurrent.futures.wait`` or ``as_completed`` waits on (it
has waiters: they learn only from ``set_result``/``set_exception``) is loaded by the
completer first, so the stdlib's ``wait(FIRST_EXCEPTION)`` sees a failure when it
happens. A status value on every task would cost ~5-10% of a tiny task's CPU time.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import queue
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import ray
import ray.exceptions as rex

from ...errors import WorkerLostError
from ...futures import Future, RemoteFailure, _Serialized
from .data import load
from .errors import LOST_WORKER, engine_error, task_error

if TYPE_CHECKING:
    from .backend import RayBackend
    from .runtime import Runtime

__all__ = ["Completer", "RayFuture", "loaded", "WATCH_AFTER", "SWEEP_EVERY"]

WATCH_AFTER = 1.0  # seconds after which the sweep watches a future nothing waited for
SWEEP_EVERY = 0.5  # seconds between sweeps

_FINISHED = cf._base.FINISHED
_PENDING = cf._base.PENDING
T = TypeVar("T")


class Completer:
    """One thread completing futures as their ObjectRefs become ready.

    ``ObjectRef._on_ready`` calls back on Ray's I/O thread without fetching the value;
    user code (a done callback may call ``result()``, i.e. ``ray.get``) must not run
    there, so the callback only queues the future for this thread. Every SWEEP_EVERY
    seconds the thread also calls :meth:`sweep`.
    """

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._queue: queue.SimpleQueue[tuple[Future[Any] | None, BaseException | None] | None] = (
            queue.SimpleQueue()
        )
        threading.Thread(target=self._run, name="unidist-api-ray-completer", daemon=True).start()

    def watch(self, future: Future[Any]) -> None:
        ref = getattr(future, "_status", None) or future.handle  # ready together
        try:
            ref._on_ready(functools.partial(self._ready, future))
        except Exception as exc:  # Ray cannot wait for it (e.g. stopped by the program)
            self._ready(future, exc)

    def _ready(self, future: Future[Any], error: BaseException | None) -> None:
        self._queue.put((future, error))

    def wake(self) -> None:
        """Sweep now."""
        self._queue.put((None, None))

    def stop(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        swept = time.monotonic()
        while True:
            try:
                item = self._queue.get(timeout=SWEEP_EVERY)
            except queue.Empty:
                item = (None, None)
            if item is None:
                return
            future, error = item
            if future is not None:
                self._complete(future, error)
            if future is None or time.monotonic() - swept > SWEEP_EVERY:
                self.sweep()
                swept = time.monotonic()

    def sweep(self) -> None:
        """Watch the futures nothing has waited for within WATCH_AFTER seconds.

        So a future nobody reads still completes and lets go of its ObjectRef (Ray then
        frees the value), and the tasks behind ``shutdown(wait=False)`` end the runtime.
        """
        runtime = self._runtime
        now = time.monotonic()
        runtime.claims.sweep()
        unwatched = runtime.unwatched
        while unwatched and (runtime.closing or now - unwatched[0][0] > WATCH_AFTER):
            try:
                _, ref = unwatched.popleft()
            except IndexError:  # cleared by closing meanwhile
                return
            future = ref()
            if future is None or future._watched or future._state == _FINISHED:
                continue
            if future._fetching and not runtime.closing:  # a fetch waits for it: look later
                unwatched.append((now, ref))
                continue
            future._watch()

    def _complete(self, future: Future[Any], error: BaseException | None) -> None:
        """Complete ``future``, whose ObjectRef is ready (``error``: Ray could not wait)."""
        runtime = self._runtime
        close = runtime.untrack(future)
        runtime.claims.finished(future.handle.task_id().hex())  # its task is over
        failure = None
        status = getattr(future, "_status", None)
        if error is None and status is not None:
            future._status = None  # type: ignore[attr-defined]
            try:
                facts = ray.get(status, timeout=10)  # tiny, ready: raises if the task failed
                if type(facts) is tuple:
                    future._work, future._nbytes = facts
            except rex.RayTaskError as err:
                failure = task_error(err, future.handle)
                with contextlib.suppress(Exception):  # the value is the same error: read,
                    ray.get(future.handle, timeout=0)  # so Ray does not log it unhandled
            except rex.RayError as err:  # not the task's own failure (a lost worker)
                error = err
        try:
            if failure is not None:
                future.partial = failure.partial
                future.set_remote_exception(failure.exc, failure.tb)
            elif error is None:
                if status is not None or not isinstance(future, RayFuture):
                    future.set_serialized_result(future.handle, load)
                    runtime.unread.add(future)
                elif future.complete_unless_waited():
                    runtime.unread.add(future)
                else:
                    self._load_for_waiters(future)
            else:
                future.set_exception(engine_error(error, getattr(future, "_fn", None)))
        except cf.InvalidStateError:  # failed by an exiting interpreter meanwhile
            pass
        if close:
            runtime.close()

    def _load_for_waiters(self, future: Future[Any]) -> None:
        """Complete a future that ``concurrent.futures.wait``/``as_completed`` wait on
        with its loaded value or its task's failure: those are told only by
        ``set_result``/``set_exception``, so ``wait(FIRST_EXCEPTION)`` must get the right
        one (a task that does not report failures tells only when its value is read)."""
        try:
            value = load(future.handle)  # ready: fetched and unpacked, as result() would
        except RemoteFailure as failure:
            future.partial = failure.partial
            exc = future._named(failure.exc) if isinstance(future, RayFuture) else failure.exc
            future.set_remote_exception(exc, failure.tb)
            return
        except Exception:  # unpicklable here: result() raises SerializationError
            future.set_serialized_result(future.handle, load)
            self._runtime.unread.add(future)
            return
        future.set_result(value)


def loaded(runtime: Runtime, future: Future[Any], value: Any) -> None:
    """Complete ``future`` with its value, fetched by :meth:`RayBackend.fetch`."""
    if isinstance(future, RayFuture):
        future._status = None  # Ray may drop it
        runtime.claims.finished(future.handle.task_id().hex())
    try:
        future.set_result(value)
    except cf.InvalidStateError:  # completed by the completer meanwhile
        future.set_loaded(value)
        return
    if runtime.untrack(future):
        runtime.close()


class RayFuture(Future[T]):
    """A task's future, watched (``_on_ready``) only once something waits for it.

    ``result()`` and ``gather`` wait through :meth:`RayBackend.fetch`, in the caller's
    thread, and need no watcher; whatever else waits (``done()``, ``exception()``,
    ``add_done_callback``, ``await``, and ``concurrent.futures.wait``/``as_completed``,
    which install their waiters in ``_waiters``) watches the future first. The sweep
    watches the rest within WATCH_AFTER seconds.
    """

    def __init__(self, backend: RayBackend, runtime: Runtime) -> None:
        self._runtime = runtime
        self._watched = False
        self._fetching = False  # a fetch waits for it (the sweep leaves it alone)
        self._fn: Callable[..., Any] | None = None  # the task's function, to name it in errors
        self._inputs: list[weakref.ref[RayFuture[Any]]] = []  # its input futures (weakly)
        self._status: Any = None  # the task's status ObjectRef, until it is read
        super().__init__(backend)

    def _watch(self) -> None:
        if not self._watched and self.handle is not None:  # None: not sent yet (the gate)
            self._watched = True
            self._runtime.watch(self)

    def complete_unless_waited(self) -> bool:
        """Complete with the ObjectRef (the value loaded on first read), unless the
        stdlib's ``wait``/``as_completed`` wait on this future: False then, nothing done.

        Decided and done under the lock those install their waiters under, so none is
        installed in between; callbacks run after it, as in ``set_result``.
        """
        with self._condition:
            if self._waiter_list:
                return False
            if self._state != _PENDING and self._state != cf._base.RUNNING:
                raise cf.InvalidStateError(f"{self._state}: {self!r}")
            self._result = _Serialized(self.handle, load)  # type: ignore[assignment]
            self._state = _FINISHED
            self._condition.notify_all()
        self._invoke_callbacks()  # type: ignore[attr-defined]
        return True

    @property
    def _waiters(self) -> list[Any]:
        if not self._watched and self._state != _FINISHED:
            self._watch()
        return self._waiter_list

    @_waiters.setter
    def _waiters(self, waiters: list[Any]) -> None:
        self._waiter_list = waiters

    def done(self) -> bool:
        if self._state == _FINISHED:
            return True
        self._watch()
        return super().done()

    def result(self, timeout: float | None = None) -> T:
        if self._state == _PENDING and self._backend is not None:
            deadline = None if timeout is None else time.monotonic() + timeout
            self._backend.fetch([self], timeout)
            if deadline is not None:
                timeout = max(0.0, deadline - time.monotonic())
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state != _FINISHED:
            self._watch()
        return super().exception(timeout)

    def add_done_callback(self, fn: Callable[[cf.Future[T]], object]) -> None:
        if self._state != _FINISHED:
            self._watch()
        super().add_done_callback(fn)

    def _materialize(self) -> Any:
        try:
            return super()._materialize()
        except WorkerLostError as exc:  # mapped by data.load, which cannot know the task
            named = self._named(exc)
            if named is exc:
                raise
            with self._condition:
                self._exception = named
            raise named from exc.__cause__

    def _named(self, exc: BaseException) -> BaseException:
        """A lost worker's error as data.load made it, naming the task that lost it."""
        cause = exc.__cause__
        if (
            not isinstance(exc, WorkerLostError)
            or self._fn is None
            or not isinstance(cause, LOST_WORKER)
        ):
            return exc
        return engine_error(cause, self._lost_fn())

    def _lost_fn(self) -> Callable[..., Any] | None:
        """The function of the task that lost its worker: this one's, or a lost input's.

        Ray gives a task whose input was lost that input's error, which does not say
        whose it is; an input whose value is that error (asked without waiting) is it.
        """
        for ref in self._inputs:
            dep = ref()
            if dep is None or dep._fn is None or not ray.is_initialized():
                continue
            try:
                ray.get(dep.handle, timeout=0)
            except LOST_WORKER:
                return dep._lost_fn()
            except Exception:  # the input is fine, failed otherwise, or not done
                continue
        return self._fn

    def __repr__(self) -> str:
        return super().__repr__().replace("<RayFuture", "<ua.Future", 1)
