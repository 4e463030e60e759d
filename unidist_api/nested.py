"""Values nested in lists, tuples and dicts: the containers task arguments are searched in.

Kept apart from :mod:`unidist_api.arguments` (which knows futures) so that worker-side
code can swap its own placeholders without importing the caller's machinery.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["replace_instances"]


def replace_instances(obj: Any, kind: type, swap: Callable[[Any], Any]) -> Any:
    """A copy of ``obj`` with each instance of ``kind`` inside lists, tuples and dicts
    (at any depth) replaced by ``swap(instance)``."""
    if isinstance(obj, kind):
        return swap(obj)
    container = type(obj)
    if container is dict:
        return {key: replace_instances(value, kind, swap) for key, value in obj.items()}
    if container is list:
        return [replace_instances(value, kind, swap) for value in obj]
    if container is tuple:
        return tuple(replace_instances(value, kind, swap) for value in obj)
    return obj
