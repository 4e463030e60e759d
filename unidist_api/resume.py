"""What ``map`` and ``pipeline`` do with a checkpoint journal: skip what it holds.

Input is read in chunks as the map or pipeline asks for batches. Each item gets its
key (:func:`~unidist_api.fingerprint.item_key`); items the journal holds are not run:
their recorded results take their places when the batch's results are merged back, so
everything comes out in the order of an uninterrupted run. A rerun (the journal holds
results of this call) reads up to :data:`AHEAD` items ahead to look them up in one
query, and hands a run of recorded items over as one chunk with nothing to run.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .fingerprint import chain_fingerprint, function_fingerprint, item_key
from .journal import Journal, open_journal
from .serialization import task_name

__all__ = ["Chunk", "Resume", "for_map", "for_pipeline", "AHEAD"]

AHEAD = 1024  # items read ahead on a rerun, to look them up together
_MISSING: Any = object()


@dataclass(slots=True)
class Chunk:
    """``count`` consecutive input items: ``items`` to run (with their ``keys`` when they
    were looked up), and the recorded results of the others by position (``hits``)."""

    count: int
    items: list[Any]
    keys: list[bytes] | None
    hits: dict[int, Any] = field(default_factory=dict)

    def merge(self, values: Sequence[Any]) -> list[Any]:
        """The chunk's results in input order, given those of ``items``.

        ``values`` may be short (a batch that failed part-way): the results then stop
        before the first item without one.
        """
        if not self.hits:
            return list(values)
        merged: list[Any] = []
        ran = iter(values)
        hits = self.hits
        for position in range(self.count):
            if position in hits:
                merged.append(hits[position])
            else:
                value = next(ran, _MISSING)
                if value is _MISSING:
                    break
                merged.append(value)
        return merged


class Resume:
    """Reads ``source`` in chunks, splitting recorded items from those to run."""

    def __init__(self, journal: Journal, source: Iterator[Any]) -> None:
        self.journal = journal
        self.source = source
        self.exhausted = False  # the source has ended (items may still be buffered)
        self._buffer: deque[tuple[Any, bytes, Any]] = deque()  # (item, key, result|_MISSING)

    @property
    def done(self) -> bool:
        """Every item has been handed out."""
        return self.exhausted and not self._buffer

    def take(self, size: int, ahead: int = AHEAD) -> Chunk | None:
        """The next chunk, of at most ``size`` items to run (None at the end).

        ``ahead``: how many items a rerun may read ahead to look up (the caller bounds
        it by its memory budget).
        """
        ahead = max(1, min(ahead, AHEAD))
        if not self.journal.recorded:  # nothing to look up: every item runs
            items = list(itertools.islice(self.source, size))
            if len(items) < size:
                self.exhausted = True
            if not items:
                return None
            return Chunk(len(items), items, None)
        self._fill(size, ahead)
        buffer = self._buffer
        if not buffer:
            return None
        if buffer[0][2] is not _MISSING:  # a run of recorded items: nothing to run
            hits: dict[int, Any] = {}
            while len(hits) < ahead:
                if not buffer:
                    self._fill(1, ahead)
                    if not buffer:
                        break
                if buffer[0][2] is _MISSING:
                    break
                hits[len(hits)] = buffer.popleft()[2]
            return Chunk(len(hits), [], [], hits)
        chunk = Chunk(0, [], [])
        while buffer and len(chunk.items) < size:
            item, key, value = buffer.popleft()
            if value is _MISSING:
                chunk.items.append(item)
                chunk.keys.append(key)  # type: ignore[union-attr]
            else:
                chunk.hits[chunk.count] = value
            chunk.count += 1
        return chunk

    def _fill(self, size: int, ahead: int) -> None:
        """Read and look up items until ``size`` are buffered (``ahead`` at least)."""
        if self.exhausted or len(self._buffer) >= size:
            return
        wanted = max(size, ahead) - len(self._buffer)
        items = list(itertools.islice(self.source, wanted))
        if len(items) < wanted:
            self.exhausted = True
        keys = [item_key(item) for item in items]
        found = self.journal.lookup(keys)
        for item, key in zip(items, keys, strict=True):
            self._buffer.append((item, key, found.get(key, _MISSING)))

    def record(self, chunk: Chunk, values: Sequence[Any]) -> None:
        """Record the results of (the first ``len(values)``) items the chunk ran."""
        self.journal.record(chunk.items, chunk.keys, values)

    def close(self) -> None:
        self.journal.close()


def for_map(
    path: str | os.PathLike[str], fn: Callable[..., Any], mode: int, source: Iterator[Any]
) -> Resume:
    """The resume state of ``map(fn, ..., checkpoint=path)`` (``mode``: one or many inputs)."""
    digest = hashlib.blake2b(function_fingerprint(fn), digest_size=20)
    digest.update(f"map mode {mode}".encode())
    journal = open_journal(path, digest.digest(), "map", task_name(fn))
    return Resume(journal, source)


def for_pipeline(
    path: str | os.PathLike[str], fns: list[Callable[..., Any]], source: Iterator[Any]
) -> Resume:
    """The resume state of ``Pipeline(iterable, checkpoint=path)`` over stages ``fns``."""
    name = " -> ".join(task_name(fn) for fn in fns)
    journal = open_journal(path, chain_fingerprint(fns), "pipeline", name)
    return Resume(journal, source)
