"""Pickling with cloudpickle, and errors that name what could not be pickled.

Functions and classes the workers cannot import (``__main__``, test modules, a
script's sibling module) are shipped by value by cloudpickle. Errors are raised in
the caller at submit time, as :class:`~unidist_api.errors.SerializationError`.
Values (arguments, ``put`` objects, results) are *packed* (:mod:`unidist_api.data`):
their large buffers travel out of band; functions, options and errors are plain pickles.
"""

from __future__ import annotations

import functools
import os
import pickle
import sys
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from . import pickler
from .data import Packed, pack
from .errors import SerializationError

__all__ = [
    "dumps",
    "loads",
    "dumps_function",
    "pack_arguments",
    "FunctionCache",
    "dumps_value",
    "pack_value",
    "unloadable",
]

loads = pickle.loads


def dumps(obj: Any) -> bytes:
    """Pickle ``obj`` with cloudpickle (protocol 5). Used as is on workers.

    Code shipped by value keeps its file name and source lines (:mod:`.pickler`).
    """
    return pickler.dumps(obj)


def dumps_for_workers(obj: Any) -> bytes:
    """Pickle ``obj`` in the caller, for workers: the user's own modules go by value.

    Only the calling process decides what goes by value; workers pickle results by
    reference, so a class the caller can import comes back as that very class.
    """
    _scan_modules()
    return dumps(obj)


def pack_for_workers(obj: Any) -> bytes | Packed:
    """:func:`dumps_for_workers` for a value: large buffers out of band (``data.pack``)."""
    _scan_modules()
    return pack(obj)


def _scan_modules() -> None:
    if len(sys.modules) != _modules_seen[0]:
        ship_local_modules_by_value()


_seen_modules: set[str] = set()
_START_DIR = os.path.abspath(os.getcwd())  # the program's directory, not a later chdir
_modules_seen = [0]  # len(sys.modules) at the last scan: rescan only when it changed


def ship_local_modules_by_value() -> None:
    """Pickle the user's own modules by value, so workers need not import them.

    A module counts as the user's own when its file lies under the directory the
    program started in or the running script's directory, outside any installed
    environment: a script's sibling modules, test modules. Modules of this package
    are always imported.
    """
    import cloudpickle

    roots = {_START_DIR}
    if sys.argv and sys.argv[0] and os.path.isfile(sys.argv[0]):
        roots.add(os.path.dirname(os.path.abspath(sys.argv[0])))
    installed = {os.path.abspath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    modules = list(sys.modules.items())
    _modules_seen[0] = len(modules)
    for name, module in modules:
        if name in _seen_modules:
            continue
        _seen_modules.add(name)
        file = getattr(module, "__file__", None)
        if "." in name or not file or name in ("__main__", "unidist_api"):
            continue
        path = os.path.abspath(file)
        if (
            "site-packages" in path
            or "dist-packages" in path
            or any(path.startswith(p + os.sep) for p in installed)
        ):
            continue
        if any(path.startswith(root + os.sep) for root in roots):
            cloudpickle.register_pickle_by_value(module)


def _describe(obj: Any) -> str:
    kind = type(obj)
    text = repr(obj)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{kind.__module__}.{kind.__qualname__} object {text}"


_FIX = (
    "Pass something picklable, or create the object inside the task "
    "(or once per worker with Executor(initializer=...))."
)


def dumps_function(fn: Callable[..., Any]) -> bytes:
    """Pickle a task function, raising SerializationError that names it."""
    try:
        return dumps_for_workers(fn)
    except Exception as exc:
        name = getattr(fn, "__qualname__", None) or _describe(fn)
        raise SerializationError(
            f"cannot serialize the task function {name!s}: {exc}. "
            "A task function must be picklable by cloudpickle, including what it closes "
            f"over and the globals it uses. {_FIX}"
        ) from exc


def dumps_value(obj: Any, what: str) -> bytes:
    """Pickle one object (in band), raising SerializationError that says ``what`` it was."""
    try:
        return dumps_for_workers(obj)
    except Exception as exc:
        message = f"cannot serialize {what} ({_describe(obj)}): {exc}. {_FIX}"
        raise SerializationError(message) from exc


def pack_value(obj: Any, what: str) -> bytes | Packed:
    """Pack one value (large buffers out of band), raising SerializationError naming ``what``."""
    try:
        return pack_for_workers(obj)
    except Exception as exc:
        message = f"cannot serialize {what} ({_describe(obj)}): {exc}. {_FIX}"
        raise SerializationError(message) from exc


def task_name(fn: Callable[..., Any]) -> str:
    """The name error messages give a task: its function's qualified name."""
    return getattr(fn, "__qualname__", None) or repr(fn)


def pack_arguments(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> bytes | Packed:
    """Pack ``(args, kwargs)``; on failure, name the argument that could not be pickled."""
    try:
        return pack_for_workers((args, kwargs))
    except Exception as exc:
        name = task_name(fn)
        culprit = _find_culprit(args, kwargs)
        raise SerializationError(
            f"cannot serialize {culprit} of task {name}: {exc}. {_FIX}"
        ) from exc


def _find_culprit(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    """Name the first unpicklable argument, descending into lists, tuples and dicts."""
    items: list[tuple[str, Any]] = [(f"argument {i}", v) for i, v in enumerate(args)]
    items += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for label, value in items:
        if _picklable(value):
            continue
        while isinstance(value, (list, tuple, dict)):
            pairs = value.items() if isinstance(value, dict) else enumerate(value)
            inner = next(((k, v) for k, v in pairs if not _picklable(v)), None)
            if inner is None:
                break
            label, value = f"{label}[{inner[0]!r}]", inner[1]
        return f"{label} ({_describe(value)})"
    return "an argument"


def _picklable(value: Any) -> bool:
    try:
        dumps(value)
    except Exception:
        return False
    return True


def unloadable(
    what: str, exc: Exception, data: bytes | None = None, *, where: str | None = None
) -> SerializationError:
    """The error for a pickle a worker cannot load, naming ``what``, the module and the fix.

    Mostly a module the caller imports but the workers cannot (cloudpickle pickles
    functions and classes of importable modules by reference). ``data``, when given,
    is searched for the names the pickle takes from that module. ``where`` names the
    worker (default: this process, a worker).
    """
    where = where or f"the worker (pid {os.getpid()})"
    module = exc.name if isinstance(exc, ImportError) else None
    if not module:
        fix = (
            "The workers must be able to unpickle it: run the same code and package "
            "versions there as in the caller"
        )
        return SerializationError(
            f"{where} could not load {what}: {type(exc).__name__}: {exc}. {fix}."
        )
    names = _globals_in(data, module) if data is not None else []
    refers = f" (it refers to {', '.join(names)})" if names else ""
    return SerializationError(
        f"{where} could not load {what}{refers}: the module "
        f"{module!r} cannot be imported there ({type(exc).__name__}: {exc}). Install that "
        "module on the workers (or put its directory on their PYTHONPATH), or ship it by "
        f"value: call cloudpickle.register_pickle_by_value({module.partition('.')[0]}) in "
        "the caller before submitting."
    )


def _globals_in(data: bytes, module: str) -> list[str]:
    """The ``module.name`` globals a pickle refers to in ``module`` (at most three)."""
    import pickletools

    found: list[str] = []
    recent: list[Any] = []  # what each opcode pushed (strings, else None), for STACK_GLOBAL
    memo: dict[Any, Any] = {}
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                memo[len(memo) if op.name == "MEMOIZE" else arg] = recent[-1] if recent else None
                continue
            if op.name in ("GLOBAL", "STACK_GLOBAL", "INST"):
                mod, name = (
                    arg.split(" ", 1)
                    if isinstance(arg, str) and " " in arg
                    else recent[-2:]
                    if len(recent) >= 2
                    else (None, None)
                )
                if isinstance(mod, str) and (mod == module or mod.startswith(module + ".")):
                    if f"{mod}.{name}" not in found:
                        found.append(f"{mod}.{name}")
            if op.name in ("GET", "BINGET", "LONG_BINGET"):
                recent.append(memo.get(arg))
            elif op.name not in ("FRAME", "PROTO", "STOP"):
                recent.append(arg if isinstance(arg, str) else None)
            del recent[:-2]
    except Exception:  # a truncated or odd pickle: name what was found so far
        pass
    return found[:3]


class FunctionCache:
    """Each task function pickled once per executor, not once per call.

    Keyed by identity and held weakly, as the stdlib executors hold no task's callable
    once it ran: a bound method's object is freed when the caller drops it, and the
    entry goes with the function (so its id cannot be reused while cached). A callable
    that takes no weak reference is pickled at each call instead. Like Ray's remote
    functions, later changes to globals a ``__main__`` function reads by value are not
    seen by the workers.
    """

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._entries: dict[int, tuple[weakref.ref[Callable[..., Any]], bytes]] = {}

    def get(self, fn: Callable[..., Any]) -> bytes:
        key = id(fn)
        entry = self._entries.get(key)
        if entry is not None and entry[0]() is fn:
            return entry[1]
        data = dumps_function(fn)
        try:
            ref = weakref.ref(fn, functools.partial(self._forget, key))
        except TypeError:  # a builtin, or a callable object without __weakref__
            return data
        if len(self._entries) >= self._size:
            self._entries.clear()
        self._entries[key] = (ref, data)
        return data

    def _forget(self, key: int, _: object) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry[0]() is None:
            del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()
