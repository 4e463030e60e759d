"""The tasks of the data-plane benchmark: importable by every worker, like ``tasks.py``.

Every value is a NumPy float64 array of integers, so each sum is exact whatever the
order of the additions (all partial sums stay far below 2**53): a result either equals
what NumPy computes in the caller or is wrong.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["pattern", "slice_sum", "full", "total", "block_dot", "PERIOD"]

PERIOD = 1009  # pattern(n)[i] == i % PERIOD


def pattern(n: int) -> Any:
    """The caller's broadcast array: ``0, 1, ..., PERIOD - 1, 0, 1, ...`` as float64."""
    return (np.arange(n, dtype=np.int64) % PERIOD).astype(np.float64)


def slice_sum(arr: Any, i: int, parts: int) -> float:
    """The sum of slice ``i`` of ``parts`` equal slices of ``arr`` (it reads only that)."""
    n = len(arr)
    return float(arr[i * n // parts : (i + 1) * n // parts].sum())


def full(n: int, value: float) -> Any:
    """A fresh array of ``n`` float64 equal to ``value`` (``n * 8`` bytes, every page written)."""
    return np.full(n, float(value), dtype=np.float64)


def total(arr: Any) -> float:
    """Reduce an array to its sum (reads every page)."""
    return float(arr.sum())


def block_dot(*blocks: Any) -> Any:
    """``C_ij = sum_k A_ik @ B_kj``, given ``A_i0..A_i(g-1)`` then ``B_0j..B_(g-1)j``."""
    g = len(blocks) // 2
    out = blocks[0] @ blocks[g]
    for k in range(1, g):
        out += blocks[k] @ blocks[g + k]
    return out
