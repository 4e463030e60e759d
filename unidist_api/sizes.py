"""How many bytes an item takes on its way through an engine: what the streaming bounds count.

``map`` and ``pipeline`` keep what they hold (input read and not yet yielded, results
waiting) within the executor's ``memory_budget`` (docs/semantics.md). They measure the
packed size of one item per batch, the first, and take it for each item of that batch:
one pickle per batch, not per item, so tiny items stay cheap.
"""

from __future__ import annotations

import pickle
from typing import Any

from .data import Packed, pack

__all__ = ["DEFAULT_BUDGET", "batch_within", "estimate", "packed_size"]

DEFAULT_BUDGET = 64 * 1024 * 1024  # bytes: the memory_budget an executor has by default


def packed_size(value: Any) -> int:
    """Bytes of ``value`` packed (its large buffers counted, not copied); 0 if unpicklable.

    An unpicklable value is the backend's to report, by name, when it is submitted.
    """
    buffers: list[int] = []
    try:  # buffers out of band: counted, never copied
        header = pickle.dumps(
            value, protocol=5, buffer_callback=lambda b: buffers.append(memoryview(b).nbytes)
        )
    except Exception:  # a lambda, a class of __main__: what cloudpickle makes of it
        try:
            packed = pack(value)
        except Exception:
            return 0
        return packed.nbytes if isinstance(packed, Packed) else len(packed)
    return len(header) + sum(buffers)


def estimate(old: float, measured: int) -> float:
    """Bytes per item: up at once to a larger measurement, down only halfway to a smaller."""
    return measured if not old else max(measured, 0.5 * (old + measured))


def batch_within(
    size: int, held: float, per_item: float, budget: int, shares: int, *, alone: bool
) -> int:
    """How many of ``size`` items the next batch may take: at most ``budget / (2 x
    shares)`` bytes and what ``budget`` has left over ``held``, at ``per_item`` bytes
    each; 0 to wait for results to be yielded. ``alone``: nothing is held, so one item
    goes whatever its size. With nothing measured yet (``per_item`` 0), all of ``size``."""
    if per_item <= 0:
        return size
    if not alone and held + per_item > budget:
        return 0
    share = min(budget - held, budget / (2 * shares))
    return max(1, min(size, int(share // per_item)))
