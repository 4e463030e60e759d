"""Starting the private local Ray, or connecting to a cluster (with its token).

Without an address (ours, or Ray's own ``RAY_ADDRESS`` environment variable when ours
is unset) the first task starts a private local Ray (``address="local"`` semantics:
never attach to a Ray someone else started) with ``num_cpus = workers`` (default
``os.cpu_count()``), no dashboard (unless the ``dashboard`` option asks for one, on
127.0.0.1: it needs ``ray[default]``), usage stats off, every process of it bound to
127.0.0.1, and we stop it again, at the latest at interpreter exit. With an address
(``"auto"``, ``"host:port"``, ``"ray://host:10001"``) we connect, and ``shutdown()``
only disconnects: we never stop a cluster we did not start.

``ray.init`` retries an unreachable address for minutes, so we first check that the
address accepts a TCP connection, then give ``ray.init`` the rest of
``connect_timeout``. A cluster started with ``ray start --head`` requires a token since
Ray 2.60, which Ray sends by itself only for ``"auto"``: we send it whenever one is
available (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``; a
cluster without authentication ignores it), and when none is, the error says so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import ray
from ray._private import ray_constants

from ...errors import BackendNotInstalledError, ClusterConnectionError
from ..base import check_listening, hash_seed

__all__ = ["start_local", "connect", "check_dashboard"]

LOOPBACK = "127.0.0.1"


def check_dashboard() -> None:
    """Raise BackendNotInstalledError unless Ray's dashboard can start (``ray[default]``)."""
    from ray._private.utils import get_dashboard_dependency_error

    missing = get_dashboard_dependency_error()
    if missing is not None:
        raise BackendNotInstalledError(
            "dashboard=True needs Ray's dashboard, which this Ray installation lacks "
            f'({missing}): pip install "ray[default]" (the same version as ray, '
            f"{ray.__version__})"
        ) from missing


def start_local(workers: int | None, dashboard: bool = False) -> tuple[str, str | None]:
    """Start the private local Ray, every process of it bound to 127.0.0.1, its worker
    processes all with one ``PYTHONHASHSEED`` (the raylet's, which they inherit).

    Returns its GCS address (``127.0.0.1:port``) and its dashboard's URL (None without).
    """
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    saved = os.environ.get("PYTHONHASHSEED")
    os.environ["PYTHONHASHSEED"] = hash_seed()  # for the processes ray.init starts
    try:
        with _loopback_only():
            context: Any = ray.init(  # a RayContext (typed as its base class)
                address="local",
                num_cpus=workers or os.cpu_count() or 1,
                include_dashboard=dashboard,
                dashboard_host=LOOPBACK,
                logging_level=logging.ERROR,
            )
        info = context.address_info
        url = context.dashboard_url if dashboard else None
        if url and "://" not in url:
            url = f"http://{url}"
        return str(info["gcs_address"]), url or None
    finally:
        if saved is None:
            del os.environ["PYTHONHASHSEED"]
        else:
            os.environ["PYTHONHASHSEED"] = saved


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Make Ray choose 127.0.0.1 as this node's address while it starts.

    Ray maps ``127.0.0.1`` given as ``_node_ip_address`` to the machine's network
    address unless clustering is disabled (its ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``
    setting, read at import), in which case it uses the loopback address; we disable
    it only while our node starts, so a later connection to a cluster is unaffected.
    """
    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def connect(address: str, timeout: float) -> None:
    """``ray.init(address)`` within ``timeout`` seconds, or ClusterConnectionError.

    Ray retries an unreachable address for minutes, so we first check that something
    listens there, then let ``ray.init`` run in a thread we stop waiting for in time.
    """
    deadline = time.monotonic() + timeout
    check_listening(
        address, timeout, "Check that the cluster runs (`ray status` on its head) and the address"
    )
    has_token = _use_available_token()
    outcome: list[BaseException | None] = []
    abandoned = threading.Event()

    def connect() -> None:
        try:
            ray.init(address=address, logging_level=logging.ERROR)
        except BaseException as exc:
            outcome.append(exc)
            return
        outcome.append(None)
        if abandoned.is_set():  # too late: the caller has given up on this connection
            ray.shutdown()

    thread = threading.Thread(target=connect, name="unidist-api-ray-connect", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    if not outcome:
        abandoned.set()
        raise ClusterConnectionError(
            f"could not connect to the Ray cluster at {address!r} within {timeout:g} s: "
            "something listens there, but it did not complete Ray's handshake. Check the "
            "address (the head's GCS port, 6379 by default) and, if the cluster uses token "
            "authentication, the token; or raise connect_timeout"
        )
    error = outcome[0]
    if error is None:
        return
    if isinstance(error, ValueError) and "ray[client]" in str(error):
        raise BackendNotInstalledError(
            f'connecting to {address!r} needs the Ray Client: pip install "ray[client]"'
        ) from error
    if _is_auth_failure(error):
        problem = (
            "refused our token"
            if has_token
            else "requires token authentication, and no token was found"
        )
        raise ClusterConnectionError(
            f"the Ray cluster at {address!r} {problem}. Provide the cluster's token "
            "(`ray get-auth-token` on the head prints it) in RAY_AUTH_TOKEN, in a file "
            "named by RAY_AUTH_TOKEN_PATH, or in ~/.ray/auth_token"
        ) from error
    hint = (
        "; it looks like a Dask scheduler address: use the dask backend for it"
        if address.startswith(("tcp://", "tls://"))
        else ""
    )
    raise ClusterConnectionError(
        f"could not connect to the Ray cluster at {address!r}: {error}{hint}. Ray takes "
        "'host:port' (the head's GCS port, 6379 by default), 'auto' or 'ray://host:10001'"
    ) from error


def _use_available_token() -> bool:
    """Send our token to the cluster when one is available; whether one is.

    Ray does this by itself only for ``address="auto"``; with an explicit address it
    connects without the token and fails with a misleading "Failed to connect" when
    the cluster requires one (``ray start --head`` does since Ray 2.60). A token sent
    to a cluster without authentication is ignored. ``RAY_AUTH_MODE``, when set, wins.
    """
    try:
        from ray._private.authentication import authentication_token_setup as setup
    except ImportError:  # a Ray without token authentication
        return False
    log = logging.getLogger(setup.__name__)
    level = log.level
    log.setLevel(logging.ERROR)  # Ray announces it with a warning
    try:
        return bool(setup.maybe_enable_token_auth_if_token_available(warn_if_disabled=False))
    finally:
        log.setLevel(level)


def _is_auth_failure(error: BaseException) -> bool:
    """Whether ``ray.init`` failed because the cluster refused us (no or a wrong token)."""
    seen: BaseException | None = error
    while seen is not None:
        if "InvalidAuthToken" in str(seen) or type(seen).__name__ == "AuthenticationError":
            return True
        seen = seen.__cause__ or seen.__context__
    return False
