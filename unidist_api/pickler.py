"""Our cloudpickle: functions shipped by value keep their file name and source lines.

cloudpickle (3.x) pickles the code of a function it ships by value with the file name
``<dynamic-code>``, so that its pickles do not depend on where the code lives. Then a
traceback on a worker shows ``File "<dynamic-code>", line 7`` with no path and no
source line, and on the serial backend ``pdb`` breakpoints by file and ``coverage``
cannot find the task's code. Our pickler keeps each code object's real
``co_filename`` (line numbers were always kept), and ships the source lines of the
code with it: a worker that cannot read the file (another machine, a notebook cell)
enters them in :mod:`linecache` when it loads the code, so traceback text shows them
as if it had read the file. A worker that can read the file reads it, as Python does.
"""

from __future__ import annotations

import copyreg
import io
import linecache
import types
from collections.abc import Callable
from typing import Any

__all__ = ["dumps"]

_pickler: Any = None  # the Pickler class, made at the first dumps (cloudpickle is deferred)


def dumps(obj: Any, buffer_callback: Callable[[Any], Any] | None = None) -> bytes:
    """``cloudpickle.dumps(obj, protocol=5, buffer_callback=...)``, code kept where it lives."""
    with io.BytesIO() as file:
        (_pickler or _make_pickler())(file, 5, buffer_callback).dump(obj)
        return file.getvalue()


def _make_pickler() -> Any:
    global _pickler
    import cloudpickle

    code_reduce = cloudpickle.Pickler.dispatch_table[types.CodeType]
    own = cloudpickle.Pickler._dispatch_table  # cloudpickle's reducers (before copyreg's)

    class Pickler(cloudpickle.Pickler):  # type: ignore[misc]
        def __init__(self, file: Any, protocol: int, buffer_callback: Any) -> None:
            # per pickle: which source lines went already (a nested function's are
            # within its outer function's); set before the C pickler reads it
            self._sent: dict[str, list[tuple[int, int]]] = {}
            table = {**copyreg.dispatch_table, **own, types.CodeType: self._reduce_code}
            self.dispatch_table = table
            super().__init__(file, protocol=protocol, buffer_callback=buffer_callback)

        def _reduce_code(self, code: types.CodeType) -> Any:
            make, args = code_reduce(code)
            filename = code.co_filename
            args = tuple(filename if arg == "<dynamic-code>" else arg for arg in args)
            if make is not types.CodeType:  # another cloudpickle: keep its way
                return make, args
            return _load_code, (args, *self._source(code))

        def _source(self, code: types.CodeType) -> tuple[int, tuple[str, ...]]:
            filename = code.co_filename
            numbers = [line for _, _, line in code.co_lines() if line is not None]
            first, last = code.co_firstlineno, max(numbers, default=code.co_firstlineno)
            sent = self._sent.setdefault(filename, [])
            if any(a <= first and last <= b for a, b in sent):
                return first, ()
            lines = linecache.getlines(filename)[first - 1 : last]
            if lines:
                sent.append((first, last))
            return first, tuple(lines)

    _pickler = Pickler
    return Pickler


def _load_code(args: tuple[Any, ...], first: int, lines: tuple[str, ...]) -> types.CodeType:
    """On load: the code object, and its source lines in linecache if the file is unreadable."""
    code = types.CodeType(*args)
    if lines:
        remember_source(code.co_filename, first, lines)
    return code


def remember_source(filename: str, first: int, lines: tuple[str, ...]) -> None:
    """Enter ``lines`` (from line ``first`` on) as the source of ``filename`` in linecache,
    unless this process can read the file itself."""
    entry = linecache.cache.get(filename)
    if entry is not None and len(entry) == 4 and entry[1] is None:
        if filename not in _remembered:
            return  # a loader's source (an IPython cell): Python's own
        known = list(entry[2])  # ours: add these lines
    elif _readable(filename):
        return  # linecache reads the file, as Python does
    else:
        known = []  # (an entry read from the file before it went would be dropped)
    end = first - 1 + len(lines)
    if len(known) < end:
        known += ["\n"] * (end - len(known))
    known[first - 1 : end] = lines
    _remembered.add(filename)
    # mtime None: linecache.checkcache keeps the entry (as for a loader's source)
    linecache.cache[filename] = (sum(map(len, known)), None, known, filename)


_remembered: set[str] = set()  # the file names whose linecache entry is ours


def _readable(filename: str) -> bool:
    try:
        with open(filename, "rb"):
            return True
    except OSError:
        return False
