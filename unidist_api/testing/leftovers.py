"""Finding processes a test run left behind, from ``/proc`` (Linux; no extra dependency).

A process is known by ``(pid, start time)``, so a reused pid is not mistaken for an
old process. A :class:`Sampler` thread records every descendant of this process it
sees while it runs: a process that outlives its parent is re-parented elsewhere
(and is no longer a descendant) but is still found, by identity, if it was seen once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterable

__all__ = [
    "supported",
    "Sampler",
    "descendants",
    "alive",
    "describe",
    "kill",
    "allowed_by_ancestry",
]

Ident = tuple[int, int]  # (pid, start time in clock ticks since boot)


def supported() -> bool:
    return sys.platform.startswith("linux") and os.path.isdir("/proc/self")


def _stat(pid: int) -> tuple[int, int, str] | None:
    """``(ppid, start time, state)`` of ``pid``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            text = file.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = text.rpartition(")")[2].split()  # after the command name, which may hold spaces
    return int(fields[1]), int(fields[19]), fields[0]


def _table() -> dict[int, tuple[int, int]]:
    """Every live (non-zombie) process: pid -> (ppid, start time)."""
    table: dict[int, tuple[int, int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(int(name))
            if stat is not None and stat[2] not in ("Z", "X"):
                table[int(name)] = (stat[0], stat[1])
    return table


def descendants(root: int | None = None) -> dict[Ident, int]:
    """The live descendants of ``root`` (default: this process): identity -> ppid."""
    root = os.getpid() if root is None else root
    table = _table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[Ident, int] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        ppid, start = table[pid]
        found[(pid, start)] = ppid
        todo.extend(children.get(pid, []))
    return found


def alive(ident: Ident) -> bool:
    stat = _stat(ident[0])
    return stat is not None and stat[1] == ident[1] and stat[2] not in ("Z", "X")


def describe(ident: Ident) -> str:
    try:
        with open(f"/proc/{ident[0]}/cmdline", "rb") as file:
            command = file.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        command = "?"
    return f"pid {ident[0]}: {command[:200] or '?'}"


def kill(idents: Iterable[Ident]) -> None:
    for ident in idents:
        if alive(ident):
            try:
                os.kill(ident[0], signal.SIGKILL)
            except ProcessLookupError:
                pass


def allowed_by_ancestry(ident: Ident, keepers: set[Ident]) -> bool:
    """Whether a process of ``keepers`` (other than this one) is among its ancestors now."""
    me = os.getpid()
    pid = ident[0]
    for _ in range(64):
        stat = _stat(pid)
        if stat is None or stat[0] in (0, 1, me):
            return False
        parent = _stat(stat[0])
        if parent is None:
            return False
        if (stat[0], parent[1]) in keepers:
            return True
        pid = stat[0]
    return False


class Sampler:
    """Records the descendants of this process every ``every`` seconds, in a thread."""

    def __init__(self, every: float = 0.5) -> None:
        self.every = every
        self.seen: dict[Ident, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, daemon=True, name="unidist-api-leftover-sampler"
        )

    def start(self) -> Sampler:
        self.sample()
        self._thread.start()
        return self

    def sample(self) -> None:
        for ident in descendants():
            if ident not in self.seen:
                self.seen[ident] = describe(ident)

    def stop(self) -> dict[Ident, str]:
        self._stop.set()
        self._thread.join()
        self.sample()
        return self.seen

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.sample()
            except Exception:  # /proc races: try again next time
                pass


#: Helpers that live exactly as long as this process, by design: the resource trackers of
#: multiprocessing and loky (one per process, started on first use) exit when it exits.
LIFELONG = ("multiprocessing.resource_tracker import main", "loky.backend.resource_tracker")


def lifelong(ident: Ident) -> bool:
    command = describe(ident)
    return any(marker in command for marker in LIFELONG)


def wait_gone(idents: Iterable[Ident], grace: float) -> list[Ident]:
    """Those of ``idents`` still alive after up to ``grace`` seconds (lifelong helpers aside)."""
    left = [ident for ident in idents if alive(ident) and not lifelong(ident)]
    deadline = time.monotonic() + grace
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [ident for ident in left if alive(ident)]
    return left
