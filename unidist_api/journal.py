"""Checkpoint journals: the finished items of ``map(..., checkpoint=PATH)`` and of
``Pipeline(iterable, checkpoint=PATH)``, in an SQLite database at PATH.

Each call (a function, or a pipeline's chain of stages: :mod:`.fingerprint`) has a row
in ``calls``. A run records each finished batch as one row of ``batches``: its inputs
(one pickle of the list, or for large items the list of their keys) and its results
(one pickle), so a first run pays two pickles of a list per batch, not a row per item.
A rerun, when it opens the journal, first indexes those rows into ``results``, one row
per item keyed by the call and the item's key (:func:`.fingerprint.item_key`), which it
then looks items up in. The database is in WAL mode and commits in batches
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
from .fingerprint import item_key

__all__ = ["Journal", "open_journal", "describe", "settle", "COMMIT_SECONDS"]

FORMAT = "unidist-api journal 2"
COMMIT_SECONDS = 0.25  # results are committed at least this often
_COMMIT_ROWS = 1000  # batches
_HEADER = b"SQLite format 3\x00"
_LOOKUP_CHUNK = 500  # keys per SELECT ... IN (...)

_SCHEMA = """
CREATE TABLE unidist_api_journal (name TEXT PRIMARY KEY, value TEXT);
CREATE TABLE calls (id INTEGER PRIMARY KEY, fingerprint BLOB UNIQUE, kind TEXT, name TEXT,
                    created REAL, updated REAL);
CREATE TABLE results (call INTEGER, item BLOB, value BLOB, PRIMARY KEY (call, item))
    WITHOUT ROWID;
CREATE TABLE batches (id INTEGER PRIMARY KEY, call INTEGER, count INTEGER, keyed INTEGER,
                      inputs BLOB, results BLOB);
CREATE INDEX batches_of_call ON batches (call);
"""
#: A batch's inputs are stored as their pickle while it is at most this many bytes per item,
#: else as their keys (an item's key is at most 40 bytes: fingerprint.item_key).
_INPUTS_PER_ITEM = 64


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
                "SELECT value FROM unidist_api_journal WHERE name = 'format'"
            ).fetchone()
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
        raise CheckpointError(
            f"cannot write to the checkpoint journal {path!r}: permission denied"
        ) from None
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


#: Journals of this process whose last commit runs in the background, by path: a new
#: call on the same path waits for it (the lock is released only then).
_closers: dict[str, threading.Thread] = {}
_closing_lock = threading.Lock()


class Journal:
    """One call's view of a journal: look items up, record finished ones.

    Thread-safe (a map may be run out by another thread at shutdown). Opening a new
    journal only locks the file; the database is made at the first commit, off the
    caller's thread when it can be. :meth:`close` hands the last commit to a thread, so
    the call that ends does not wait for SQLite's final checkpoint; the lock goes with
    it, and the next call on that path in this process waits for it.
    """

    def __init__(self, path: str, fingerprint: bytes, kind: str, name: str) -> None:
        self.path = path
        self._fingerprint, self._kind, self._name = fingerprint, kind, name
        self._key = os.path.realpath(path)  # in _closers
        _wait_for_close(self._key)
        self._fd = _lock(path)
        self._db: sqlite3.Connection | None = None
        self.call = 0
        #: results recorded for this call when it opened (0: nothing to look up)
        self.recorded = 0
        try:
            if _check_existing(path, self._fd):  # a rerun: what does it hold?
                db = self._connect(existed=True)
                self._index()
                self.recorded = db.execute(
                    "SELECT count(*) FROM results WHERE call = ?", (self.call,)
                ).fetchone()[0]
        except BaseException:
            self._release()
            raise
        self._lock = threading.Lock()
        self._rows: list[tuple[int, int, bytes, bytes]] = []  # batches still to commit
        self._committed = time.monotonic()
        self._timer: threading.Timer | None = None  # commits rows left waiting
        self.closed = False

    def _connect(self, existed: bool) -> sqlite3.Connection:
        """The database, opened (and made, for a new journal) with this call's row."""
        if self._db is not None:
            return self._db
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db = db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        if not existed:
            db.executescript("BEGIN;" + _SCHEMA + "COMMIT;")
            db.execute("INSERT INTO unidist_api_journal VALUES ('format', ?)", (FORMAT,))
            db.execute(
                "INSERT INTO unidist_api_journal VALUES ('created', ?)", (repr(time.time()),)
            )
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the schema in the main file
        now = time.time()
        db.execute(
            "INSERT INTO calls (fingerprint, kind, name, created, updated) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (fingerprint) DO UPDATE SET updated = ?",
            (self._fingerprint, self._kind, self._name, now, now, now),
        )
        self.call = db.execute(
            "SELECT id FROM calls WHERE fingerprint = ?", (self._fingerprint,)
        ).fetchone()[0]
        return db

    def _index(self) -> None:
        """Turn this call's recorded batches into one ``results`` row per item (a rerun)."""
        db = self._db
        assert db is not None
        rows = db.execute(
            "SELECT id, keyed, inputs, results FROM batches WHERE call = ?", (self.call,)
        ).fetchall()
        if not rows:
            return
        db.execute("BEGIN")
        try:
            for batch, keyed, inputs, results in rows:
                keys = pickle.loads(inputs)
                if not keyed:
                    keys = [item_key(item) for item in keys]
                db.executemany(
                    "INSERT OR REPLACE INTO results VALUES (?, ?, ?)",
                    [
                        (self.call, key, _dumps(value))
                        for key, value in zip(keys, pickle.loads(results), strict=True)
                    ],
                )
                db.execute("DELETE FROM batches WHERE id = ?", (batch,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def lookup(self, keys: Sequence[bytes]) -> dict[bytes, Any]:
        """The recorded results among ``keys`` (unpickled)."""
        found: dict[bytes, Any] = {}
        if not self.recorded or self._db is None:
            return found
        with self._lock:
            for start in range(0, len(keys), _LOOKUP_CHUNK):
                chunk = list(keys[start : start + _LOOKUP_CHUNK])
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT item, value FROM results WHERE call = ? AND item IN ({marks})",
                    (self.call, *chunk),
                ).fetchall()
                for item, value in rows:
                    found[item] = pickle.loads(value)
        return found

    def record(
        self, items: Sequence[Any], keys: Sequence[bytes] | None, values: Sequence[Any]
    ) -> None:
        """Record the finished ``items`` (with their ``keys`` if known) and their ``values``,
        as one batch (committed within :data:`COMMIT_SECONDS`)."""
        count = len(values)
        if not count:
            return
        if keys is None:
            inputs = _dumps(items if len(items) == count else items[:count])
            if len(inputs) > _INPUTS_PER_ITEM * count:  # large items: keep their keys only
                keys = [item_key(item) for item in items[:count]]
        if keys is not None:
            inputs = _dumps(list(keys[:count]))
        results = values if type(values) is list else list(values)
        row = (count, int(keys is not None), inputs, _dumps(results))
        with self._lock:
            if self.closed:
                return
            self._rows.append(row)
            if (
                len(self._rows) >= _COMMIT_ROWS
                or time.monotonic() - self._committed >= COMMIT_SECONDS
            ):
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
            db = self._connect(existed=False)
            call = self.call
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO batches (call, count, keyed, inputs, results) VALUES (?, ?, ?, ?, ?)",
                [(call, *row) for row in rows],
            )
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db is not None and self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise CheckpointError(
                f"cannot write to the checkpoint journal {self.path!r}: {exc}"
            ) from exc

    def close(self) -> None:
        """Commit what is left and release the journal, in a thread (see the class)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            if self._timer is not None:
                self._timer.cancel()
        if not threading.main_thread().is_alive():  # at exit (a map run out by atexit):
            self._finish()  # a thread started now might not be waited for
            return
        # not a daemon: the interpreter waits for it at exit, so the last commit is made
        thread = threading.Thread(target=self._finish, name="unidist-api journal close")
        with _closing_lock:
            _closers[self._key] = thread
        thread.start()

    def _finish(self) -> None:
        try:
            with self._lock:
                self._commit()
                if self._db is not None:
                    self._db.execute(
                        "UPDATE calls SET updated = ? WHERE id = ?", (time.time(), self.call)
                    )
        except Exception:
            logging.getLogger(__name__).warning(
                "unidist-api: the last results of a map could not be written to the "
                "checkpoint journal %r (a rerun computes them again)",
                self.path,
                exc_info=True,
            )
        finally:
            self._release()
            with _closing_lock:
                if _closers.get(self._key) is threading.current_thread():
                    del _closers[self._key]

    def _release(self) -> None:
        db = self._db
        if db is not None:
            db.close()
        os.close(self._fd)


def settle() -> None:
    """Wait until every journal this process closed has made its last commit."""
    with _closing_lock:
        threads = list(_closers.values())
    for thread in threads:
        if thread is not threading.current_thread():
            thread.join()


def _wait_for_close(path: str) -> None:
    """Wait for this process's last commit on ``path`` (a journal closed just before)."""
    with _closing_lock:
        thread = _closers.get(path)
    if thread is not None and thread is not threading.current_thread():
        thread.join()


def _dumps(value: Any) -> bytes:
    try:
        return pickle.dumps(value, protocol=5)
    except Exception:  # a class defined in __main__ or a test module, a lambda
        import cloudpickle

        return cloudpickle.dumps(value, protocol=5)  # type: ignore[no-any-return]


def open_journal(path: str | os.PathLike[str], fingerprint: bytes, kind: str, name: str) -> Journal:
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
            "SELECT value FROM unidist_api_journal WHERE name = 'created'"
        ).fetchone()
        calls = db.execute(
            "SELECT id, kind, name, created, updated, "
            "(SELECT count(*) FROM results WHERE call = calls.id) + "
            "(SELECT coalesce(sum(count), 0) FROM batches WHERE call = calls.id), "
            "(SELECT coalesce(sum(length(value)), 0) FROM results WHERE call = calls.id) + "
            "(SELECT coalesce(sum(length(results)), 0) FROM batches WHERE call = calls.id) "
            "FROM calls ORDER BY id"
        ).fetchall()
    lines = [
        f"journal: {os.path.abspath(text)}",
        f"format: {FORMAT}",
        f"size: {os.path.getsize(text)} bytes",
    ]
    if created:
        lines.append(f"created: {_when(float(created[0]))}")
    lines.append(f"calls: {len(calls)}")
    for _, kind, name, first, last, items, size in calls:
        lines.append(
            f"  {kind} {name}: {items} item(s) recorded, {size} bytes of results, "
            f"first run {_when(first)}, last run {_when(last)}"
        )
    return lines


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))
