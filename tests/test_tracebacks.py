"""Tracebacks of failing tasks as in plain Python, on every backend: the task function's
real file, line and source line (wherever it lives: a test module, a script's
``__main__``, its sibling module), the same shape everywhere (our frames and the
engine's trimmed), and the exception's own type and message. On serial, tracers
(``sys.settrace``: coverage, pdb) see the task's code in its file."""

from __future__ import annotations

import bdb
import importlib
import inspect
import linecache
import os
import re
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path

import cloudpickle
import pytest

import unidist_api as ua

ROOT = Path(__file__).resolve().parent.parent
ENGINE_PATHS = ("site-packages/distributed/", "site-packages/dask/", "site-packages/ray/", "loky/")


# --------------------------------------------------------------------------- tasks
def helper(x):
    raise KeyError(f"no item {x}")  # the line the remote traceback ends at


def boom(x):
    y = x + 1
    return helper(y)  # the line of boom's frame


class CodeError(Exception):
    def __init__(self, code):
        super().__init__(f"failed with code {code}")
        self.code = code


class PairError(Exception):
    def __init__(self, a, b):  # cannot be rebuilt from its message
        super().__init__(f"{a} and {b}")
        self.pair = (a, b)


def raise_code(code):
    raise CodeError(code)


def raise_pair(a, b):
    raise PairError(a, b)


def counted(n):
    total = 0
    for i in range(n):
        total += i
    return total


# --------------------------------------------------------------------------- helpers
def line_of(fn, text):
    """The number of the line of ``fn``'s source that contains ``text``."""
    lines, first = inspect.getsourcelines(fn)
    return first + next(i for i, line in enumerate(lines) if text in line)


def failure(future):
    with pytest.raises(BaseException) as info:
        future.result()
    return info.value


def remote_text(exc):
    cause = exc.__cause__
    assert isinstance(cause, ua.errors.RemoteTraceback), (type(cause), cause)
    return cause.tb


def frames(text):
    """``(file, line, function, source)`` of each frame of a traceback's text."""
    found = re.findall(r'  File "([^"]+)", line (\d+), in (\S+)\n(?:    (.*)\n)?', text)
    return [(f, int(n), name, src.strip()) for f, n, name, src in found]


# --------------------------------------------------------------------------- test module
def test_traceback_shows_file_line_and_source(ua_backend):
    exc = failure(ua_backend.submit(boom, 1))
    assert isinstance(exc, KeyError)
    text = "".join(traceback.format_exception(exc))
    assert f'File "{__file__}", line {line_of(boom, "return helper(y)")}, in boom' in text
    assert "    return helper(y)  # the line of boom's frame" in text
    assert f'File "{__file__}", line {line_of(helper, "raise KeyError")}, in helper' in text
    assert "<dynamic-code>" not in text


def test_traceback_shape_is_the_same_everywhere(ua_backend):
    """The remote part starts at the task's function and holds only the user's frames;
    the caller's part holds no engine frame."""
    exc = failure(ua_backend.submit(boom, 1))
    assert frames(remote_text(exc)) == [
        (
            __file__,
            line_of(boom, "return helper(y)"),
            "boom",
            "return helper(y)  # the line of boom's frame",
        ),
        (
            __file__,
            line_of(helper, "raise KeyError"),
            "helper",
            'raise KeyError(f"no item {x}")  # the line the remote traceback ends at',
        ),
    ]
    assert remote_text(exc).endswith("KeyError: 'no item 2'\n")
    caller = traceback.format_tb(exc.__traceback__)
    local = frames("".join(caller))
    assert not [f for f, *_ in local if any(p in f for p in ENGINE_PATHS)], caller
    # the caller's own frames: a backend's Future.result may add one of ours (ray)
    shape = [(Path(f).name, name) for f, _, name, _ in local if "unidist_api/backends/" not in f]
    assert shape == [
        ("test_tracebacks.py", "failure"),
        ("futures.py", "result"),
        ("_base.py", "result"),
        ("_base.py", "__get_result"),
    ], caller


def test_map_traceback_shows_the_function(ua_backend):
    with pytest.raises(KeyError) as info:
        list(ua_backend.map(boom, [1, 2, 3]))
    first = frames(remote_text(info.value))[0]
    assert first == (
        __file__,
        line_of(boom, "return helper(y)"),
        "boom",
        "return helper(y)  # the line of boom's frame",
    )


# --------------------------------------------------------------------------- messages
def test_exception_keeps_its_message_and_type(ua_backend):
    exc = failure(ua_backend.submit(raise_code, 7))
    assert type(exc) is CodeError
    assert str(exc) == "failed with code 7"
    assert exc.code == 7
    assert remote_text(exc).endswith("CodeError: failed with code 7\n")


def test_exception_that_cannot_take_its_message(ua_backend):
    exc = failure(ua_backend.submit(raise_pair, "a", "b"))
    assert type(exc) is PairError
    assert str(exc) == "a and b"
    assert exc.pair == ("a", "b")


# --------------------------------------------------------------------------- source shipped
def test_source_lines_travel_when_the_file_is_gone(ua_backend, tmp_path):
    """A worker that cannot read the file still shows the source line (shipped along)."""
    name = f"gone_{ua_backend.backend}_{os.getpid()}"
    path = tmp_path / f"{name}.py"
    path.write_text("def vanish(x):\n    y = x * 3\n    raise ValueError(f'vanished {y}')\n")
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module(name)
    finally:
        sys.path.remove(str(tmp_path))
    cloudpickle.register_pickle_by_value(module)
    try:
        linecache.getlines(str(path))  # the caller read it (as when it imported it)
        path.unlink()  # ... and now no process can
        exc = failure(ua_backend.submit(module.vanish, 2))
    finally:
        cloudpickle.unregister_pickle_by_value(module)
        sys.modules.pop(name, None)
    text = "".join(traceback.format_exception(exc))
    assert f'File "{path}", line 3, in vanish\n' in text
    assert "    raise ValueError(f'vanished {y}')\n" in text


# --------------------------------------------------------------------------- a script
SCRIPT = """
import os, traceback
import unidist_api as ua
import sibling

def crash(x):
    value = x - 1
    raise RuntimeError(f"crash {value}")

if __name__ == "__main__":
    with ua.Executor(workers=1) as ex:
        print("BACKEND", ex.backend)
        for fn in (crash, sibling.sibling_crash):
            try:
                ex.submit(fn, 5).result()
            except Exception as exc:
                print("".join(traceback.format_exception(exc)))
                print("-- 8< --")
"""

SIBLING = """
def sibling_crash(x):
    half = x / 2
    raise LookupError(f"sibling {half}")
"""


def test_script_main_and_sibling_tracebacks(ua_backend, tmp_path):
    (tmp_path / "script.py").write_text(textwrap.dedent(SCRIPT))
    (tmp_path / "sibling.py").write_text(textwrap.dedent(SIBLING))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UNIDIST_API_", "RAY_ADDRESS"))}
    env.update(
        UNIDIST_API_BACKEND=ua_backend.backend,
        PYTHONPATH=str(ROOT),
        RAY_USAGE_STATS_ENABLED="0",
    )
    done = subprocess.run(
        [sys.executable, "script.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"BACKEND {ua_backend.backend}" in done.stdout
    main, sibling = done.stdout.split("-- 8< --")[:2]
    script = str(tmp_path / "script.py")
    assert (
        f'File "{script}", line 8, in crash\n    raise RuntimeError(f"crash {{value}}")\n' in main
    )
    assert "RuntimeError: crash 4" in main
    other = str(tmp_path / "sibling.py")
    assert (
        f'File "{other}", line 4, in sibling_crash\n    raise LookupError(f"sibling {{half}}")\n'
        in sibling
    )
    assert "<dynamic-code>" not in done.stdout
    for part in (main, sibling):
        remote = part.split("The above exception was the direct cause")[0]
        assert len(frames(remote)) == 1, remote


# --------------------------------------------------------------------------- tracers on serial
def test_serial_tracer_sees_the_task_lines(ua_serial):
    """What coverage and pdb rely on: the task's frames carry its file and lines."""
    seen = set()

    def tracer(frame, event, arg):
        if frame.f_code.co_name == "counted":
            seen.add((frame.f_code.co_filename, frame.f_lineno))
            return tracer
        return None

    sys.settrace(tracer)
    try:
        assert ua_serial.submit(counted, 4).result() == 6
    finally:
        sys.settrace(None)
    body = {
        (__file__, line_of(counted, text)) for text in ("total = 0", "total += i", "return total")
    }
    assert body <= seen, seen


def test_serial_breakpoint_by_file_and_line(ua_serial):
    line = line_of(counted, "total += i")

    class Stops(bdb.Bdb):
        hits: list = []

        def user_line(self, frame):
            if self.break_here(frame):
                self.hits.append((frame.f_code.co_filename, frame.f_lineno))
            self.set_continue()

    debugger = Stops()
    debugger.set_break(__file__, line)
    try:
        debugger.runcall(lambda: ua_serial.submit(counted, 3).result())
    finally:
        debugger.clear_all_breaks()
        sys.settrace(None)
    assert (__file__, line) in Stops.hits, Stops.hits
