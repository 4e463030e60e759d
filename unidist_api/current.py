"""The current executor: what module functions (``ua.submit``, ``ua.map``, ...) act on.

``with ua.use(...)`` makes one current for a block (context-local: each thread and
asyncio task sees its own); outside such blocks it is the module's own executor for
the default settings (:func:`unidist_api.config.default_settings`). Executors made
here are kept for later calls with the same settings and stopped by ``ua.shutdown()``
or at interpreter exit.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator
from typing import Any

from .config import Layer, Settings, check_workers, default_settings, forget_default, resolve
from .config import use_layer as _use_layer
from .executor import Executor
from .runner import Runner

__all__ = ["use", "current_executor", "shutdown"]

_current: contextvars.ContextVar[Executor | None] = contextvars.ContextVar(
    "unidist_api_current", default=None
)
_lock = threading.RLock()
_executors: dict[tuple[Any, ...], Executor] = {}  # executors the module functions created


@contextlib.contextmanager
def use(
    backend: str | Executor | None,
    address: str | None = None,
    workers: int | None = None,
    **backend_options: Any,
) -> Iterator[Executor]:
    """Make a backend the current one for this block (this thread or asyncio task only).

    ``backend`` may also be an existing :class:`Executor`. Executors made here are kept
    for later blocks with the same settings and stopped by ``ua.shutdown()`` or at exit.
    """
    if isinstance(backend, Executor):
        executor = backend
    else:
        check_workers(workers, "workers")
        executor = _managed(resolve(Layer("use()", backend, address, workers, backend_options)))
    settings = executor.settings
    layer = Layer("use()", settings.backend, settings.address, settings.workers, settings.options)
    token, layer_token = _current.set(executor), _use_layer.set(layer)
    try:
        yield executor
    finally:
        _use_layer.reset(layer_token)
        _current.reset(token)


def current_executor() -> Executor:
    """The executor module functions (``ua.submit``, ``ua.map``, ...) act on right now."""
    executor = _current.get()
    if executor is not None:
        return executor
    return _managed(default_settings())


def current_runner() -> Runner:
    """The current executor's runner (what ``ua.pipeline``'s pipelines run on)."""
    return current_executor()._runner


def _managed(settings: Settings) -> Executor:
    """The module's own executor for ``settings``, created on first need."""
    with _lock:
        executor = _executors.get(settings.key)
        if executor is None or executor.is_shutdown:
            executor = Executor._from_settings(settings)
            _executors[settings.key] = executor
        return executor


def shutdown(wait: bool = True) -> None:
    """Stop every executor the module functions and ``use()`` blocks started.

    An executor given to ``use()`` by the caller is stopped too while it is current.
    The next module call starts afresh, re-reading the environment and config file.
    """
    with _lock:
        executors = list(_executors.values())
        _executors.clear()
        forget_default()
    current = _current.get()
    if current is not None and current not in executors:
        executors.append(current)
    for executor in executors:
        executor.shutdown(wait=wait)
