"""Progress bars of ``map`` and pipelines: ``progress=True`` or a dict of tqdm options.

In a terminal (or a notebook) a tqdm bar; without one (a log file, CI), a plain line
every :data:`TEXT_INTERVAL` seconds and at the end, with no escape codes
(:class:`TextProgress`). Nothing here is imported or run when ``progress=False``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["Progress", "progress_options", "progress_bar", "TextProgress", "TEXT_INTERVAL"]

#: What ``progress=`` takes: ``False``, ``True`` or a dict of tqdm options.
Progress = bool | Mapping[str, Any]

#: Seconds between two lines of the plain-text progress written where no terminal is.
TEXT_INTERVAL = 5.0


def progress_options(progress: Any) -> dict[str, Any] | None:
    """``None`` for ``progress=False``, else the tqdm options (``{}`` for ``True``).

    Raises TypeError for anything but a bool or a mapping of tqdm's own keyword arguments.
    """
    if progress is False:
        return None
    if progress is True:
        return {}
    if not isinstance(progress, Mapping):
        raise TypeError(
            "progress must be True, False or a dict of tqdm options "
            f"(e.g. {{'total': 100, 'desc': 'rows'}}), got {progress!r}"
        )
    import inspect

    from tqdm import tqdm

    known = set(inspect.signature(tqdm.__init__).parameters) - {"self", "iterable", "kwargs"}
    for key in progress:
        if not isinstance(key, str) or key not in known:
            raise TypeError(
                f"progress={dict(progress)!r}: {key!r} is not a tqdm option; "
                f"tqdm takes: {', '.join(sorted(known))}"
            )
    total = progress.get("total")
    if total is not None and (
        isinstance(total, bool) or not isinstance(total, (int, float)) or total < 0
    ):
        raise TypeError(f"progress: total must be a number >= 0 or None, got {total!r}")
    return dict(progress)


def progress_bar(
    iterables: tuple[Iterable[Any], ...],
    desc: str | None = None,
    position: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> Any:
    """A progress bar sized by ``options["total"]``, else the inputs' lengths where they
    have one; ``desc`` (a stage's label) follows ``options["desc"]``.

    On a terminal (or in a notebook) a tqdm bar; elsewhere, as in a log file, a
    :class:`TextProgress` line every few seconds, without escape codes.
    """
    settings = dict(options or {})
    if "total" not in settings:
        sizes = [len(it) for it in iterables if hasattr(it, "__len__")]  # type: ignore[arg-type]
        settings["total"] = min(sizes) if len(sizes) == len(iterables) else None
    if desc is not None:
        settings["desc"] = f"{settings['desc']} {desc}" if settings.get("desc") else desc
    settings.setdefault("unit", "item")
    if _interactive(settings.get("file")):
        from tqdm.auto import tqdm

        if position is not None:
            settings.setdefault("position", position)
        return tqdm(**settings)
    return TextProgress(**settings)


def _interactive(file: Any) -> bool:
    """Whether progress goes to a terminal or a notebook (where tqdm draws in place)."""

    stream = sys.stderr if file is None else file
    if type(stream).__module__.startswith("ipykernel"):
        return True
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class TextProgress:
    """Progress as plain lines, one at most every ``mininterval`` seconds and one at the
    end, formatted by tqdm's ``format_meter`` (ascii): for files, pipes and CI logs."""

    def __init__(
        self,
        *,
        total: float | None = None,
        desc: str | None = None,
        unit: str = "item",
        file: Any = None,
        mininterval: float | None = None,
        disable: bool = False,
        initial: float = 0,
        unit_scale: bool | float = False,
        unit_divisor: float = 1000,
        bar_format: str | None = None,
        postfix: Any = None,
        **_ignored: Any,  # drawing options (ncols, colour, position, leave, ...)
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.file = file
        self.interval = TEXT_INTERVAL if mininterval is None else mininterval
        self.disable = disable
        self.n = initial
        self.meter = {
            "unit_scale": unit_scale,
            "unit_divisor": unit_divisor,
            "bar_format": bar_format,
            "postfix": postfix,
        }
        self.start = self.last = time.monotonic()
        self.closed = False

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._write(now)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._write(time.monotonic())

    def _write(self, now: float) -> None:
        if self.disable:
            return

        from tqdm import tqdm

        line = tqdm.format_meter(
            self.n,
            self.total,
            now - self.start,
            prefix=self.desc or "",
            ascii=True,
            unit=self.unit,
            **self.meter,
        )
        file = sys.stderr if self.file is None else self.file
        file.write(line + "\n")
        file.flush()
