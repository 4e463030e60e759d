"""``local``: a loky process pool on this machine (``workers`` processes, default one per CPU).

The pool starts on first use. Calls travel as pickles made in the caller (so an
unpicklable argument fails at submit, by name) and the function is pickled once per
executor. A task whose arguments hold unfinished futures waits for them without
blocking the caller: one dispatcher thread submits it when they are done. Large
buffers (of ``put`` objects, arguments and results) go through shared-memory files,
not the pipe (:mod:`.local_shm`): workers map them read-only, the caller
copy-on-write, and a result passed on to another task travels as its path.
A task past its ``timeout`` that the interrupt cannot reach (stuck in one C call) ends
its worker process, leaving a note file: that task fails with TaskTimeoutError, the
broken pool is replaced and its other unfinished tasks are sent again. Each worker
exits by itself within a second of the caller's death (``start_local_worker``), so a
caller killed outright leaves no worker behind.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import os
import queue
import shutil
import tempfile
import threading
import uuid
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from ..data import Embedded, Packed, load_own, load_result
from ..errors import ExecutorShutdownError
from ..futures import Future
from ..serialization import FunctionCache, pack_arguments, pack_value
from ..worker import Outcome, start_local_worker, stuck_error
from .base import (
    LOST_WORKER_RETRIES,
    Backend,
    Task,
    complete,
    resolve_arguments,
    task_name,
    worker_lost,
)
from .local_shm import SharedFile, SharedStore, run_shared


class LocalBackend(Backend):
    name = "local"
    honours_timeout = True
    option_names = frozenset({"env"})  # env: environment variables set in every worker

    def __init__(self, *, address: str | None, workers: int | None,
                 initializer: Callable[..., Any] | None, initargs: tuple[Any, ...],
                 options: Mapping[str, Any]) -> None:
        super().__init__(address=address, workers=workers, initializer=initializer,
                         initargs=initargs, options=options)
        self._lock = threading.Lock()
        self._pool: Any = None
        self._broken = False  # set when a worker died; the pool is replaced on next submit
        self._closed = False  # shut down: a task whose worker died is not sent again
        self._functions = FunctionCache()
        self._ready: queue.SimpleQueue[tuple[Future[Any], Task] | None] | None = None
        self._store: SharedStore | None = None
        self._unfinished: weakref.WeakSet[Future[Any]] = weakref.WeakSet()  # for cancel_futures
        self._stopped_at_exit = False  # in _running (a flag: cheaper than asking the WeakSet)
        self._stuck_dir: str | None = None  # note files of stuck tasks (created on first need)

    # -- the pool -----------------------------------------------------------------
    def _get_pool(self) -> Any:
        pool = self._pool
        if pool is not None and not self._broken:
            return pool
        with self._lock:
            if self._pool is None or self._broken:
                import loky  # deferred: loky is imported when the backend is first used

                if self._closed:  # a lost task sent again after shutdown: no new pool
                    raise ExecutorShutdownError(
                        "the executor was shut down before this task could run again "
                        "after its worker died"
                    )

                if self._pool is not None:  # a worker died and broke the pool: replace it
                    self._pool.shutdown(wait=False, kill_workers=True)
                    self._broken = False
                self._pool = loky.ProcessPoolExecutor(
                    max_workers=self.workers,
                    initializer=start_local_worker,
                    initargs=(os.getpid(), self.init_data),
                    env=self.options.get("env"),
                )
            return self._pool

    # -- Backend interface -------------------------------------------------------------
    def submit(self, task: Task) -> Future[Any]:
        future: Future[Any] = Future(self)
        pending = [dep for dep in task.deps if not dep.done()]
        if pending:
            # Check now what can be checked, so errors still surface at submit time.
            self._functions.get(task.fn)
            pack_arguments(task.fn, *resolve_arguments(task, _placeholder))
            self._unfinished.add(future)
            self._defer(future, task, pending)
        else:
            self._unfinished.add(future)
            self._dispatch(future, task, fresh=True)
        return future

    def put(self, obj: Any) -> Future[Any]:
        data = pack_value(obj, "the object passed to put")
        future: Future[Any] = Future(self)
        if isinstance(data, Packed):  # its large buffers go to shared memory, once
            store = self._get_store()
            shared = store.write(data)
            future.set_serialized_result(shared, load_own)
            weakref.finalize(future, store.drop, shared.path)
        else:
            future.set_serialized_result(data, load_result)
        return future

    def cancel(self, future: Future[Any]) -> bool:
        handle = future.handle
        return handle is None or bool(handle.cancel())

    def running(self, future: Future[Any]) -> bool:
        handle = future.handle
        return handle is not None and bool(handle.running())

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._close(wait=wait, cancel=cancel_futures, kill=False)

    def _close(self, *, wait: bool, cancel: bool, kill: bool) -> None:
        """Stop the pool; ``cancel`` drops tasks not yet started, ``kill`` stops running ones."""
        if cancel:
            for future in list(self._unfinished):
                future.cancel()
        elif wait:  # as concurrent.futures: every task submitted runs, those waiting for
            cf.wait(list(self._unfinished))  # inputs and those whose worker died included
        if self._ready is not None:
            self._ready.put(None)
            self._ready = None
        with self._lock:
            pool, self._pool = self._pool, None
            self._closed = True
        _running.discard(self)
        self._stopped_at_exit = False
        if pool is not None:
            if not wait:  # queued tasks still run, but not past interpreter exit
                _finishing.extend(getattr(pool, "_processes", {}).values())
            pool.shutdown(wait=wait, kill_workers=kill)
        if self._store is not None:
            self._store.close()
            self._store = None
        with self._lock:
            stuck_dir, self._stuck_dir = self._stuck_dir, None
        if stuck_dir is not None:
            shutil.rmtree(stuck_dir, ignore_errors=True)
        self._functions.clear()

    # -- internals -----------------------------------------------------------------------
    def _dispatch(self, future: Future[Any], task: Task, *, fresh: bool = False) -> None:
        """Pickle the call here (errors surface in the caller) and hand it to the pool.

        ``fresh``: called from ``submit``, before anyone else has the future (so it cannot
        have been cancelled): the checks for a cancelled one are skipped.
        """
        if not fresh and future.done():
            return
        try:
            args, kwargs = resolve_arguments(task, self._worker_value)
        except BaseException as exc:  # an input future failed: so does this task
            future.set_exception(exc)
            return
        fn_data = self._functions.get(task.fn)
        payload: bytes | Packed = pack_arguments(task.fn, args, kwargs)
        held = self._hold(task)
        store = self._get_store()
        if isinstance(payload, Packed):  # large arguments go to shared memory, not the pipe
            payload = store.write(payload)
            store.acquire([payload.path])
            store.drop(payload.path)  # removed once this call no longer reads it
            held.append(payload.path)
        options = task.options
        stuck = None if options.timeout is None else self._stuck_path()
        call = _Call(task.fn, (store.new_path(), store.owner, fn_data, payload, task.mode,
                               options.retries, options.retry_on, options.timeout, stuck),
                     held, stuck, options.timeout)
        self._send(future, call)
        if not self._stopped_at_exit:  # after loky's first submit, which registers loky's hook
            _stop_at_exit(self)
        if not fresh and future.cancelled():
            future.handle.cancel()

    def _send(self, future: Future[Any], call: _Call) -> None:
        """Hand ``call`` to the pool, a new one if the pool broke; ``future`` follows it."""
        attempts = 0
        while True:
            pool = self._get_pool()
            try:
                handle = pool.submit(run_shared, *call.args)
                break
            except Exception as exc:  # a worker died since the pool was checked: replace it
                attempts += 1
                if not _is_broken(exc) or attempts > LOST_WORKER_RETRIES:
                    raise
                self._set_broken(pool)
        future.handle = handle
        handle.add_done_callback(functools.partial(self._on_done, future, call, pool))

    def _set_broken(self, pool: Any) -> None:
        """Have ``pool`` replaced on next use, unless it was replaced already."""
        with self._lock:
            if self._pool is pool:
                self._broken = True

    def _on_done(self, future: Future[Any], call: _Call, pool: Any, handle: Any) -> None:
        try:
            exc = handle.exception()
        except cf.CancelledError:
            exc = None
        if exc is not None and _is_broken(exc):
            if call.stuck is not None and _take_note(call.stuck):  # it ended its worker
                self._set_broken(pool)
                timed_out = stuck_error(task_name(call.fn), call.timeout or 0.0)
                timed_out.__cause__ = exc
                exc = timed_out
            elif self._resend(future, call, pool):
                return
        self._unfinished.discard(future)
        if call.held and self._store is not None:
            self._store.release(call.held)
        if handle.cancelled():
            future.cancel()
        elif exc is None:
            outcome: Outcome = handle.result()
            data = outcome[1]
            if isinstance(data, SharedFile) and self._store is not None:
                weakref.finalize(future, self._store.drop, data.path)
                future.set_serialized_result(data, load_own)
            else:
                complete(future, outcome)
        else:
            self._drop_result(call)
            self._fail(future, exc, call)

    def _resend(self, future: Future[Any], call: _Call, pool: Any) -> bool:
        """Run ``call`` again, in a new pool, after its pool broke; False past the limit.

        loky cannot tell which task killed the worker, so every unfinished task of the
        broken pool counts a loss and is sent again.
        """
        self._set_broken(pool)
        self._drop_result(call)  # what the lost attempt may have written
        call.lost += 1
        if call.lost > LOST_WORKER_RETRIES or future.done():
            return False
        try:
            self._send(future, call)
        except BaseException as exc:  # shut down meanwhile, or the pool keeps breaking
            self._unfinished.discard(future)
            if call.held and self._store is not None:
                self._store.release(call.held)
            self._fail(future, exc, call)
        return True

    def _drop_result(self, call: _Call) -> None:
        """Remove the result file an attempt of ``call`` may have left (its worker died)."""
        if self._store is not None:
            self._store.drop(call.args[0])

    def _stuck_path(self) -> str | None:
        """A fresh path where a task with a timeout leaves a note if it gets stuck.

        The note tells this task's timeout from any other reason its worker died
        (loky only reports a broken pool). None once shut down: no new pool runs it.
        """
        with self._lock:
            if self._stuck_dir is None:
                if self._closed:
                    return None
                self._stuck_dir = tempfile.mkdtemp(prefix="unidist-api-stuck-")
            return os.path.join(self._stuck_dir, uuid.uuid4().hex)

    def _fail(self, future: Future[Any], exc: BaseException, call: _Call) -> None:
        """Complete ``future`` with the pool's failure (the task's own comes as an outcome)."""
        from loky.process_executor import ShutdownExecutorError

        if isinstance(exc, ShutdownExecutorError):
            stopped = ExecutorShutdownError(
                "the executor was shut down before this task finished"
            )
            stopped.__cause__ = exc
            exc = stopped
        elif _is_broken(exc):
            lost = worker_lost(task_name(call.fn), call.lost,
                               f"local: the pool broke, {type(exc).__name__}")
            lost.__cause__ = exc
            exc = lost
        if not future.done():
            future.set_exception(exc)

    def _worker_value(self, dep: Future[Any]) -> Any:
        """What replaces an input future in a call sent to a worker."""
        data = dep.serialized_result()  # raises the dependency's exception if it failed
        if data is not None:  # still packed: embedded without a round trip (a shared
            return Embedded(data)  # file goes as its path)
        return dep.result()

    def _defer(self, future: Future[Any], task: Task, pending: list[Future[Any]]) -> None:
        """Submit ``task`` from the dispatcher thread once its input futures are done."""
        count = [len(pending)]
        lock = threading.Lock()

        def on_input_done(_: Any) -> None:
            with lock:
                count[0] -= 1
                ready = count[0] == 0
            if ready:
                ready_queue = self._ready
                if ready_queue is not None:
                    ready_queue.put((future, task))
                elif not future.done():  # shut down (wait=False) before its inputs were done
                    future.set_exception(ExecutorShutdownError(
                        "the executor was shut down before this task's input futures finished"
                    ))

        self._get_ready_queue()
        for dep in pending:
            dep.add_done_callback(on_input_done)

    def _get_ready_queue(self) -> queue.SimpleQueue[tuple[Future[Any], Task] | None]:
        with self._lock:
            if self._ready is None:
                self._ready = queue.SimpleQueue()
                threading.Thread(target=self._dispatch_loop, args=(self._ready,), daemon=True,
                                 name="unidist-api-local-dispatch").start()
            return self._ready

    def _dispatch_loop(self, ready: queue.SimpleQueue[tuple[Future[Any], Task] | None]) -> None:
        while (item := ready.get()) is not None:
            future, task = item
            try:
                self._dispatch(future, task)
            except BaseException as exc:
                if not future.done():
                    future.set_exception(exc)

    def _get_store(self) -> SharedStore:
        store = self._store
        if store is None:
            with self._lock:
                if self._store is None:
                    self._store = SharedStore()
                store = self._store
        return store

    def _hold(self, task: Task) -> list[str]:
        """Keep the shared files a task reads (puts, large results) until it finishes."""
        paths = []
        for dep in task.deps:
            if dep._backend is self:
                data = dep.serialized_result()
                if isinstance(data, SharedFile):
                    paths.append(data.path)
        if paths:
            self._get_store().acquire(paths)
        return paths


_running: weakref.WeakSet[LocalBackend] = weakref.WeakSet()
_finishing: list[Any] = []  # worker processes of pools shut down with wait=False
_exit_hook = False


def _stop_at_exit(backend: LocalBackend) -> None:
    """At interpreter exit, cancel queued tasks and stop the workers at once.

    loky's own exit hook waits for every queued task to finish; ours is registered
    after it with the same mechanism, so it runs first (threading's exit hooks run in
    reverse order, before non-daemon threads are joined).
    """
    global _exit_hook
    _running.add(backend)
    backend._stopped_at_exit = True
    if not _exit_hook:
        _exit_hook = True
        threading._register_atexit(_stop_all)  # type: ignore[attr-defined]


def _stop_all() -> None:
    for backend in list(_running):
        backend._close(wait=True, cancel=True, kill=True)
    for process in _finishing:
        if process.is_alive():
            process.terminate()
    for process in _finishing:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()


def _placeholder(future: Future[Any]) -> None:
    return None


def _take_note(path: str) -> bool:
    """Remove the note a stuck task left at ``path``; False if there is none."""
    try:
        os.unlink(path)
    except OSError:
        return False
    return True


def _is_broken(exc: BaseException) -> bool:
    """Whether loky reports a broken pool: a worker died (TerminatedWorkerError is one)."""
    import loky

    return isinstance(exc, loky.BrokenProcessPool)


class _Call:
    """A task's pickled call, kept so a task whose worker died is sent again as is."""

    __slots__ = ("fn", "args", "held", "lost", "stuck", "timeout")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], held: list[str],
                 stuck: str | None = None, timeout: float | None = None) -> None:
        self.fn = fn  # for the error's task name
        self.args = args  # run_shared's arguments: result path, owner, run_pickled's
        self.held = held  # shared files the task reads, released when it finishes
        self.lost = 0  # how often its worker died
        self.stuck = stuck  # with a timeout: where the task leaves a note if it gets stuck
        self.timeout = timeout  # the task's timeout option, for the error's message
