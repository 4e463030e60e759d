"""Which backend runs the work: the configuration layers, merged into Settings.

Precedence, highest first (the contract's order):

1. ``Executor(backend=..., ...)`` arguments;
2. ``with ua.use(...)`` (context-local: each thread and asyncio task sees its own);
3. ``ua.configure(...)`` (process-wide);
4. ``UNIDIST_API_BACKEND`` / ``UNIDIST_API_ADDRESS`` / ``UNIDIST_API_WORKERS``;
5. ``[tool.unidist_api]`` in the nearest ``pyproject.toml`` holding that table, in the
   current directory or a parent (:func:`find_config_file`), or the TOML file named by
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
import re
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
    "check_settings",
    "find_config_file",
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


def _read_toml(path: str) -> dict[str, Any]:
    import tomllib

    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidOptionError(f"the config file {path} is not valid TOML: {exc}") from exc


def _tool_table(data: Mapping[str, Any]) -> Any:
    tool = data.get("tool")
    return tool.get("unidist_api") if isinstance(tool, dict) else None


def find_config_file(start: str | None = None) -> tuple[str, dict[str, Any]] | None:
    """The nearest ``pyproject.toml`` with a ``[tool.unidist_api]`` table, in ``start``
    (default: the current directory) or its parents, and that table; ``None`` if none.

    A ``pyproject.toml`` without the table is passed over, as pytest and ruff pass over
    files without their own tables; the search stops at the first that has it.
    """
    directory = os.path.abspath(start or os.getcwd())
    while True:
        path = os.path.join(directory, "pyproject.toml")
        if os.path.isfile(path):
            table = _tool_table(_read_toml(path))
            if table is not None:
                return path, table
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent


def _file_layer() -> Layer | None:
    named = os.environ.get(ENV_CONFIG)
    if named:
        path = os.path.abspath(named)
        try:
            data = _read_toml(path)
        except FileNotFoundError:
            raise InvalidOptionError(
                f"{ENV_CONFIG} names {named!r}, which does not exist; fix the path or unset it"
            ) from None
        table = _tool_table(data)
        if table is None:  # a dedicated file may hold the keys at the top level
            return _table_layer(path, data, path)
    else:
        found = find_config_file()
        if found is None:
            return None
        path, table = found
    return _table_layer(path, table, f"[tool.unidist_api] in {path}")


def _table_layer(path: str, table: Any, where: str) -> Layer:
    """The layer of a config file's table, its values checked: errors name ``where`` (the
    file, and the table in it) and the key."""
    if not isinstance(table, dict):
        raise InvalidOptionError(f"{where} must be a table, got {table!r}")
    table = dict(table)
    backend = table.pop("backend", None)
    address = table.pop("address", None)
    for key, value in (("backend", backend), ("address", address)):
        if value is not None and (not isinstance(value, str) or not value):
            raise InvalidOptionError(
                f"'{key}' in {where} must be a non-empty string, got {value!r}"
            )
    workers = check_workers(table.pop("workers", None), f"'workers' in {where}")
    if table:
        _check_file_options(where, backend, table)
    return Layer(f"config file {path}", backend, address, workers, table)


def _check_file_options(where: str, backend: str | None, options: Mapping[str, Any]) -> None:
    """Refuse keys no backend the file may configure accepts (the file's ``backend``
    if it names one, else any registered backend)."""
    from .backends.base import COMMON_OPTIONS
    from .registry import _registry, backend_facts, backends

    def accepted(name: str) -> frozenset[str]:
        try:
            return backend_facts(name).option_names
        except (ImportError, ValueError):  # not installed or unknown: its options unknown
            return frozenset()

    if backend is not None:
        names = accepted(backend) | COMMON_OPTIONS
        scope = f"the {backend!r} backend accepts"
    else:  # built-ins first: a plugin's class is imported only if they do not suffice
        builtin = [name for name, entry in list(_registry.items()) if entry.facts is not None]
        names = COMMON_OPTIONS.union(*(accepted(name) for name in builtin))
        if set(options) - names:
            names = names.union(*(accepted(name) for name in backends()))
        scope = "the backends accept"
    unknown = sorted(set(options) - names)
    if unknown:
        keys = ", ".join(repr(key) for key in unknown)
        raise InvalidOptionError(
            f"unknown key(s) {keys} in {where}; it takes backend, address, workers and "
            f"the options {scope}: {', '.join(sorted(names))}"
        )


# -- checking a configuration before running anything (unidist-api run / info) ----------------
_ADDRESS = re.compile(
    r"(?:(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://)?"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+)(?::(?P<port>[0-9]+))?/?"
)
_ADDRESS_WORDS = {"ray": ("auto", "local")}  # addresses that are words, not host:port


def check_address(backend: str, address: str, source: str) -> None:
    """Refuse an address that cannot be a cluster's: ``[scheme://]host:port`` (the port
    may be left out after a scheme), or a word the backend knows (ray's ``auto``)."""
    if address in _ADDRESS_WORDS.get(backend, ()):
        return
    match = _ADDRESS.fullmatch(address)
    port = match and match["port"]
    if (
        match is None
        or (port is None and match["scheme"] is None)
        or (port is not None and not 0 < int(port) < 65536)
    ):
        raise InvalidOptionError(
            f"malformed address {address!r} (from {source}); expected host:port or "
            "scheme://host:port, e.g. tcp://10.0.0.5:8786 for dask, 10.0.0.5:6379 or "
            "ray://10.0.0.5:10001 for ray"
        )


def check_settings(settings: Settings, flags: Mapping[str, str] | None = None) -> None:
    """Check resolved settings without starting anything: the backend is known and its
    packages are installed, the address fits the backend, the options are its own.

    ``flags`` maps a layer's source to how the user names a key there (``"--{}"`` for
    the command line: ``--address``), so a message can name the fix. An address a
    machine-local backend cannot use is refused when it comes from that layer or from
    ``Executor()``, ``use()`` or ``configure()``; one from the environment or a config
    file is meant for another backend and is ignored, as the Executor ignores it.
    """
    from .backends.base import COMMON_OPTIONS
    from .registry import backend_facts

    flags = flags or {}
    sources = settings.sources
    try:
        facts = backend_facts(settings.backend)
    except (ImportError, ValueError) as exc:
        source = sources["backend"]
        if source == "default":
            raise
        how = flags[source].format("backend") if source in flags else source
        raise type(exc)(f"{exc} (the backend comes from {how})") from exc
    check_workers(settings.workers, f"workers (from {sources.get('workers')})")
    address = settings.address
    if address is not None:
        source = sources.get("address", "")
        if not facts.takes_address:
            if source in flags or source in ("Executor()", "use()", "configure()"):
                how = flags[source].format("address") if source in flags else "address"
                raise InvalidOptionError(
                    f"the {settings.backend!r} backend runs on this machine and takes no "
                    f"address, got {how} {address!r}; drop {how}, or choose a cluster "
                    "backend such as 'ray' or 'dask' (--backend ray, --backend dask)"
                )
        else:
            how = flags[source].format("address") if source in flags else source
            check_address(settings.backend, address, how)
    unknown = sorted(set(settings.options) - facts.option_names - COMMON_OPTIONS)
    if unknown:
        where = ", ".join(f"{name!r} (from {sources[name]})" for name in unknown)
        accepted = ", ".join(sorted(facts.option_names | COMMON_OPTIONS))
        raise InvalidOptionError(
            f"unknown option(s) {where} for backend {settings.backend!r}; it accepts: {accepted}"
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
