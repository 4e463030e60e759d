"""``local``: a loky process pool on this machine (``workers`` processes, default one per CPU).

The pool starts on first use. Calls travel as pickles made in the caller (so an
unpicklable argument fails at submit, by name) and the function is pickled once per
executor. A task whose arguments hold unfinished futures waits for them without
blocking the caller: one dispatcher thread submits it when they are done.

Large buffers (of ``put`` objects, arguments and results) go through shared-memory
files, not the pipe (:mod:`.shm`): workers map them read-only, the caller maps a
result copy-on-write, and a result or ``put`` handle passed on to another task travels
as its path. A task past its ``timeout`` that the interrupt cannot reach (stuck in one
C call) ends its worker process, leaving a note file: that task fails with
TaskTimeoutError, the broken pool is replaced and its other unfinished tasks are sent
again. An initializer that raises leaves a note file too, before loky reports the pool
broken: the executor is then broken (BrokenExecutorError, as ``concurrent.futures``), its
unfinished tasks fail and no new pool starts. Each worker exits by itself within a second
of the caller's death (:func:`.worker.start_worker`), so a caller killed outright leaves
no worker behind.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import queue
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from ...data import Embedded, Packed, load_result
from ...errors import ExecutorShutdownError
from ...futures import Future
from ...serialization import FunctionCache, loads, pack_for_workers, pack_value
from ...worker import stuck_error
from ..admission import Gate
from ..base import LOST_WORKER_RETRIES, Backend, Task, complete, prepare_native, task_name
from . import pool as pools
from .calls import Call, StuckNotes, pool_failure
from .shm import Mapped, Store, load_mapped
from .worker import run_call

#: A ``put`` pickle without large buffers goes to a shared file from this size on
#: (smaller ones travel with each task, cheaper than a file).
SHARED_PUT = 1 << 16


class LocalBackend(Backend):
    name = "local"
    honours_timeout = True
    option_names = frozenset({"env"})  # env: environment variables set in every worker

    def __init__(
        self,
        *,
        address: str | None,
        workers: int | None,
        initializer: Callable[..., Any] | None,
        initargs: tuple[Any, ...],
        options: Mapping[str, Any],
    ) -> None:
        super().__init__(
            address=address,
            workers=workers,
            initializer=initializer,
            initargs=initargs,
            options=options,
        )
        self._lock = threading.Lock()
        self._pool: Any = None
        self._broken = False  # set when a worker died; the pool is replaced on next submit
        self._closed = False  # shut down: a task whose worker died is not sent again
        self._functions = FunctionCache()
        self._ready: queue.SimpleQueue[tuple[Future[Any], _Pickled] | None] | None = None
        self._store: Store | None = None  # shared-memory files (created on first need)
        self._no_store = False  # no folder could be made: everything goes through the pipe
        self._lost: pools.LostResults | None = None
        self._unfinished: weakref.WeakSet[Future[Any]] = weakref.WeakSet()  # for cancel_futures
        self._stopped_at_exit = False  # registered with pools.stop_at_exit (a cheap flag)
        self._stuck = StuckNotes()  # note files of stuck tasks, and of a failed initializer
        self._init_note: str | None = None  # where a worker whose initializer fails says so
        #: Holds tasks beyond ``workers`` and starts them by priority, once a task has one.
        self._gate = Gate(lambda: self.workers, self._in_engine)

    # -- the pool -----------------------------------------------------------------
    def _get_pool(self) -> Any:
        pool = self._pool
        if pool is not None and not self._broken:
            return pool
        with self._lock:
            if self._pool is None or self._broken:
                if self.broken is not None:  # the initializer failed: no new pool
                    raise self.broken_error()
                if self._closed:  # a lost task sent again after shutdown: no new pool
                    raise ExecutorShutdownError(
                        "the executor was shut down before this task could run again "
                        "after its worker died"
                    )
                replacing = self._pool is not None
                if replacing:  # a worker died and broke the pool: replace it
                    self._pool.shutdown(wait=False, kill_workers=True)
                    self._broken = False
                if self.init_data is not None and self._init_note is None:
                    self._init_note = self._stuck.path()
                self._pool = pools.new_pool(
                    self.workers,
                    self.init_data,
                    self.options.get("env"),
                    self._init_note,
                    replacing=replacing,
                )
            return self._pool

    def _get_store(self) -> Store | None:
        store = self._store
        if store is None and not self._no_store:
            with self._lock:
                if self._store is None and not self._no_store:
                    try:
                        self._store = Store()
                        self._lost = pools.LostResults(self._store.discard)
                    except OSError:
                        self._no_store = True
                store = self._store
        return store

    # -- Backend interface -------------------------------------------------------------
    def submit(self, task: Task) -> Future[Any]:
        future: Future[Any] = Future(self)
        call = self._pack(task)  # now: changes to the arguments after submit do not reach it
        pending = [dep for dep in task.deps if not dep.done()]
        self._unfinished.add(future)
        if pending:
            self._defer(future, call, pending)
        elif self._gate.engaged or task.options.priority:
            self._admit(future, call)
        else:
            self._dispatch(future, call, fresh=True)
        return future

    def put(self, obj: Any) -> Future[Any]:
        data = pack_value(obj, "the object passed to put")
        future: Future[Any] = Future(self)
        if isinstance(data, Packed) or len(data) >= SHARED_PUT:
            store = self._get_store()
            try:
                mapped = None if store is None else store.keep(data)
            except (OSError, ValueError):  # no room in shared memory
                mapped = None
            if mapped is not None:  # one file, which every task given the handle maps
                future._packed = mapped
                future.set_serialized_result(mapped, load_mapped)
                return future
            if isinstance(data, Packed):  # no room in shared memory: a snapshot, in band
                data = data.detached()
        future.set_serialized_result(data, load_result)
        return future

    def cancel(self, future: Future[Any]) -> bool:
        handle = future.handle
        if handle is None:  # waiting for its inputs, or its turn in the gate
            self._gate.withdraw(future)
            return True
        return bool(handle.cancel())

    def running(self, future: Future[Any]) -> bool:
        handle = future.handle
        return handle is not None and bool(handle.running())

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._close(wait=wait, cancel=cancel_futures, kill=False)

    def _close(self, *, wait: bool, cancel: bool, kill: bool) -> None:
        """Stop the pool; ``cancel`` drops tasks not yet started, ``kill`` stops running ones."""
        if cancel:  # those waiting in the gate first: none is sent while the rest are cancelled
            for future in [*self._gate.held(), *list(self._unfinished)]:
                future.cancel()
        elif wait:  # as concurrent.futures: every task submitted runs, those waiting for
            cf.wait(list(self._unfinished))  # inputs or their turn, or whose worker died, included
        if not wait:  # what waits for its turn in the gate goes to the pool now, in order
            self._gate.flush()
        if self._ready is not None:
            self._ready.put(None)
            self._ready = None
        with self._lock:
            pool, self._pool = self._pool, None
            self._closed = True
        pools.forget(self)
        self._stopped_at_exit = False
        manager = None
        if pool is not None:
            manager = getattr(pool, "_executor_manager_thread", None)
            if not wait:  # queued tasks still run, but not past interpreter exit
                pools.finishing.extend(getattr(pool, "_processes", {}).values())
            pool.shutdown(wait=wait, kill_workers=kill)
        store = self._store
        if store is not None:
            if wait or manager is None or not manager.is_alive():
                store.close()
            else:  # tasks still queued read their files: remove them once the pool is done
                store.close_after(manager)
        self._stuck.close()
        self._functions.clear()

    # -- sending a call ------------------------------------------------------------------
    def _admit(self, future: Future[Any], call: _Pickled) -> None:
        """Through the gate: sent now, or when a slot frees and its priority is the highest."""
        self._gate.admit(
            future,
            call.task.options.priority,
            functools.partial(self._dispatch, future, call),
            functools.partial(self._release, call.held),
        )

    def _in_engine(self) -> list[Future[Any]]:
        """The unfinished futures whose tasks are in the pool (for the gate)."""
        return [future for future in list(self._unfinished) if future.handle is not None]

    def _pack(self, task: Task) -> _Pickled:
        """Pickle the call in the caller, at submit (errors name the culprit here).

        Input futures become placeholders (:func:`~unidist_api.backends.base.prepare_native`),
        their values are added when the call is sent. Large arguments are written to a
        shared file now, so the call holds a snapshot of them, as of every other argument.
        """
        fn_data, packed, inputs = prepare_native(task, self._functions)
        held: list[str] = []  # shared files this call reads, released when it finishes
        payload: bytes | Packed | str = packed
        store = self._store or self._get_store()  # also where large results will go
        if isinstance(packed, Packed):
            shared = None if store is None else self._share(store, packed, held)
            payload = packed.detached() if shared is None else shared
        return _Pickled(task, fn_data, payload, inputs, held)

    def _dispatch(self, future: Future[Any], call: _Pickled, *, fresh: bool = False) -> None:
        """Hand a pickled call to the pool, with its input futures' values (now done).

        ``fresh``: called from ``submit``, before anyone else has the future (so it cannot
        have been cancelled): the checks for a cancelled one are skipped.
        """
        held = call.held
        if not fresh and future.done():
            self._release(held)
            return
        task = call.task
        inputs: bytes | Packed | str | None = None
        try:
            if call.inputs:
                values = tuple(self._worker_value(held, dep) for dep in call.inputs)
                inputs = pack_for_workers(values)
                store = self._store
                if isinstance(inputs, Packed) and store is not None:
                    inputs = self._share(store, inputs, held) or inputs.detached()
        except BaseException as exc:  # an input future failed: so does this task
            self._release(held)
            future.set_exception(exc)
            return
        options = task.options
        stuck = None if options.timeout is None else self._stuck.path()
        sent = Call(
            task.fn,
            (
                call.fn_data,
                call.payload,
                task.mode,
                options.retries,
                options.retry_on,
                options.timeout,
                stuck,
                inputs,
            ),
            held,
            stuck,
            options.timeout,
        )
        self._send(future, sent)
        if not self._stopped_at_exit:  # after loky's first submit, which registers loky's hook
            self._stopped_at_exit = True
            pools.stop_at_exit(self)
        handle = future.handle  # None if it finished already
        if not fresh and future.cancelled() and handle is not None:
            handle.cancel()

    def _worker_value(self, held: list[str], dep: Future[Any]) -> Any:
        """What replaces an input future in a call sent to a worker."""
        data = dep.serialized_result()  # raises the dependency's exception if it failed
        if type(data) is Mapped and data.store is self._store:
            data.store.acquire(data.path)  # kept until this call finishes
            held.append(data.path)
            return data.ref  # the worker maps the file: the caller never reads it
        if data is not None:
            return Embedded(data)  # still packed: no unpickle and re-pickle here
        return dep.result()

    def _share(self, store: Store, payload: Packed, held: list[str]) -> str | None:
        """Large values go to a file the call holds; the pipe carries its path.

        None when shared memory has no room: the value goes through the pipe.
        """
        try:
            path = store.share(payload, "a")
        except OSError:
            return None
        store.acquire(path)
        held.append(path)
        return path

    def _send(self, future: Future[Any], call: Call) -> None:
        """Hand ``call`` to the pool, a new one if the pool broke; ``future`` follows it."""
        store = self._store
        call.result = None if store is None else store.result_path()
        attempts = 0
        while True:
            pool = self._get_pool()
            try:
                handle = pool.submit(run_call, *call.args, call.result)
                break
            except Exception as exc:  # a worker died since the pool was checked: replace it
                attempts += 1
                if not pools.is_broken(exc) or attempts > LOST_WORKER_RETRIES:
                    raise
                self._set_broken(pool)  # and _get_pool raises if the initializer failed
                self._initializer_failed()
        future.handle = handle
        handle.add_done_callback(functools.partial(self._on_done, future, call, pool))

    def _set_broken(self, pool: Any) -> None:
        """Have ``pool`` replaced on next use, unless it was replaced already."""
        with self._lock:
            if self._pool is pool:
                self._broken = True

    # -- completion ------------------------------------------------------------------------
    def _on_done(self, future: Future[Any], call: Call, pool: Any, handle: Any) -> None:
        try:
            exc = handle.exception()
        except cf.CancelledError:
            exc = None
        if exc is not None:
            broken = pools.is_broken(exc)
            self._lose_result(call, pool if broken else None)  # what the attempt wrote
            if broken:
                if self._initializer_failed():  # the executor is broken: no resend
                    self._set_broken(pool)
                    exc = self.broken_error()
                elif call.stuck is not None and self._stuck.take(call.stuck):  # ended its worker
                    self._set_broken(pool)
                    timed_out = stuck_error(task_name(call.fn), call.timeout or 0.0)
                    timed_out.__cause__ = exc
                    exc = timed_out
                elif self._resend(future, call, pool):
                    return
        self._unfinished.discard(future)
        self._release(call.held)
        future.handle = None  # loky's future holds this callback, which holds `future`: a
        # cycle that would keep the call and its result until the cyclic collector runs
        if handle.cancelled():
            future.cancel()
        elif exc is None:
            outcome = handle.result()
            if type(outcome[1]) is str:  # the result is in the file the call was given
                self._complete_shared(future, outcome[1])
            else:
                complete(future, outcome)
        else:
            self._fail(future, exc, call)

    def _complete_shared(self, future: Future[Any], path: str) -> None:
        """Complete ``future`` with a result a worker wrote to ``path``."""
        store = self._store
        assert store is not None  # the call had a result path
        try:
            mapped = store.adopt(path)
        except (OSError, ValueError) as exc:
            store.discard([path])
            if not future.done():
                future.set_exception(exc)
            return
        future._packed = mapped  # what serialized_result() gives: read-only, shared
        future._nbytes = mapped.nbytes
        try:
            future.set_serialized_result(mapped, load_mapped)
        except cf.InvalidStateError:  # cancelled meanwhile: the file goes with `mapped`
            future._packed = None

    def _resend(self, future: Future[Any], call: Call, pool: Any) -> bool:
        """Run ``call`` again, in a new pool, after its pool broke; False past the limit.

        loky cannot tell which task killed the worker, so every unfinished task of the
        broken pool counts a loss and is sent again.
        """
        self._set_broken(pool)
        call.lost += 1
        if call.lost > LOST_WORKER_RETRIES or future.done():
            return False
        try:
            self._send(future, call)
        except BaseException as exc:  # shut down meanwhile, or the pool keeps breaking
            self._unfinished.discard(future)
            self._release(call.held)
            self._fail(future, exc, call)
        return True

    def _initializer_failed(self) -> bool:
        """Whether the executor is broken: a worker's initializer failed and left its note
        (before its pool broke), which breaks the executor here."""
        if self.broken is None and self._init_note is not None:
            try:
                with open(self._init_note, "rb") as file:
                    data = file.read()
            except OSError:  # no note: the pool broke otherwise
                return False
            self.break_executor(loads(data))
        return self.broken is not None

    def _lose_result(self, call: Call, broken: Any) -> None:
        """Remove the result file of ``call``'s attempt, which failed or whose worker died.

        ``broken``: the pool, when it broke (its workers may still write for a moment).
        """
        path, call.result = call.result, None
        if path is None or self._lost is None or self._store is None:
            return
        if broken is None:
            self._store.discard([path])
        else:
            self._lost.add(broken, path)

    def _release(self, held: list[str]) -> None:
        if held and self._store is not None:
            self._store.release(held)
            held.clear()

    def _fail(self, future: Future[Any], exc: BaseException, call: Call) -> None:
        """Complete ``future`` with the pool's failure (the task's own comes as an outcome)."""
        if not future.done():
            future.set_exception(pool_failure(exc, call))

    # -- tasks waiting for their inputs --------------------------------------------------
    def _defer(self, future: Future[Any], call: _Pickled, pending: list[Future[Any]]) -> None:
        """Send ``call`` from the dispatcher thread once its input futures are done."""
        count = [len(pending)]
        lock = threading.Lock()

        def on_input_done(_: Any) -> None:
            with lock:
                count[0] -= 1
                ready = count[0] == 0
            if ready:
                ready_queue = self._ready
                if ready_queue is not None:
                    ready_queue.put((future, call))
                elif not future.done():  # shut down (wait=False) before its inputs were done
                    self._release(call.held)
                    future.set_exception(
                        ExecutorShutdownError(
                            "the executor was shut down before this task's input futures finished"
                        )
                    )

        self._get_ready_queue()
        for dep in pending:
            dep.add_done_callback(on_input_done)

    def _get_ready_queue(self) -> queue.SimpleQueue[tuple[Future[Any], _Pickled] | None]:
        with self._lock:
            if self._ready is None:
                self._ready = queue.SimpleQueue()
                threading.Thread(
                    target=self._dispatch_loop,
                    args=(self._ready,),
                    daemon=True,
                    name="unidist-api-local-dispatch",
                ).start()
            return self._ready

    def _dispatch_loop(self, ready: queue.SimpleQueue[tuple[Future[Any], _Pickled] | None]) -> None:
        while (item := ready.get()) is not None:
            future, call = item
            try:
                if self._gate.engaged or call.task.options.priority:
                    self._admit(future, call)
                else:
                    self._dispatch(future, call)
            except BaseException as exc:
                if not future.done():
                    future.set_exception(exc)


class _Pickled:
    """A task as pickled at submit: its function, its arguments (placeholders where input
    futures go) and the shared files they hold, until it is sent to the pool."""

    __slots__ = ("task", "fn_data", "payload", "inputs", "held")

    def __init__(
        self,
        task: Task,
        fn_data: bytes,
        payload: bytes | Packed | str,
        inputs: list[Future[Any]],
        held: list[str],
    ) -> None:
        self.task, self.fn_data, self.payload = task, fn_data, payload
        self.inputs, self.held = inputs, held
