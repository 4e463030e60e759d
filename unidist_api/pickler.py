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
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

from .data import LARGE

__all__ = ["dumps"]

_pickler: Any = None  # the Pickler class, made at the first dumps (cloudpickle is deferred)
_copyreg_size = [-1]  # len(copyreg.dispatch_table) when the Pickler's table was made
_cloudpickle_code_reduce: list[Any] = []  # cloudpickle's reducer for code objects
_arrays: list[Any] = [None]  # numpy.ndarray once NumPy is imported (it has a reducer here)
_local = threading.local()  # .sent: the source lines the pickle being made carries already


def dumps(obj: Any, buffer_callback: Callable[[Any], Any] | None = None) -> bytes:
    """``cloudpickle.dumps(obj, protocol=5, buffer_callback=...)``, code kept where it lives."""
    pickler = _pickler
    if pickler is None or len(copyreg.dispatch_table) != _copyreg_size[0]:
        pickler = _make_pickler()
    if _arrays[0] is None and "numpy" in sys.modules:  # NumPy imported since: its arrays too
        pickler = _make_pickler()
    outer = getattr(_local, "sent", None)  # a reducer may pickle something itself
    _local.sent = None
    try:
        with io.BytesIO() as file:
            pickler(file, 5, buffer_callback).dump(obj)
            return file.getvalue()
    finally:
        _local.sent = outer


def _make_pickler() -> Any:
    """Our Pickler: cloudpickle's, with its own reducer for code objects.

    Its ``dispatch_table`` is a plain dict (cloudpickle's reducers over copyreg's, as
    cloudpickle's ChainMap), made again when a reducer is registered with copyreg.
    """
    global _pickler
    import cloudpickle

    table = {**copyreg.dispatch_table, **cloudpickle.Pickler._dispatch_table}
    _cloudpickle_code_reduce[:] = [table[types.CodeType]]
    table[types.CodeType] = _reduce_code
    _copyreg_size[0] = len(copyreg.dispatch_table)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        _arrays[0] = numpy.ndarray
        table[numpy.ndarray] = _reduce_array
    if _pickler is None:

        class Pickler(cloudpickle.Pickler):  # type: ignore[misc]
            pass

        _pickler = Pickler
    _pickler.dispatch_table = table
    return _pickler


def _reduce_array(array: Any) -> Any:
    """A NumPy array as NumPy pickles it, except that a large one that is not contiguous
    (a column block, a strided view) is made contiguous first: NumPy pickles such an array
    in band, so it would arrive as a writable copy, where the contract says that every
    large buffer arrives read-only (and a contiguous one travels out of band, uncopied)."""
    if array.nbytes >= LARGE and not (array.flags.c_contiguous or array.flags.f_contiguous):
        array = array.copy(order="C")
    return array.__reduce_ex__(5)


def _reduce_code(code: types.CodeType) -> Any:
    make, args = _cloudpickle_code_reduce[0](code)
    filename = code.co_filename
    args = tuple(filename if arg == "<dynamic-code>" else arg for arg in args)
    if make is not types.CodeType:  # another cloudpickle: keep its way
        return make, args
    return _load_code, (args, *_source(code))


def _source(code: types.CodeType) -> tuple[int, tuple[str, ...]]:
    """The first line number and the source lines of ``code``; none when the pickle
    carries them already (a nested function's or a comprehension's are its outer one's)."""
    filename = code.co_filename
    numbers = [line for _, _, line in code.co_lines() if line is not None]
    first, last = code.co_firstlineno, max(numbers, default=code.co_firstlineno)
    sent = _local.sent
    if sent is None:
        sent = _local.sent = {}
    spans = sent.setdefault(filename, [])
    if any(a <= first and last <= b for a, b in spans):
        return first, ()
    lines = linecache.getlines(filename)[first - 1 : last]
    if lines:
        spans.append((first, last))
    return first, tuple(lines)


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
    """Whether this process can read ``filename`` (asked once per file: a by-value class
    in a task's arguments brings its methods' code with every batch)."""
    known = _readable_files.get(filename)
    if known is None:
        try:
            with open(filename, "rb"):
                known = True
        except OSError:
            known = False
        _readable_files[filename] = known
    return known


_readable_files: dict[str, bool] = {}
