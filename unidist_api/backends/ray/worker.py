"""What runs on a Ray worker: the one remote function, :func:`_run_task`.

Its arguments are the task's *spec* (see ``RayBackend._spec``), its *payload* (the
call's packed arguments) and its inputs (the values of the futures among them, resolved
by Ray worker to worker). It unpickles the spec once per worker process (then knows it
by its token), claims the task (skipping it if the caller cancelled it first:
:mod:`.cancel`), runs the executor's initializer once per process, runs the task
through :func:`~unidist_api.worker.run_native` and returns the packed value. A task's
own exception leaves as :class:`~.errors.TaskFailed`.

Initializer. Ray's own hook (``worker_process_setup_hook``) is fixed when Ray starts
and is shared by every executor of the process, so ``initializer(*initargs)`` instead
runs inside the first task of this executor that a worker process runs, once per
process and executor, before the task (a worker that never runs one of its tasks never
runs it). If it raises, that task fails with :class:`~unidist_api.worker.InitializerFailed`
(with the executor's token), which breaks the executor in the caller when its failure is
loaded (:meth:`.errors.TaskFailed.failure`); the worker remembers it, so the executor's
later tasks there fail the same way, without running the initializer again.

Timeout. ``timeout`` travels in the spec: the worker stops an attempt past it with a
SIGALRM in its main thread, where Ray runs tasks (:mod:`unidist_api.timeouts`); an
attempt stuck where that cannot reach leaves a stuck mark (:mod:`.cancel`) and ends
its process.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
from typing import Any

import ray

from ...data import Packed
from ...serialization import loads, task_name
from ...worker import (
    InitializerFailed,
    load_function,
    run_initializer,
    run_native,
    stuck_error,
    unpicklable_result,
)
from . import cancel
from .data import InStore, returned
from .errors import TaskFailed

__all__ = ["SPECS_MAX", "_run_task"]

Wire = bytes | Packed | InStore  # what a task returns to Ray (.data)
SPECS_MAX = 256  # task specs (function, options, mode) cached, in the caller and per worker


def _run_task(*args: Any) -> Wire | tuple[tuple[float | None, int], Wire]:
    """The one remote function: initializer, then the task, then its packed value.

    A task asked to report failures (``status`` in its spec) returns a tiny status
    value before it (Ray's ``num_returns=2``): the caller learns of a failure from that
    one, without loading the value, and of a success what :func:`_facts` says (the
    worker's own time, the value's size).

    ``args`` are the spec, the payload and the inputs (a lone ``*args`` is what Ray
    checks the fastest at each call).
    """
    spec, payload, *inputs = args
    try:
        fn_data, mode, retries, retry_on, init, timeout, claims, status = _load_spec(spec)
        if cancel.claimed_by_caller(claims):
            raise cf.CancelledError("the caller cancelled this task before it started")
        on_stuck = None
        if timeout is not None:
            key = cancel.stuck_key()
            if cancel.was_stuck(key):
                raise stuck_error(task_name(load_function(fn_data)), timeout)
            on_stuck = functools.partial(cancel.mark_stuck_and_exit, key)
        if init is not None:
            _initialize(*init)
        value = run_native(
            fn_data, payload, mode, retries, retry_on, *inputs, timeout=timeout, on_stuck=on_stuck
        )
    except (Exception, SystemExit) as exc:
        raise TaskFailed.carrying(exc) from None
    try:
        data = returned(value)
    except Exception as exc:
        raise TaskFailed.carrying(unpicklable_result(fn_data, value, exc)) from None
    return (_facts(value, data), data) if status else data


def _facts(value: Any, data: Wire) -> tuple[float | None, int]:
    """A finished task's status: its batch's own time (None for a single call) and the
    packed value's size, in bytes; what a pipeline learns of a stage it does not load."""
    if isinstance(data, Packed):
        size = data.nbytes
    else:
        size = len(data.data if isinstance(data, InStore) else data)
    return getattr(value, "elapsed", None), size


_Fixed = tuple[
    bytes, int, int, tuple[type[BaseException], ...], Any, "float | None", tuple[str, str], bool
]
_specs: dict[bytes, _Fixed] = {}  # by token: the specs this worker process has unpickled


def _load_spec(spec: Any) -> _Fixed:
    """A task's spec (see ``RayBackend._spec``), unpickled once per worker process.

    A large initializer travels beside the spec, and runs here.
    """
    data: Any
    if type(spec) is bytes:
        token, data = spec[:16], spec
    else:
        token, data, init = spec
        if init is not None:
            _initialize(*init)
    fixed = _specs.get(token)
    if fixed is None:
        if type(data) is not bytes:  # too large to go inline: read once from the object store
            data = ray.get(data)
        fixed = loads(memoryview(data)[16:])
        if len(_specs) >= SPECS_MAX:
            del _specs[next(iter(_specs))]
        _specs[token] = fixed
    return fixed


_initialized: set[str] = set()  # tokens of the executors whose initializer ran in this process
_failed: dict[str, InitializerFailed] = {}  # by token: those whose initializer failed here


def _initialize(token: str, data: Any) -> None:
    if token in _initialized:
        return
    failed = _failed.get(token)
    if failed is None:
        try:
            run_initializer(data if isinstance(data, bytes) else ray.get(data))
        except InitializerFailed as exc:
            failed = _failed[token] = InitializerFailed(exc.data, exc.tb, token)
        else:
            _initialized.add(token)
            return
    raise InitializerFailed(failed.data, failed.tb, token)  # no user code runs here now
