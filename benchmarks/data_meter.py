"""CPU and memory of one measurement: the driver and every process it started.

CPU: ``user + system`` (plus ``children_*``, the CPU of children a process reaped) of
the driver and all its descendants (Ray's raylet/GCS/workers, Dask's workers, the loky
and joblib workers), read before and after. A process that appears in between counts
with all its CPU; one that disappears loses what it used since the first reading (the
round notes how many did). The sampler's own CPU is subtracted.

Memory: a thread samples, every 20 ms, the driver and the engine's worker processes
(its *group*, see :func:`classify`): *private* memory is ``RssAnon`` (heap, arrays,
pickles: none of these processes is forked, so anonymous pages are their own) and
*shared* is ``RssShmem`` (pages of shared memory mapped: Ray's object store, memmapped
``/dev/shm`` files), both from ``/proc/<pid>/status``; the system's ``Shmem`` (all of
``/dev/shm``, mapped or not) too. Growth is over the values at the start of the round.
The exact USS (psutil ``memory_full_info``) is read only at the start and where the
caller holds all the results: it walks every page table, up to 15 ms a process once
Ray's workers map gigabytes of object store, which sampled every 20 ms would take a
third of a core from the measurement. After the round, what is still held above the
start is polled for up to a second (the workers'; the driver's after a ``gc.collect``).
"""

from __future__ import annotations

import ctypes
import gc
import threading
import time
from dataclasses import dataclass
from typing import Any

import psutil

__all__ = ["Meter", "Reading", "Tree", "classify", "as_dict", "MB"]

MB = float(1 << 20)
INTERVAL = 0.02  # seconds between samples
REFRESH = 10  # samples between two scans for new worker processes
HELD_SETTLE = 1.0  # seconds to wait for the workers to give memory back
HELD_QUIET = 2 * MB  # below this (summed) nothing counts as held
MAX_LIFE = 300.0  # a sampler nobody stopped (a hung measurement) stops by itself


def classify(proc: psutil.Process) -> str:
    """The engine a process belongs to: ray, dask, loky, joblib, or other (not a worker).

    ray: the raylet (it hosts the object store) and the ``ray::`` worker processes, not
    Ray's agents; dask: LocalCluster's worker processes (multiprocessing spawn); loky:
    loky pools (ours on local and the raw one); joblib: joblib's own loky pool.
    """
    try:
        name = proc.name()
        cmd = " ".join(proc.cmdline())
    except (psutil.Error, OSError):
        return "other"
    if "resource_tracker" in cmd:
        return "other"
    if name == "raylet":
        return "ray"
    if name.startswith("ray::") or cmd.startswith("ray::") or "default_worker.py" in cmd:
        return "other" if "Agent" in name or "Agent" in cmd else "ray"
    if "joblib.externals.loky" in cmd:
        return "joblib"
    if "loky.backend.popen_loky" in cmd:
        return "loky"
    if "spawn_main" in cmd and "--multiprocessing-fork" in cmd:
        return "dask"
    return "other"


class Tree:
    """The driver and its descendants; each process classified once."""

    def __init__(self) -> None:
        self.me = psutil.Process()
        self._kinds: dict[psutil.Process, str] = {}

    def processes(self) -> list[psutil.Process]:
        try:
            return [self.me, *self.me.children(recursive=True)]
        except psutil.Error:
            return [self.me]

    def members(
        self, group: str | None, procs: list[psutil.Process] | None = None
    ) -> list[psutil.Process]:
        """The worker processes of ``group`` (none for ``None``: serial has no workers)."""
        if group is None:
            return []
        found = []
        for proc in (procs if procs is not None else self.processes())[1:]:
            kind = self._kinds.get(proc)
            if kind is None:
                kind = self._kinds[proc] = classify(proc)
            if kind == group:
                found.append(proc)
        return found


def _cpu(proc: psutil.Process) -> float | None:
    try:
        t = proc.cpu_times()
    except (psutil.Error, OSError):
        return None
    return float(t.user + t.system + t.children_user + t.children_system)


def _status(pid: int) -> tuple[float, float] | None:
    """(RssAnon, RssShmem) in bytes, or None for a process that is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read()
    except OSError:
        return None
    anon = shmem = 0.0
    for line in text.splitlines():
        if line.startswith(b"RssAnon:"):
            anon = float(line.split()[1]) * 1024
        elif line.startswith(b"RssShmem:"):
            shmem = float(line.split()[1]) * 1024
    return anon, shmem


def _system_shmem() -> float:
    """Bytes in shared memory and tmpfs (``/dev/shm``) on the whole machine."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"Shmem:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 0.0


def _uss(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            total += float(proc.memory_full_info().uss)
        except (psutil.Error, OSError):
            pass
    return total


def trim() -> None:
    """Give the driver's free heap back to the OS, so a baseline is not padded by it."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass
class Reading:
    """One measurement's numbers; MB are 2**20 bytes, growth over the round's start."""

    wall: float = 0.0
    cpu: float = 0.0
    driver_peak_mb: float = 0.0  # private (RssAnon)
    driver_shm_peak_mb: float = 0.0  # shared memory it mapped (RssShmem)
    worker_peak_mb: float = 0.0  # private, summed over the workers
    worker_shared_peak_mb: float = 0.0  # RssShmem, summed
    shm_peak_mb: float = 0.0  # the system's Shmem (/dev/shm, mapped or not)
    driver_uss_mb: float = 0.0  # exact USS growth where the caller holds the results
    worker_uss_mb: float = 0.0
    worker_held_mb: float = 0.0  # after the round: workers' private memory still held
    driver_held_mb: float = 0.0
    shm_held_mb: float = 0.0
    sampler_cpu: float = 0.0
    samples: int = 0
    processes_new: int = 0  # appeared during the round (CPU counted whole)
    processes_gone: int = 0  # disappeared (CPU since the first reading lost)


class Meter:
    """``start()``, the work, ``stop()`` (wall and CPU), ``mark()`` at peaks, ``finish()``."""

    def __init__(self, tree: Tree, group: str | None) -> None:
        self.tree = tree
        self.group = group
        self.reading = Reading()
        self._lock = threading.Lock()
        self._running = threading.Event()
        self._thread: threading.Thread | None = None
        self._members: list[psutil.Process] = []
        self._base: dict[int, tuple[float, float]] = {}  # pid -> (anon, shmem)
        self._driver0 = (0.0, 0.0)
        self._shm0 = 0.0
        self._uss0 = (0.0, 0.0)  # driver, workers
        self._cpu0: dict[psutil.Process, float] = {}
        self._t0 = 0.0
        self._own_cpu = 0.0  # CPU seconds spent sampling (any thread)

    def start(self) -> None:
        trim()
        procs = self.tree.processes()
        self._members = self.tree.members(self.group, procs)
        self._uss0 = (_uss([self.tree.me]), _uss(self._members))
        self._base = {p.pid: m for p in self._members if (m := _status(p.pid)) is not None}
        self._driver0 = _status(self.tree.me.pid) or (0.0, 0.0)
        self._shm0 = _system_shmem()
        self._cpu0 = {p: c for p in procs if (c := _cpu(p)) is not None}
        self._running.set()
        self._thread = threading.Thread(target=self._loop, name="data-meter", daemon=True)
        self._thread.start()
        self._t0 = time.perf_counter()

    def _loop(self) -> None:
        end = time.monotonic() + MAX_LIFE
        count = 0
        while self._running.is_set() and time.monotonic() < end:
            count += 1
            self.mark(refresh=count % REFRESH == 0)
            time.sleep(INTERVAL)

    def _growth(self) -> tuple[float, float]:
        """Workers' (private, shared) growth now; a new process counts with all of it."""
        private = shared = 0.0
        for proc in self._members:
            now = _status(proc.pid)
            if now is not None:
                base = self._base.get(proc.pid, (0.0, 0.0))
                private += now[0] - base[0]
                shared += now[1] - base[1]
        return private, shared

    def mark(self, refresh: bool = False, exact: bool = False) -> None:
        """One sample now; ``exact``: also the USS (where the caller holds the results)."""
        cpu0 = time.thread_time()
        with self._lock:
            if refresh:
                known = {p.pid for p in self._members}
                self._members += [p for p in self.tree.members(self.group) if p.pid not in known]
            r = self.reading
            driver = _status(self.tree.me.pid)
            if driver is not None:
                r.driver_peak_mb = max(r.driver_peak_mb, (driver[0] - self._driver0[0]) / MB)
                r.driver_shm_peak_mb = max(
                    r.driver_shm_peak_mb, (driver[1] - self._driver0[1]) / MB
                )
            private, shared = self._growth()
            r.worker_peak_mb = max(r.worker_peak_mb, private / MB)
            r.worker_shared_peak_mb = max(r.worker_shared_peak_mb, shared / MB)
            r.shm_peak_mb = max(r.shm_peak_mb, (_system_shmem() - self._shm0) / MB)
            if exact:
                r.driver_uss_mb = (_uss([self.tree.me]) - self._uss0[0]) / MB
                r.worker_uss_mb = (_uss(self._members) - self._uss0[1]) / MB
            r.samples += 1
            self._own_cpu += time.thread_time() - cpu0

    def stop(self) -> None:
        """The end of the work: wall and CPU seconds (sampling excluded)."""
        wall = time.perf_counter() - self._t0
        procs = self.tree.processes()
        with self._lock:
            cpu1 = {p: c for p in procs if (c := _cpu(p)) is not None}
            own = self._own_cpu
        r = self.reading
        r.wall = wall
        r.cpu = sum(c - self._cpu0.get(p, 0.0) for p, c in cpu1.items()) - own
        r.sampler_cpu = own
        r.processes_new = sum(p not in self._cpu0 for p in cpu1)
        r.processes_gone = sum(p not in cpu1 for p in self._cpu0)

    def finish(self) -> Reading:
        """Stop sampling; wait (up to a second) for memory to be given back."""
        self.abort()
        self.mark(refresh=True)
        r = self.reading
        deadline = time.monotonic() + HELD_SETTLE
        while True:  # only the workers are waited for (the driver and /dev/shm: recorded)
            held = self._growth()[0]
            if held <= HELD_QUIET or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        gc.collect()  # what only a cycle kept is not held
        trim()
        driver = _status(self.tree.me.pid) or self._driver0
        r.worker_held_mb = held / MB
        r.driver_held_mb = (driver[0] - self._driver0[0]) / MB
        r.shm_held_mb = (_system_shmem() - self._shm0) / MB
        return r

    def abort(self) -> None:
        """Stop the sampler thread (also after a measurement that hung)."""
        self._running.clear()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(1.0)


def as_dict(reading: Reading) -> dict[str, Any]:
    """For the JSON file, rounded."""
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in vars(reading).items()}
