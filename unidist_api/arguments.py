"""Futures passed as task arguments: find them, and swap them for what the worker needs.

A future (or ``put`` handle) may appear at the top level of the arguments or inside
lists, tuples and dicts, at any depth. Each backend decides what replaces it: the
value itself (serial, local) or the engine's own reference (Ray, Dask), so values go
from worker to worker there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .futures import Future
from .nested import replace_instances

__all__ = ["find_futures", "replace_futures", "replace_instances"]

_CONTAINERS = (list, tuple, dict)


def find_futures(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Future[Any]]:
    """All futures inside the arguments, in order of appearance (may repeat)."""
    found: list[Future[Any]] = []
    _collect(args, found)
    if kwargs:
        _collect(kwargs, found)
    return found


def _collect(obj: Any, found: list[Future[Any]]) -> None:
    kind = type(obj)
    if kind is dict:
        values: Any = obj.values()
    elif kind is list or kind is tuple:
        values = obj
    else:
        if isinstance(obj, Future):
            found.append(obj)
        return
    if len(obj) > 16 and not any(  # a long flat batch (map's items): one C-speed pass
        kind in _CONTAINERS or issubclass(kind, Future) for kind in set(map(type, values))
    ):
        return
    for value in values:
        if isinstance(value, Future):
            found.append(value)
        elif type(value) in _CONTAINERS:
            _collect(value, found)


def replace_futures(obj: Any, swap: Callable[[Future[Any]], Any]) -> Any:
    """A copy of ``obj`` with each future replaced by ``swap(future)``; other objects kept."""
    return replace_instances(obj, Future, swap)
