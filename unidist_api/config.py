"""Which backend runs the work: the configuration layers, merged into Settings.

Precedence, highest first (the contract's order):

1. ``Executor(backend=..., ...)`` arguments;
2. ``with ua.use(...)`` (context-local: each thread and asyncio task sees its own);
3. ``ua.configure(...)`` (process-wide);
4. ``UNIDIST_API_BACKEND`` / ``UNIDIST_API_ADDRESS`` / ``UNIDIST_API_WORKERS``;
5. ``[tool.unidist_api]`` in ``./pyproject.toml``, or the TOML file named by
   ``UNIDIST_API_CONFIG``;
6. ``local``.

The highest layer that names a backend chooses it. ``address``, ``workers`` and
backend options then come from the highest layer that sets them among the layers
naming that backend or no backend, so ``UNIDIST_API_WORKERS=4`` applies to whichever
backend is chosen, but a config file's ``dask`` address never leaks into ``ray``.
The environment and config file are read when the default executor is created, and
again after ``configure()`` or ``shutdown()``. Which executor is current lives in
:mod:`unidist_api.current`; nothing here knows executors.
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidOptionError

__all__ = [
    "Layer",
    "Settings",
    "resolve",
    "configure",
    "check_workers",
    "default_settings",
    "forget_default",
    "use_layer",
]

DEFAULT_BACKEND = "local"
ENV_BACKEND = "UNIDIST_API_BACKEND"
ENV_ADDRESS = "UNIDIST_API_ADDRESS"
ENV_WORKERS = "UNIDIST_API_WORKERS"
ENV_CONFIG = "UNIDIST_API_CONFIG"


@dataclass(frozen=True)
class Layer:
    """What one configuration source says; ``None`` means "not set here"."""

    source: str
    backend: str | None = None
    address: str | None = None
    workers: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    """A resolved configuration, and where each value came from (for ``unidist-api info``)."""

    backend: str
    address: str | None
    workers: int | None
    options: Mapping[str, Any]
    sources: Mapping[str, str]

    @property
    def key(self) -> tuple[str, str | None, int | None, str]:
        return (self.backend, self.address, self.workers, repr(sorted(self.options.items())))


def check_workers(value: Any, source: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidOptionError(f"{source} must be a positive integer, got {value!r}")
    return value


def resolve(top: Layer | None = None) -> Settings:
    """Merge the configuration layers under ``top`` (an explicit Executor's arguments)."""
    layers = [
        layer
        for layer in (top, use_layer.get(), _configured, *_ambient_layers())
        if layer is not None
    ]
    backend, backend_source = DEFAULT_BACKEND, "default"
    for layer in layers:
        if layer.backend is not None:
            backend, backend_source = layer.backend, layer.source
            break
    sources = {"backend": backend_source}
    address: str | None = None
    workers: int | None = None
    options: dict[str, Any] = {}
    for layer in reversed([lay for lay in layers if lay.backend in (None, backend)]):
        if layer.address is not None:
            address, sources["address"] = layer.address, layer.source
        if layer.workers is not None:
            workers, sources["workers"] = layer.workers, layer.source
        for name, value in layer.options.items():
            options[name], sources[name] = value, layer.source
    return Settings(backend, address, workers, options, sources)


# -- layer 2: ua.use ---------------------------------------------------------------------
#: The layer of the innermost ``ua.use`` block (set by :func:`unidist_api.current.use`).
use_layer: contextvars.ContextVar[Layer | None] = contextvars.ContextVar(
    "unidist_api_use_layer", default=None
)


# -- layer 3: ua.configure -------------------------------------------------------------------
_configured: Layer | None = None
_lock = threading.RLock()
_default: Settings | None = None  # resolved default, cached until configure()/shutdown()


def configure(
    backend: str | None,
    address: str | None = None,
    workers: int | None = None,
    **backend_options: Any,
) -> None:
    """Set the process-wide default backend; ``configure(None)`` clears it.

    Executors already created keep running until ``ua.shutdown()``; module functions
    use the new default from the next call on.
    """
    global _configured, _default
    check_workers(workers, "workers")
    if backend is not None:
        from .registry import load_backend

        load_backend(backend)  # fail now on an unknown or uninstalled backend
    empty = backend is None and address is None and workers is None and not backend_options
    with _lock:
        _configured = (
            None
            if empty
            else Layer("configure()", backend, address, workers, dict(backend_options))
        )
        _default = None


# -- layers 4 and 5: environment and config file ---------------------------------------------
def _ambient_layers() -> list[Layer]:
    layers = [_env_layer()]
    file_layer = _file_layer()
    if file_layer is not None:
        layers.append(file_layer)
    return layers


def _env_layer() -> Layer:
    workers_text = os.environ.get(ENV_WORKERS) or None
    workers = None
    if workers_text is not None:
        try:
            workers = int(workers_text)
        except ValueError:
            workers = -1
        if workers < 1:
            raise InvalidOptionError(
                f"the environment variable {ENV_WORKERS} must be a positive integer, "
                f"got {workers_text!r}"
            )
    return Layer(
        "environment",
        os.environ.get(ENV_BACKEND) or None,
        os.environ.get(ENV_ADDRESS) or None,
        workers,
    )


def _file_layer() -> Layer | None:
    named = os.environ.get(ENV_CONFIG)
    path = named or os.path.join(os.getcwd(), "pyproject.toml")
    if not named and not os.path.isfile(path):
        return None
    import tomllib

    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        raise InvalidOptionError(
            f"{ENV_CONFIG} names {path!r}, which does not exist; fix the path or unset it"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidOptionError(f"the config file {path!r} is not valid TOML: {exc}") from exc
    table = data.get("tool", {}).get("unidist_api")
    if table is None:
        if not named:
            return None
        table = data  # a dedicated file may hold the keys at the top level
    table = dict(table)
    source = f"config file {path}"
    return Layer(
        source,
        table.pop("backend", None),
        table.pop("address", None),
        check_workers(table.pop("workers", None), f"'workers' in {path}"),
        table,
    )


# -- the default -------------------------------------------------------------------------------
def default_settings() -> Settings:
    """The settings module functions use outside ``use()`` blocks, resolved once."""
    global _default
    with _lock:
        if _default is None:
            _default = resolve()
        return _default


def forget_default() -> None:
    """Resolve the default again on next need (after ``ua.shutdown()``)."""
    global _default
    with _lock:
        _default = None
