# mypy: disallow-untyped-calls=False
"""The embedded cluster's scheduler, in a process of its own.

Dask's ``LocalCluster`` runs its scheduler inside the caller's process. There it holds
each task's arguments (the frames it received) until the task is released, and shares
the caller's GIL with the client's event loop and the caller's own work. Measured with
6 workers on 2 cores: a map of 64 MiB in flight grew the caller by 166-283 MB with the
scheduler inside, 45-95 MB with it outside; the first 10 results of a map came in ~130
ms against ~80; a 3-stage pipeline of 5 ms tasks took 1.6-2x as long.

:class:`SchedulerProcess` is the scheduler's entry in the cluster's spec (Dask's
``SpecCluster`` starts and closes it as it would a ``Scheduler``): it runs
:func:`main` in a new Python (``PARENT ALLOWED_FAILURES DASHBOARD`` as arguments), which
serves a ``distributed.Scheduler`` on 127.0.0.1 at a free port, writes its address on
stdout, logs warnings and errors only (on its stderr, which is the caller's), and ends
when it is closed or when its parent process is gone: a caller that is killed leaves no
scheduler behind (its workers' nannies, in the caller, go with it).

The scheduler always serves HTTP (``/health``, ``/metrics``) at a free port on
127.0.0.1; with ``dashboard`` it serves Dask's dashboard there too (bokeh). Without it,
Dask would still report that server as its ``dashboard`` service, and ``Client`` (its
repr, ``dashboard_link``) would show a dashboard URL that answers 404: the service is
renamed ``http``, so no dashboard is reported.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

from distributed.deploy.spec import ProcessInterface

__all__ = ["SchedulerProcess", "START_TIMEOUT"]

START_TIMEOUT = 60.0  # seconds for the scheduler's process to report its address
_PARENT_CHECK = 0.5  # seconds between two looks at whether the parent is still there


class SchedulerProcess(ProcessInterface):
    """A ``distributed.Scheduler`` in a child process, as a ``SpecCluster`` scheduler."""

    def __init__(self, allowed_failures: int, dashboard: bool = False, **_: Any) -> None:
        self.allowed_failures = allowed_failures
        self.dashboard = dashboard
        self.process: asyncio.subprocess.Process | None = None
        super().__init__()

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            f"from {__name__} import main; main()",
            str(os.getpid()),
            str(self.allowed_failures),
            "1" if self.dashboard else "0",
            stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), START_TIMEOUT)
        except TimeoutError:
            line = b""
        address = line.decode().strip()
        if not address.startswith("tcp://"):
            await self.close()
            raise RuntimeError(
                "dask: the embedded cluster's scheduler did not start "
                f"(its process said {address!r}; its errors are above)"
            )
        self.address = address
        await super().start()

    async def close(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        await super().close()


async def _serve(parent: int, allowed_failures: int, dashboard: bool) -> None:
    from distributed import Scheduler
    from distributed.core import Status

    scheduler = Scheduler(
        host="127.0.0.1",
        port=0,
        dashboard=dashboard,
        dashboard_address="127.0.0.1:0",
        allowed_failures=allowed_failures,
    )
    await scheduler
    if not dashboard and "dashboard" in scheduler.services:  # no dead dashboard URL
        scheduler.services["http"] = scheduler.services.pop("dashboard")
    print(scheduler.address, flush=True)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # nobody reads the pipe from now on:
    # anything printed later (code run on the scheduler) goes where its warnings go
    try:
        while os.getppid() == parent and scheduler.status not in (Status.closing, Status.closed):
            await asyncio.sleep(_PARENT_CHECK)
    finally:
        await scheduler.close()


def main() -> None:
    """The child's program (``python -c``, argv: parent pid, allowed failures, dashboard)."""
    parent, allowed_failures = int(sys.argv[1]), int(sys.argv[2])
    dashboard = sys.argv[3:4] == ["1"]
    import distributed  # noqa: F401  (sets up its loggers, at INFO: warnings only here)

    logging.getLogger("distributed").setLevel(logging.WARNING)
    asyncio.run(_serve(parent, allowed_failures, dashboard))
