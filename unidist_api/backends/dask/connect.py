# mypy: disallow-untyped-calls=False
"""Connecting to a running Dask scheduler, within a bounded time.

With ``address="tcp://host:8786"`` (or, when ours is unset, Dask's own
``scheduler-address`` setting, e.g. ``DASK_SCHEDULER_ADDRESS``) a client connects to that
scheduler, which we never stop. An unreachable address, or one where no Dask scheduler
answers (Dask's own handshake has no time limit), raises ``ClusterConnectionError``
within the ``connect_timeout`` option's seconds (default 30).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from distributed import Client

from ...errors import ClusterConnectionError
from ..base import check_listening

__all__ = ["connect", "DEFAULT_CONNECT_TIMEOUT"]

DEFAULT_CONNECT_TIMEOUT = 30.0


def connect(address: str, timeout: float) -> Client:
    """A client of the scheduler at ``address``, or ClusterConnectionError within ``timeout``."""
    deadline = time.monotonic() + timeout
    check_listening(
        address, timeout, "Check that the Dask scheduler runs (`dask scheduler`) and the address"
    )
    _probe_scheduler(address, timeout)
    try:
        return Client(address, timeout=max(1.0, deadline - time.monotonic()), set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        _close_half_made_client(exc)
        if isinstance(exc, ValueError):
            raise ClusterConnectionError(_malformed(address, exc)) from exc
        raise ClusterConnectionError(
            f"cannot reach the Dask scheduler at {address} within {timeout:g} s ({exc}); "
            "check that it is running and reachable from here, or raise the "
            "connect_timeout option"
        ) from exc


def _malformed(address: str, exc: BaseException) -> str:
    """Why ``address`` cannot be a Dask scheduler's, and what one looks like."""
    hint = ""
    if address.startswith("ray://") or address == "auto":
        hint = " (it looks like a Ray address: use the ray backend for it)"
    return (
        f"{address!r} is not a Dask scheduler address{hint} ({exc}); expected "
        "'tcp://host:port' (the scheduler's port, 8786 by default)"
    )


def _probe_scheduler(address: str, timeout: float) -> None:
    """Check, within ``timeout`` seconds, that a Dask scheduler answers at ``address``.

    ``Client(address, timeout=...)`` does not bound Dask's handshake: something that
    accepts connections but is not a Dask scheduler (another server, a port that
    swallows data) would hang it for ever. Dask's ``identity`` call, run on an event
    loop of its own in a thread and cancelled at the deadline, tells us in time.
    """
    from distributed.comm.addressing import parse_address
    from distributed.comm.core import connect as comm_connect
    from distributed.security import Security

    try:
        scheme = parse_address(address)[0]
    except ValueError as exc:
        raise ClusterConnectionError(_malformed(address, exc)) from exc
    if scheme not in ("tcp", "tls"):
        return  # inproc, ucx, ws...: left to Client

    async def identity() -> Any:
        comm = await comm_connect(
            address, timeout=timeout, **Security().get_connection_args("client")
        )
        try:
            await comm.write({"op": "identity", "n_workers": 0, "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(asyncio.run(asyncio.wait_for(identity(), timeout)))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, name="unidist-api-dask-probe", daemon=True)
    thread.start()
    thread.join(timeout + 5)  # wait_for ends it at the deadline; 5 s more for the loop to close
    answer = outcome[0] if outcome else TimeoutError()
    if isinstance(answer, dict) and answer.get("type") == "Scheduler":
        return
    if isinstance(answer, ValueError):
        raise ClusterConnectionError(_malformed(address, answer)) from answer
    if isinstance(answer, (TimeoutError, asyncio.TimeoutError)):
        problem = (
            f"something listens there but did not answer as a Dask scheduler within {timeout:g} s"
        )
    elif isinstance(answer, BaseException):
        problem = f"something listens there but is not a Dask scheduler ({answer!r})"
    else:
        kind = answer.get("type") if isinstance(answer, dict) else None
        problem = (
            f"a Dask {kind} answers there, not a scheduler"
            if kind
            else "something answers Dask's protocol there, but not as a scheduler "
            "(a worker's address?)"
        )
    error = ClusterConnectionError(
        f"cannot connect to a Dask scheduler at {address!r}: {problem}. Check the address "
        "(the scheduler's port, 8786 by default; a Ray address goes to the ray backend), "
        "or raise the connect_timeout option if the scheduler is just slow to answer"
    )
    if isinstance(answer, BaseException):
        raise error from answer
    raise error


def _close_half_made_client(exc: BaseException) -> None:
    """Close the client a failed ``Client(address)`` leaves behind, found in its traceback.

    Dask keeps it alive (in reference cycles, with its event loop thread) and closes it
    only when it is collected, at interpreter exit at the latest, when that close can no
    longer run and hangs for twice the connect timeout.
    """
    tb = exc.__traceback__
    while tb is not None:
        client = tb.tb_frame.f_locals.get("self")
        if isinstance(client, Client):
            client.close()
            return
        tb = tb.tb_next
