"""Task options: ``ua.task(fn, retries=..., ...)`` and its decorator form.

Options are validated once, when the task is declared; each backend checks at submit
time that it can honour them and refuses clearly when it cannot (never ignores them).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, ParamSpec, TypeVar, overload

from .errors import InvalidOptionError

__all__ = ["TaskOptions", "TaskFunction", "task", "DEFAULT_OPTIONS", "unwrap"]

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """What a task asks of the backend. ``retries=N`` allows N attempts after the first."""

    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    timeout: float | None = None
    cpus: float = 1
    gpus: float = 0
    memory: int | None = None
    resources: Mapping[str, float] | None = field(default=None, hash=False)
    #: Which waiting task starts first when more wait than there are free worker slots:
    #: higher first, equal ones in submission order (docs/semantics.md, "Priority").
    priority: int = 0

    def __post_init__(self) -> None:
        _check_int("retries", self.retries, minimum=0)
        retry_on = self.retry_on
        if isinstance(retry_on, type):
            retry_on = (retry_on,)
            object.__setattr__(self, "retry_on", retry_on)
        if not isinstance(retry_on, tuple) or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in retry_on
        ):
            raise InvalidOptionError(
                f"retry_on must be an exception class or a tuple of them, got {retry_on!r}"
            )
        if self.timeout is not None:
            _check_number("timeout", self.timeout, positive=True)
        _check_number("cpus", self.cpus, positive=False)
        _check_number("gpus", self.gpus, positive=False)
        if self.memory is not None:
            _check_int("memory", self.memory, minimum=1)
        if self.resources is not None:
            if not isinstance(self.resources, Mapping):
                raise InvalidOptionError(
                    f"resources must be a mapping of name to amount, got {self.resources!r}"
                )
            for name, amount in self.resources.items():
                _check_number(f"resources[{name!r}]", amount, positive=False)
            object.__setattr__(self, "resources", dict(self.resources))
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise InvalidOptionError(
                f"priority must be an integer (higher starts first; default 0), "
                f"got {self.priority!r}"
            )

    @property
    def needs_resources(self) -> bool:
        """True when the task asks for more than one CPU's worth of a worker."""
        return self.cpus > 1 or self.gpus > 0 or self.memory is not None or bool(self.resources)


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidOptionError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_number(name: str, value: object, *, positive: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and (value > 0 if positive else value >= 0):  # type: ignore[operator]
        return
    bound = "> 0" if positive else ">= 0"
    raise InvalidOptionError(f"{name} must be a finite number {bound}, got {value!r}")


DEFAULT_OPTIONS = TaskOptions()
_OPTION_NAMES = frozenset(TaskOptions.__dataclass_fields__)


def make_options(options: Mapping[str, Any], base: TaskOptions = DEFAULT_OPTIONS) -> TaskOptions:
    """Build TaskOptions from keyword options, naming any unknown one."""
    unknown = sorted(set(options) - _OPTION_NAMES)
    if unknown:
        raise InvalidOptionError(
            f"unknown task option(s) {', '.join(unknown)}; "
            f"valid options are {', '.join(sorted(_OPTION_NAMES))}"
        )
    if not options:
        return base
    merged = {name: getattr(base, name) for name in _OPTION_NAMES}
    merged.update(options)
    return TaskOptions(**merged)


class TaskFunction(Generic[P, R]):
    """A function with task options attached; calling it calls the function directly."""

    def __init__(self, fn: Callable[P, R], options: TaskOptions) -> None:
        if not callable(fn):
            raise TypeError(f"ua.task expects a callable, got {fn!r}")
        self.__wrapped__ = fn
        self.options = options
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.__wrapped__(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<ua.task {getattr(self.__wrapped__, '__qualname__', self.__wrapped__)!r}>"


@overload
def task(fn: Callable[P, R], /, **options: Any) -> TaskFunction[P, R]: ...
@overload
def task(fn: None = None, /, **options: Any) -> Callable[[Callable[P, R]], TaskFunction[P, R]]: ...
def task(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Attach task options to ``fn`` (``ua.task(fn, retries=2)`` or ``@ua.task(retries=2)``).

    Options: ``retries=0, retry_on=(Exception,), timeout=None, cpus=1, gpus=0,
    memory=None, resources=None, priority=0``; they mean the same on every backend.
    """
    make_options(options)  # validate now, also in decorator form
    if fn is None:
        return lambda f: task(f, **options)
    if isinstance(fn, TaskFunction):
        return TaskFunction(fn.__wrapped__, make_options(options, fn.options))
    return TaskFunction(fn, make_options(options))


def unwrap(fn: Callable[..., Any]) -> tuple[Callable[..., Any], TaskOptions]:
    """The callable to ship and its options: a TaskFunction ships as itself."""
    if isinstance(fn, TaskFunction):
        return fn, fn.options
    if not callable(fn):
        raise TypeError(f"expected a callable to run as a task, got {type(fn).__name__}: {fn!r}")
    return fn, DEFAULT_OPTIONS
