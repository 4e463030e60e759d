"""Checkpoint journals: the finished items of ``map(..., checkpoint=PATH)`` and of
``Pipeline(iterable, checkpoint=PATH)``, in an SQLite database at PATH.

Each call (a function, or a pipeline's chain of stages: :mod:`.fingerprint`) has a row
in ``calls``; each finished item a row in ``results`` keyed by the call and the item's
key, holding the pickled result. The database is in WAL mode and commits in batches
(at most :data:`COMMIT_SECONDS` apart, and when the call ends), so a killed program
loses at most the last fraction of a second of results, which a rerun computes again.
One process at a time: the journal is locked (``flock``) while a call uses it.
A file that is not a journal is refused before anything writes to it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pickle
import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import Any

from .errors import CheckpointError, JournalInUseError, NotAJournalError

__all__ = ["Journal", "open_journal", "describe", "COMMIT_SECONDS"]

FORMAT = "unidist-api journal 1"
COMMIT_SECONDS = 0.25  # results are committed at least this often
_COMMIT_ROWS = 50_000
_HEADER = b"SQLite format 3\x00"
_LOOKUP_CHUNK = 500  # keys per SELECT ... IN (...)

_SCHEMA = """
CREATE TABLE unidist_api_journal (name TEXT PRIMARY KEY, value TEXT);
CREATE TABLE calls (id INTEGER PRIMARY KEY, fingerprint BLOB UNIQUE, kind TEXT, name TEXT,
                    created REAL, updated REAL);
CREATE TABLE results (call INTEGER, item BLOB, value BLOB, PRIMARY KEY (call, item))
    WITHOUT ROWID;
"""


def check_path(path: str | os.PathLike[str]) -> str:
    """The journal's path as a str; TypeError for anything else than a path."""
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a file path (str or os.PathLike), got {path!r}")
    text = os.fspath(path)
    if not text:
        raise ValueError("checkpoint must be a file path, got an empty string")
    return text


def _check_existing(path: str, fd: int | None = None) -> bool:
    """Whether ``path`` holds a journal already (False: no file, or an empty one); refuse
    any other file. Reads without writing: a header check, then an immutable open."""
    try:
        if fd is not None:
            header = os.pread(fd, len(_HEADER), 0)
        else:
            with open(path, "rb") as file:
                header = file.read(len(_HEADER))
    except FileNotFoundError:
        return False
    except IsADirectoryError:
        raise NotAJournalError(f"checkpoint {path!r} is a directory; give a file path") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read the checkpoint journal {path!r}: {exc}") from exc
    if not header:
        return False  # empty: nothing to lose (a run killed as it created the journal)
    if header != _HEADER:
        raise NotAJournalError(
            f"checkpoint {path!r} exists and is not a unidist-api journal (not an SQLite "
            "database); it was left untouched. Give another path, or remove the file"
        )
    try:
        uri = f"file:{_quote(path)}?mode=ro&immutable=1"
        with _closing(sqlite3.connect(uri, uri=True)) as connection:
            row = connection.execute(
                "SELECT value FROM unidist_api_journal WHERE name = 'format'").fetchone()
    except sqlite3.DatabaseError as exc:
        raise NotAJournalError(
            f"checkpoint {path!r} is an SQLite database but not a unidist-api journal, or is "
            f"corrupt ({exc}); it was left untouched. Give another path, or remove the file"
        ) from exc
    if row is None or row[0] != FORMAT:
        raise NotAJournalError(
            f"checkpoint {path!r} is a journal of another format ({row and row[0]!r}, this "
            f"version writes {FORMAT!r}); it was left untouched. Give another path"
        )
    return True


def _quote(path: str) -> str:
    from urllib.parse import quote

    return quote(os.path.abspath(path))


class _closing:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def __enter__(self) -> sqlite3.Connection:
        return self.connection

    def __exit__(self, *exc: object) -> None:
        self.connection.close()


def _lock(path: str) -> int:
    """Open and lock the journal's file for this call; JournalInUseError if another holds it.

    ``flock``, not SQLite's own POSIX locks: those belong to the whole process (a second
    call in this process would not be refused) and go when any descriptor of the file
    is closed.
    """
    if os.path.isdir(path):
        raise NotAJournalError(f"checkpoint {path!r} is a directory; give a file path")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except PermissionError:
        _check_existing(path)  # a foreign read-only file says so first
        raise CheckpointError(f"cannot write to the checkpoint journal {path!r}: "
                              "permission denied") from None
    except OSError as exc:
        raise CheckpointError(f"cannot open the checkpoint journal {path!r}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise JournalInUseError(
            f"the checkpoint journal {path!r} is in use by another running map or pipeline "
            "(in this process or another); wait for it to end, or give another path"
        ) from None
    return fd


class Journal:
    """One call's view of a journal: look items up, record finished ones.

    Thread-safe (a map may be run out by another thread at shutdown); :meth:`close`
    commits what is left and releases the lock.
    """

    def __init__(self, path: str, fingerprint: bytes, kind: str, name: str) -> None:
        self.path = path
        self._fd = _lock(path)
        try:
            existed = _check_existing(path, self._fd)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            if not existed:
                self._create()
            now = time.time()
            self._db.execute(
                "INSERT INTO calls (fingerprint, kind, name, created, updated) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (fingerprint) DO UPDATE SET updated = ?",
                (fingerprint, kind, name, now, now, now))
            self.call = self._db.execute("SELECT id FROM calls WHERE fingerprint = ?",
                                         (fingerprint,)).fetchone()[0]
            #: results recorded for this call when it opened (0: nothing to look up)
            self.recorded = self._db.execute("SELECT count(*) FROM results WHERE call = ?",
                                             (self.call,)).fetchone()[0]
        except BaseException:
            self._release()
            raise
        self._lock = threading.Lock()
        self._rows: list[tuple[int, bytes, bytes]] = []
        self._committed = time.monotonic()
        self._timer: threading.Timer | None = None  # commits rows left waiting
        self.closed = False

    def _create(self) -> None:
        self._db.executescript("BEGIN;" + _SCHEMA + "COMMIT;")
        self._db.execute("INSERT INTO unidist_api_journal VALUES ('format', ?)", (FORMAT,))
        self._db.execute("INSERT INTO unidist_api_journal VALUES ('created', ?)",
                         (repr(time.time()),))
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the schema in the main file

    def lookup(self, keys: Sequence[bytes]) -> dict[bytes, Any]:
        """The recorded results among ``keys`` (unpickled)."""
        found: dict[bytes, Any] = {}
        if not self.recorded:
            return found
        with self._lock:
            for start in range(0, len(keys), _LOOKUP_CHUNK):
                chunk = list(keys[start:start + _LOOKUP_CHUNK])
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT item, value FROM results WHERE call = ? AND item IN ({marks})",
                    (self.call, *chunk)).fetchall()
                for item, value in rows:
                    found[item] = pickle.loads(value)
        return found

    def record(self, keys: Sequence[bytes], values: Sequence[Any]) -> None:
        """Record finished items (committed within :data:`COMMIT_SECONDS`)."""
        call = self.call
        rows = [(call, key, _dumps(value)) for key, value in zip(keys, values, strict=True)]
        with self._lock:
            if self.closed:
                return
            self._rows.extend(rows)
            if (len(self._rows) >= _COMMIT_ROWS
                    or time.monotonic() - self._committed >= COMMIT_SECONDS):
                self._commit()
            elif self._timer is None:  # no more may come for a while: commit them anyway
                self._timer = threading.Timer(COMMIT_SECONDS, self._commit_late)
                self._timer.daemon = True
                self._timer.start()

    def _commit_late(self) -> None:
        with self._lock:
            self._timer = None
            if not self.closed:
                try:
                    self._commit()
                except CheckpointError:  # the caller's next record or close raises it
                    logging.getLogger(__name__).debug("late commit failed", exc_info=True)

    def _commit(self) -> None:
        rows, self._rows = self._rows, []
        self._committed = time.monotonic()
        if not rows:
            return
        try:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?)", rows)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise CheckpointError(
                f"cannot write to the checkpoint journal {self.path!r}: {exc}") from exc

    def close(self) -> None:
        """Commit what is left, and release the journal for other calls."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            if self._timer is not None:
                self._timer.cancel()
            try:
                self._commit()
                self._db.execute("UPDATE calls SET updated = ? WHERE id = ?",
                                 (time.time(), self.call))
            finally:
                self._release()

    def _release(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()
        os.close(self._fd)


def _dumps(value: Any) -> bytes:
    try:
        return pickle.dumps(value, protocol=5)
    except Exception:  # a class defined in __main__ or a test module, a lambda
        import cloudpickle

        return cloudpickle.dumps(value, protocol=5)  # type: ignore[no-any-return]


def open_journal(path: str | os.PathLike[str], fingerprint: bytes, kind: str,
                 name: str) -> Journal:
    """Open (or create) the journal at ``path`` for one call."""
    return Journal(check_path(path), fingerprint, kind, name)


def describe(path: str | os.PathLike[str]) -> list[str]:
    """What a journal holds, as lines of text (``unidist-api checkpoint info``)."""
    text = check_path(path)
    if not _check_existing(text):
        raise CheckpointError(f"no checkpoint journal at {text!r}")
    uri = f"file:{_quote(text)}?mode=ro"
    with _closing(sqlite3.connect(uri, uri=True)) as db:
        created = db.execute(
            "SELECT value FROM unidist_api_journal WHERE name = 'created'").fetchone()
        calls = db.execute(
            "SELECT calls.id, kind, name, created, updated, count(results.item), "
            "coalesce(sum(length(results.value)), 0) FROM calls "
            "LEFT JOIN results ON results.call = calls.id GROUP BY calls.id "
            "ORDER BY calls.id").fetchall()
    lines = [f"journal: {os.path.abspath(text)}", f"format: {FORMAT}",
             f"size: {os.path.getsize(text)} bytes"]
    if created:
        lines.append(f"created: {_when(float(created[0]))}")
    lines.append(f"calls: {len(calls)}")
    for _, kind, name, first, last, items, size in calls:
        lines.append(f"  {kind} {name}: {items} item(s) recorded, {size} bytes of results, "
                     f"first run {_when(first)}, last run {_when(last)}")
    return lines


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))
