"""What runs on a worker: unpickle a call, run it with retries, pickle the outcome.

Every backend ends up here, so a task behaves the same everywhere: arguments are the
task's own copies (fresh for each attempt), ``retries``/``retry_on`` count the same
way, the result is pickled on the worker (an unpicklable result is named there), and
an exception travels back as itself with its traceback text.

A task runs in one of three modes: ``CALL`` is ``fn(*args, **kwargs)``; ``EACH`` and
``EACH_STAR`` run a batch, ``[fn(x) for x in args[0]]`` and ``[fn(*x) for x in
args[0]]``, which is how ``map`` and ``pipeline`` send many tiny items in one task.
"""

from __future__ import annotations

import functools
import sys
import time
import traceback
import types
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from . import timeouts
from .data import Packed, load_input, pack
from .errors import RemoteTraceback, SerializationError, TaskError, TaskTimeoutError
from .nested import replace_instances
from .serialization import dumps, loads, task_name, unloadable

CALL, EACH, EACH_STAR = 0, 1, 2
OK, ERROR = 0, 1

Outcome = tuple[int, "bytes | Packed", "str | None"]
"""``(OK, packed value, None)`` or ``(ERROR, pickled (exception, partial), traceback)``."""


class Batch(list):  # type: ignore[type-arg]
    """The results of a batch task, with ``elapsed``: seconds the worker spent on it.

    A list, so a batch passed on to the next pipeline stage is that stage's input.
    """

    elapsed: float = 0.0


_functions: OrderedDict[bytes, Callable[..., Any]] = OrderedDict()
_FUNCTION_CACHE_SIZE = 128


def load_function(data: bytes) -> Callable[..., Any]:
    """Unpickle a task function once per worker process (cached by its pickle)."""
    fn = _functions.get(data)
    if fn is None:
        fn = share_globals(loads(data))
        _functions[data] = fn
        if len(_functions) > _FUNCTION_CACHE_SIZE:
            _functions.popitem(last=False)
    return fn


class _Failed(Exception):
    """Internal: a task's own exception, its traceback and a batch's partial results."""

    def __init__(self, exc: BaseException, tb: Any, partial: list[Any] | None) -> None:
        super().__init__(exc)
        self.exc, self.tb, self.partial = exc, tb, partial


def execute(
    fn_data: bytes,
    load_args: Callable[[], tuple[Any, Any]],
    mode: int,
    retries: int,
    retry_on: tuple[type[BaseException], ...],
    timeout: float | None = None,
    on_stuck: Callable[[], None] | None = None,
) -> Any:
    """Run one task; return its value (a :class:`Batch` in batch modes) or raise _Failed.

    ``load_args()`` returns a fresh ``(args, kwargs)``; each retry of an item gets its
    own copy, so an attempt never sees what an earlier one mutated. With a ``timeout``,
    each attempt (each call of the function) is stopped after that many seconds and
    the task fails with TaskTimeoutError, never retried (:mod:`unidist_api.timeouts`;
    ``on_stuck`` is its hook for an attempt that cannot be interrupted).
    """
    try:
        fn = load_function(fn_data)
    except Exception as exc:
        raise _Failed(unloadable("the task function", exc, fn_data), None, None) from None
    start = time.perf_counter()
    try:
        args, kwargs = load_args()
    except Exception as exc:  # e.g. an argument of a class the workers cannot import
        name = task_name(fn)
        raise _Failed(unloadable(f"the arguments of task {name}", exc), None, None) from None
    items = [(args, kwargs)] if mode == CALL else args[0]
    values = []
    for index, item in enumerate(items):
        attempt = 0
        while True:
            try:
                if timeout is None:
                    values.append(_call(fn, mode, item))
                else:
                    values.append(_timed_call(fn, mode, item, timeout, on_stuck))
                break
            except _TimedOut as timed_out:  # final: a stuck task would most likely stick again
                tb = timed_out.tb
                raise _Failed(
                    timed_out.error, tb.tb_next if tb else None, values if mode else None
                ) from None
            except (Exception, SystemExit) as exc:
                if attempt < retries and isinstance(exc, retry_on):
                    attempt += 1
                    fresh_args, fresh_kwargs = load_args()
                    item = (fresh_args, fresh_kwargs) if mode == CALL else fresh_args[0][index]
                    continue
                tb = exc.__traceback__
                raise _Failed(exc, tb.tb_next if tb else None, values if mode else None) from None
    if mode == CALL:
        return values[0]
    batch = Batch(values)
    batch.elapsed = time.perf_counter() - start
    return batch


def run_pickled(
    fn_data: bytes,
    payload: bytes | Packed,
    mode: int,
    retries: int,
    retry_on: tuple[type[BaseException], ...],
    timeout: float | None = None,
    on_stuck: Callable[[], None] | None = None,
    inputs: bytes | Packed | None = None,
) -> Outcome:
    """Run one task given as pickles; the outcome is packed too (never raises).

    Large buffers of the arguments arrive read-only (:func:`~unidist_api.data.load_input`);
    the value's large buffers stay out of band in the outcome (:func:`~unidist_api.data.pack`).
    ``inputs``: the packed tuple of input values for the arguments' :class:`Input`
    placeholders, unpacked again for each attempt as the arguments are.

    ``on_stuck`` (with a ``timeout``): called when an attempt cannot be interrupted
    (stuck in one C call); the local backend's ends the worker process.
    """
    load_args = _arguments(
        payload, None if inputs is None else functools.partial(load_input, inputs)
    )
    try:
        value = execute(fn_data, load_args, mode, retries, retry_on, timeout, on_stuck)
    except _Failed as failed:
        return dump_error(failed.exc, failed.tb, failed.partial)
    try:
        return (OK, pack(value), None)
    except Exception as exc:
        return dump_error(unpicklable_result(fn_data, value, exc), None)


def run_native(
    fn_data: bytes,
    payload: bytes | Packed,
    mode: int,
    retries: int,
    retry_on: tuple[type[BaseException], ...],
    *inputs: bytes | Packed,
    timeout: float | None = None,
    on_stuck: Callable[[], None] | None = None,
) -> Any:
    """Run one task for an engine with an object store (Ray, Dask).

    ``payload`` holds the packed arguments with :class:`Input` placeholders where the
    caller passed futures; ``inputs`` are those futures' packed values, resolved by the
    engine (worker to worker). Each attempt unpacks them again: small parts are its own
    copy, large buffers read-only views (:func:`~unidist_api.data.load_input`). The
    value goes back to the engine as is (the backend packs it); a failure is raised as
    the task's own exception, carrying the traceback text and a batch's partial results
    for the caller (:func:`failure_details`).
    """
    load_args = _arguments(
        payload, (lambda: [load_input(data) for data in inputs]) if inputs else None
    )
    try:
        return execute(fn_data, load_args, mode, retries, retry_on, timeout, on_stuck)
    except _Failed as failed:
        error = _prepare(failed)
    raise error  # outside the handler: no __context__ chain back to _Failed


class Input:
    """Placeholder for the value of the ``index``-th input future of a task."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> tuple[type[Input], tuple[int]]:
        return (Input, (self.index,))


def _arguments(
    payload: bytes | Packed, load_values: Callable[[], Sequence[Any]] | None
) -> Callable[[], tuple[Any, Any]]:
    """What loads one attempt's ``(args, kwargs)``: unpacked afresh (large buffers
    read-only), :class:`Input` placeholders filled with the input futures' values."""

    def load() -> tuple[Any, Any]:
        args, kwargs = load_input(payload)
        if load_values is not None:
            values = load_values()
            args, kwargs = _fill(args, values), _fill(kwargs, values)
        return args, kwargs

    return load


def _fill(obj: Any, values: Sequence[Any]) -> Any:
    return replace_instances(obj, Input, lambda placeholder: values[placeholder.index])


def _prepare(failed: _Failed) -> BaseException:
    """The exception to raise in the engine, with what the caller needs attached."""
    exc, tb, partial = failed.exc, failed.tb, failed.partial
    text = "".join(traceback.format_exception(type(exc), exc, tb.tb_next if tb else None))
    exc = sendable(exc)
    exc.__dict__["_ua_traceback"] = text
    if partial:
        try:
            dumps(partial)
            exc.__dict__["_ua_partial"] = partial
        except Exception:
            pass
    return exc


def failure_details(exc: BaseException) -> tuple[str | None, list[Any] | None]:
    """Take back what :func:`run_native` attached to an exception: (traceback, partial)."""
    state = getattr(exc, "__dict__", {})
    return state.pop("_ua_traceback", None), state.pop("_ua_partial", None)


def unpicklable_result(fn_data: bytes, value: Any, exc: Exception) -> SerializationError:
    """The error for a task result that cannot be pickled, naming the task and the type."""
    fn = load_function(fn_data)
    name = getattr(fn, "__qualname__", repr(fn))
    return SerializationError(
        f"the result of task {name} ({type(value).__module__}.{type(value).__qualname__}) "
        f"cannot be serialized to send it back: {exc}. Return something picklable."
    )


class _TimedOut(Exception):
    """Internal: an attempt ran past its timeout; ``tb`` shows where it was stopped."""

    def __init__(self, error: TaskTimeoutError, tb: Any) -> None:
        super().__init__(error)
        self.error, self.tb = error, tb


def timeout_message(name: str, timeout: float) -> str:
    """What TaskTimeoutError says, on the worker and (Dask) in the caller alike."""
    return (
        f"task {name} ran longer than its timeout of {timeout:g} s and was stopped "
        "(the timeout counts from the start of each attempt on a worker; a timed-out "
        "attempt is final, not retried). Raise the task's timeout option, or make the "
        "task faster"
    )


def stuck_error(name: str, timeout: float) -> TaskTimeoutError:
    """The error for a task stopped by replacing its worker (local, ray)."""
    return TaskTimeoutError(
        timeout_message(name, timeout) + " (it was stuck where the interrupt cannot reach, "
        "e.g. in one long C call, so its worker process was stopped and replaced)"
    )


def _timed_call(
    fn: Callable[..., Any],
    mode: int,
    item: Any,
    timeout: float,
    on_stuck: Callable[[], None] | None,
) -> Any:
    """``_call`` under a deadline: raises _TimedOut when the watchdog stopped it."""
    attempt = timeouts.arm(timeout, on_stuck)
    tb = None
    try:
        try:
            value = _call(fn, mode, item)
        finally:
            timeouts.disarm(attempt)
    except BaseException as exc:  # the interrupt, or what the task made of it
        timeouts.disarm(attempt)  # again: the interrupt may have cut the first one short
        if not attempt.fired:
            raise
        tb = _without_handler(exc.__traceback__)
    if attempt.fired:  # also when the task swallowed the interrupt and returned
        name = task_name(fn)
        raise _TimedOut(TaskTimeoutError(timeout_message(name, timeout)), tb)
    return value


def _without_handler(tb: Any) -> Any:
    """``tb`` without its last frame when that is the SIGALRM handler raising Interrupt."""
    last = tb
    while last is not None and last.tb_next is not None:
        if last.tb_next.tb_next is None and timeouts.is_handler(last.tb_next.tb_frame):
            last.tb_next = None
            break
        last = last.tb_next
    return tb


def _call(fn: Callable[..., Any], mode: int, item: Any) -> Any:
    if mode == CALL:
        return fn(*item[0], **item[1])
    if mode == EACH:
        return fn(item)
    return fn(*item)


def dump_error(exc: BaseException, tb: Any, partial: list[Any] | None = None) -> Outcome:
    """Pickle ``(exception, partial)`` with the traceback text.

    ``partial`` holds a batch's results before the failing item, so ``map`` can yield
    them first, exactly as the builtin ``map`` would. An exception that cannot be
    pickled and rebuilt becomes :class:`~unidist_api.errors.TaskError`.
    """
    text = "".join(traceback.format_exception(type(exc), exc, tb.tb_next if tb else None))
    exc = sendable(exc)
    try:
        data = dumps((exc, partial or None))
    except Exception:  # an unpicklable earlier result: report the error alone
        data = dumps((exc, None))
    return (ERROR, data, text)


def sendable(exc: BaseException) -> BaseException:
    """``exc`` made to pickle as itself: same type, same ``str``; else a TaskError.

    Python pickles an exception as ``type(exc)(*exc.args)``, which runs ``__init__``
    again on its message: ``E(7)`` whose ``__init__`` makes the message ``f"failed with
    code {code}"`` would come back as ``failed with code failed with code 7`` (or not at
    all, when ``__init__`` cannot take the message). Such an exception is pickled as
    plain objects are instead: made without ``__init__``, with its ``args`` and attributes.
    Some exceptions pickle but cannot be rebuilt: checked here, not in the caller.
    """
    if _same(exc):
        return exc
    state = exc.__dict__
    state.pop("__reduce_ex__", None)
    state["__reduce_ex__"] = functools.partial(_reduce_exception, exc)
    if _same(exc):
        return exc
    del state["__reduce_ex__"]
    try:
        loads(dumps(exc))
    except Exception:
        return TaskError(f"{type(exc).__module__}.{type(exc).__qualname__}: {_text(exc)}")
    return exc  # rebuilt, if not quite as it was


def _same(exc: BaseException) -> bool:
    try:
        back = loads(dumps(exc))
        return type(back) is type(exc) and _text(back) == _text(exc)
    except Exception:
        return False


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__}: str() failed>"


def _reduce_exception(exc: BaseException, protocol: int) -> tuple[Any, ...]:
    """An exception's own reduction (see :func:`sendable`): its args, its attributes."""
    state = {k: v for k, v in exc.__dict__.items() if k != "__reduce_ex__"}
    return (rebuild_exception, (type(exc), exc.args, state))


def rebuild_exception(
    cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]
) -> BaseException:
    """An exception as it was pickled, made without calling its ``__init__``."""
    exc = cls.__new__(cls, *args)
    exc.args = args
    if state:
        exc.__setstate__(state)
    return exc


def run_initializer(data: bytes) -> None:
    """Run the user's ``initializer(*initargs)``, shipped as one pickle.

    Raises :class:`InitializerFailed` when it raises (or cannot be loaded here).
    """
    try:
        initializer, initargs = loads(data)
        share_globals(initializer)(*initargs)
    except (Exception, SystemExit) as exc:
        failed = InitializerFailed.of(exc)
    else:
        return
    raise failed  # outside the handler: no __context__ (Dask would pickle it along)


class InitializerFailed(Exception):
    """The executor's initializer raised on a worker: the signal that breaks the executor.

    It carries what the caller needs through any engine: the initializer's exception,
    pickled here (one that cannot travel becomes :class:`TaskError`), its traceback text,
    and ``token``, the executor's, where the engine needs to say whose it is (ray). The
    backend that receives it calls ``Backend.break_executor``. Its ``str`` is the traceback,
    kept short (Dask rebuilds an exception with a longer message, losing its arguments).
    """

    def __init__(self, data: bytes, tb: str, token: str = "") -> None:
        super().__init__(data, tb, token)
        self.data, self.tb, self.token = data, tb, token

    @classmethod
    def of(cls, exc: BaseException, token: str = "") -> InitializerFailed:
        tb = exc.__traceback__
        text = "".join(traceback.format_exception(type(exc), exc, tb.tb_next if tb else None))
        return cls(dumps(sendable(exc)), text, token)

    def error(self) -> BaseException:
        """In the caller: the initializer's exception, its ``__cause__`` the traceback."""
        try:
            exc: BaseException = loads(self.data)
        except Exception:  # e.g. its class cannot be imported here
            exc = TaskError(self.tb.rstrip().rpartition("\n")[2])
        exc.__cause__ = RemoteTraceback(self.tb)
        return exc

    def __str__(self) -> str:
        return "the executor's initializer failed:\n" + self.tb[-4000:]


# -- one namespace per module for functions shipped by value ----------------------------
_namespaces: dict[str, dict[str, Any]] = {}


def share_globals(fn: Any) -> Any:
    """Make functions shipped by value from one module share one namespace per worker.

    cloudpickle gives each pickled function a private copy of the globals it uses, so
    ``global model`` set by an initializer defined in ``__main__`` would be invisible
    to the tasks. Here, as if the module had been imported on the worker, they share
    one dict: functions and classes are replaced by their newest version, other values
    (state such as a loaded model) are kept. Functions of importable modules are left
    alone. ``fn`` may also be a wrapper with ``__wrapped__`` (``ua.task``).
    """
    inner = getattr(fn, "__wrapped__", None)
    if inner is not None and not isinstance(fn, types.FunctionType):
        fn.__wrapped__ = share_globals(inner)
        return fn
    if type(fn) is not types.FunctionType:
        return fn
    module = sys.modules.get(fn.__module__)
    own = fn.__globals__
    if module is not None and own is vars(module):
        return fn
    shared = _namespaces.setdefault(fn.__module__, own)
    if own is shared:
        return fn
    for name, value in own.items():
        if isinstance(value, types.FunctionType) and value.__globals__ is own:
            shared[name] = _rebind(value, shared)
        elif isinstance(value, type) or name not in shared:
            shared[name] = value
    named = shared.get(fn.__name__)
    if named is not None and getattr(named, "__code__", None) is fn.__code__:
        return named
    return _rebind(fn, shared)


def _rebind(fn: types.FunctionType, namespace: dict[str, Any]) -> types.FunctionType:
    new = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__kwdefaults__ = fn.__kwdefaults__
    new.__dict__.update(fn.__dict__)
    new.__qualname__ = fn.__qualname__
    new.__module__ = fn.__module__
    new.__doc__ = fn.__doc__
    new.__annotations__ = fn.__annotations__
    return new
