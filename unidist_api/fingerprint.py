"""Fingerprints of functions and items, for checkpoint journals (:mod:`.journal`).

A recorded result may be served again only while it is still what the function would
compute, so a function's fingerprint covers everything its result depends on that
this process can see: its code (and that of the functions nested in it), its defaults,
the values it closes over and the module globals it reads; a function or class it
reaches through them is fingerprinted in turn (the same rules), a module counts by its
name and version. Anything else is fingerprinted by its pickle, or, unpicklable, by its
``repr`` (which usually holds an address: such a function is recomputed on each run,
never served stale). What code reads from files or the network is outside its reach.

An item is fingerprinted by its pickle: equal pickles, equal items. A set of str keys
pickles in a different order under another ``PYTHONHASHSEED``, so it is recomputed.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import sys
import sysconfig
import types
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["function_fingerprint", "item_key", "chain_fingerprint"]

#: An item pickle up to this size is its own key; a longer one is keyed by its digest.
_INLINE = 40


def function_fingerprint(fn: Callable[..., Any]) -> bytes:
    """A digest of everything ``fn``'s results depend on that this process can see."""
    digest = hashlib.blake2b(digest_size=20)
    for part in _parts(fn, set()):
        digest.update(part)
        digest.update(b"\x00")
    return digest.digest()


def chain_fingerprint(fns: list[Callable[..., Any]]) -> bytes:
    """A pipeline's fingerprint: its stages' fingerprints, in order."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(b"pipeline")
    for fn in fns:
        digest.update(function_fingerprint(fn))
    return digest.digest()


def item_key(item: Any) -> bytes:
    """The key of one item's arguments in a journal (its pickle, or the pickle's digest)."""
    try:
        data = pickle.dumps(item, protocol=5)
    except Exception:  # lambdas, local classes: cloudpickle knows them
        data = _cloudpickle(item)
    if len(data) <= _INLINE:
        return data
    return hashlib.blake2b(data, digest_size=20).digest()


def _cloudpickle(value: Any) -> bytes:
    import cloudpickle

    return cloudpickle.dumps(value, protocol=5)  # type: ignore[no-any-return]


def _parts(obj: Any, seen: set[int]) -> Iterator[bytes]:
    """The byte strings a value's fingerprint is made of (``seen``: against cycles)."""
    if id(obj) in seen:
        yield b"<again>"
        return
    wrapped = getattr(obj, "__wrapped__", None)  # ua.task, functools.wraps
    if isinstance(obj, types.FunctionType):
        seen.add(id(obj))
        if _from_library(obj):
            yield f"library {obj.__module__}.{obj.__qualname__} {_version(obj)}".encode()
        else:
            yield from _function_parts(obj, seen)
    elif isinstance(obj, functools.partial):
        seen.add(id(obj))
        yield b"partial"
        yield from _parts(obj.func, seen)
        yield from _parts(obj.args, seen)
        yield from _parts(obj.keywords, seen)
    elif isinstance(obj, types.MethodType):
        yield b"method"
        yield from _parts(obj.__func__, seen)
        yield from _parts(obj.__self__, seen)
    elif isinstance(obj, types.ModuleType):
        yield f"module {obj.__name__} {getattr(obj, '__version__', '')}".encode()
    elif isinstance(obj, (types.BuiltinFunctionType, types.BuiltinMethodType)):
        yield f"builtin {getattr(obj, '__module__', '')}.{obj.__qualname__}".encode()
    elif isinstance(obj, type):
        seen.add(id(obj))
        yield from _class_parts(obj, seen)
    elif callable(obj) and not callable(wrapped) and type(obj).__module__ != "builtins":
        seen.add(id(obj))
        yield from _class_parts(type(obj), seen)  # a callable object: its class's code too
        yield _value(obj)
    elif callable(wrapped) and not isinstance(obj, type):
        seen.add(id(obj))
        yield b"wrapper"
        yield from _parts(wrapped, seen)
    elif isinstance(obj, (tuple, list)) and not type(obj).__module__ == "__main__":
        yield f"{type(obj).__name__}{len(obj)}".encode()
        for value in obj:
            yield from _parts(value, seen)
    elif isinstance(obj, dict) and type(obj) is dict:
        yield f"dict{len(obj)}".encode()
        for key, value in obj.items():
            yield from _parts(key, seen)
            yield from _parts(value, seen)
    else:
        yield _value(obj)


def _library_paths() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    found = {
        os.path.realpath(paths[name])
        for name in ("stdlib", "platstdlib", "purelib", "platlib")
        if name in paths
    }
    return tuple(path + os.sep for path in found)


_LIBRARIES = _library_paths()


def _from_library(fn: types.FunctionType) -> bool:
    """Whether ``fn`` comes from the standard library or an installed package (not the
    user's own code, nor an editable install): it then counts by name and version."""
    module = sys.modules.get(fn.__module__ or "")
    path = getattr(module, "__file__", None)
    return isinstance(path, str) and os.path.realpath(path).startswith(_LIBRARIES)


def _version(fn: types.FunctionType) -> str:
    top = sys.modules.get((fn.__module__ or "").partition(".")[0])
    return str(getattr(top, "__version__", ""))


def _function_parts(fn: types.FunctionType, seen: set[int]) -> Iterator[bytes]:
    yield f"function {fn.__module__}.{fn.__qualname__}".encode()
    code = fn.__code__
    yield from _code_parts(code)
    yield from _parts(fn.__defaults__, seen)
    yield from _parts(fn.__kwdefaults__, seen)
    for cell in fn.__closure__ or ():
        try:
            contents = cell.cell_contents
        except ValueError:  # an empty cell (a name bound after the closure was made)
            yield b"<empty cell>"
            continue
        yield from _parts(contents, seen)
    namespace = fn.__globals__
    for name in sorted(_global_names(code)):
        if name in namespace:
            yield f"global {name}".encode()
            yield from _parts(namespace[name], seen)


def _code_parts(code: types.CodeType) -> Iterator[bytes]:
    yield code.co_code
    yield repr(code.co_names).encode()
    yield repr((code.co_argcount, code.co_kwonlyargcount, code.co_flags)).encode()
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_parts(const)
        else:
            yield repr(const).encode()


def _global_names(code: types.CodeType) -> set[str]:
    """Names the code (and the code nested in it) may read as globals."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _class_parts(cls: type, seen: set[int]) -> Iterator[bytes]:
    yield f"class {cls.__module__}.{cls.__qualname__}".encode()
    if cls.__module__ == "builtins":
        return
    for name, value in sorted(vars(cls).items()):
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if isinstance(value, property):
            value = (value.fget, value.fset)
        if isinstance(value, (types.FunctionType, tuple)) or name in ("__slots__",):
            yield name.encode()
            yield from _parts(value, seen)
    for base in cls.__bases__:
        yield from _parts(base, seen)


def _value(obj: Any) -> bytes:
    """A plain value's part: its pickle, else its repr."""
    try:
        return pickle.dumps(obj, protocol=5)
    except Exception:
        pass
    try:
        return _cloudpickle(obj)
    except Exception:
        return f"repr {type(obj).__qualname__} {obj!r}".encode()
