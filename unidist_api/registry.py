"""Backend registry: name -> lazy ``"module:Class"`` path, with the extra to install.

Nothing is imported until a backend is first used, so ``import unidist_api`` never
imports an engine. Third-party packages register more backends through the
entry-point group ``unidist_api.backends`` (value ``"package.module:BackendClass"``).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import BackendNotInstalledError, UnknownBackendError

if TYPE_CHECKING:
    from .backends.base import Backend

__all__ = [
    "backends",
    "register_backend",
    "unregister_backend",
    "load_backend",
    "BackendFacts",
    "backend_facts",
]

ENTRY_POINT_GROUP = "unidist_api.backends"


@dataclass(frozen=True)
class BackendFacts:
    """What configuration checks need to know of a backend, without importing its engine:
    the top-level modules it imports (``importlib.util.find_spec`` finds them without
    importing), whether it takes an address, and its option names (the class's
    ``option_names``; ``memory_budget``, common to all, not included)."""

    requires: tuple[str, ...]
    takes_address: bool
    option_names: frozenset[str]


@dataclass(frozen=True)
class _Entry:
    target: str  # "package.module:Class"
    extra: str | None  # the pip extra that installs the engine, e.g. "ray"
    facts: BackendFacts | None = None  # None: found by importing the class


# The built-in backends' facts repeat their classes' attributes, so that checking a
# configuration never imports Ray or Dask (tests/test_registry.py keeps them in step).
_registry: dict[str, _Entry] = {
    "dask": _Entry(
        "unidist_api.backends.dask:DaskBackend",
        "dask",
        BackendFacts(
            ("dask", "distributed"),
            True,
            frozenset({"connect_timeout", "threads_per_worker", "dashboard"}),
        ),
    ),
    "local": _Entry(
        "unidist_api.backends.local:LocalBackend",
        None,
        BackendFacts(("loky",), False, frozenset({"env"})),
    ),
    "ray": _Entry(
        "unidist_api.backends.ray:RayBackend",
        "ray",
        BackendFacts(("ray",), True, frozenset({"connect_timeout", "runtime_env", "dashboard"})),
    ),
    "serial": _Entry(
        "unidist_api.backends.serial:SerialBackend", None, BackendFacts((), False, frozenset())
    ),
}
_entry_points_loaded = False


def register_backend(name: str, target: str, *, extra: str | None = None) -> None:
    """Register backend ``name`` as the class at ``target`` (``"module:Class"``), lazily.

    ``extra`` names the pip extra to suggest when the module cannot be imported.
    """
    if ":" not in target:
        raise ValueError(f"target must look like 'package.module:Class', got {target!r}")
    _registry[name] = _Entry(target, extra)


def unregister_backend(name: str) -> None:
    """Forget backend ``name`` (for tests and plugins)."""
    _registry.pop(name, None)


def backends() -> list[str]:
    """Names of all registered backends, including entry-point plugins."""
    _load_entry_points()
    return sorted(_registry)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _registry.setdefault(ep.name, _Entry(ep.value, None))


def _entry(name: str) -> _Entry:
    if not isinstance(name, str):
        raise TypeError(f"a backend name must be a string, got {name!r}")
    entry = _registry.get(name)
    if entry is None:
        _load_entry_points()
        entry = _registry.get(name)
    if entry is None:
        raise UnknownBackendError(
            f"unknown backend {name!r}; known backends: {', '.join(backends())}"
        )
    return entry


def _not_installed(name: str, entry: _Entry, exc: ImportError) -> BackendNotInstalledError:
    if entry.extra is not None:
        fix = f'Install it with: pip install "unidist-api[{entry.extra}]"'
    else:
        fix = f"Install the package it needs ({exc.name or 'see the message'})"
    return BackendNotInstalledError(f"backend {name!r} cannot be used: {exc}. {fix}")


def load_backend(name: str) -> type[Backend]:
    """Import and return the backend class registered as ``name``."""
    entry = _entry(name)
    module_name, _, class_name = entry.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise _not_installed(name, entry, exc) from exc
    backend: type[Backend] = getattr(module, class_name)
    return backend


def backend_facts(name: str) -> BackendFacts:
    """The facts of backend ``name``, checking that it can be imported, without importing
    a built-in backend's engine; raises UnknownBackendError or BackendNotInstalledError as
    :func:`load_backend` would. A plugin's class is imported to learn them."""
    entry = _entry(name)
    if entry.facts is None:
        cls = load_backend(name)
        return BackendFacts((), cls.takes_address, frozenset(cls.option_names))
    for module in entry.facts.requires:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            exc = ModuleNotFoundError(f"No module named {module!r}", name=module)
            raise _not_installed(name, entry, exc)
    return entry.facts
