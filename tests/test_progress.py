"""``progress=`` on map and pipeline calls, on every backend: ``False``, ``True`` or a
dict of tqdm options; stage labels; plain text without escape codes where stderr is no
terminal (pytest's capture is none), checked options."""

from __future__ import annotations

import functools
import io
import subprocess
import sys
from pathlib import Path

import pytest

import unidist_api as ua
from unidist_api.progress import TextProgress, progress_bar

ROOT = Path(__file__).resolve().parent.parent


def square(x):
    return x * x


def inc(x):
    return x + 1


def scale(x, k):
    return k * x


def items(n):
    yield from range(n)  # no len(): the bar cannot know its total by itself


# --------------------------------------------------------------------------- map
def test_map_generator_with_a_total(ua_backend, capsys):
    assert list(ua.map(square, items(9), progress={"total": 9})) == [x * x for x in range(9)]
    err = capsys.readouterr().err
    assert "9/9" in err and "100%" in err


def test_map_generator_without_a_total_counts(ua_backend, capsys):
    assert len(list(ua.map(square, items(9), progress=True))) == 9
    err = capsys.readouterr().err
    assert "9item" in err.replace(" ", "") and "/9" not in err


def test_map_desc_and_unit(ua_backend, capsys):
    list(ua.map(square, range(5), progress={"desc": "squaring", "unit": "row"}))
    err = capsys.readouterr().err
    assert "squaring" in err and "5/5" in err and "row/s" in err


def test_map_without_progress_writes_nothing(ua_backend, capsys):
    assert list(ua.map(square, range(5))) == [0, 1, 4, 9, 16]
    assert list(ua.map(square, range(5), progress=False)) == [0, 1, 4, 9, 16]
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- pipeline
def test_pipeline_stage_names(ua_backend, capsys):
    pipe = ua.pipeline(ua.stage(inc, name="add one"), functools.partial(scale, k=3), square)
    assert list(pipe(items(6), progress={"total": 6})) == [(3 * (x + 1)) ** 2 for x in range(6)]
    err = capsys.readouterr().err
    assert "stage 1 add one" in err
    assert "stage 2 scale" in err and "partial" not in err
    assert "stage 3 square" in err
    assert err.count("6/6") == 3


def test_pipeline_desc_goes_before_each_label(ua_backend, capsys):
    list(ua.pipeline(inc, square)(range(4), progress={"desc": "rows"}))
    err = capsys.readouterr().err
    assert "rows stage 1 inc" in err and "rows stage 2 square" in err


def test_pipeline_repr_uses_labels():
    pipe = ua.pipeline(ua.stage(inc, name="add one"), functools.partial(scale, k=3))
    assert repr(pipe) == "<ua.Pipeline add one -> scale>"


# --------------------------------------------------------------------------- no terminal
def test_nested_bars_without_a_terminal_have_no_escape_codes(ua_backend, capsys):
    pipe = ua.pipeline(inc, square, inc)
    assert len(list(pipe(range(20), progress={"mininterval": 0}))) == 20
    err = capsys.readouterr().err
    assert err and "\x1b" not in err and "\r" not in err
    assert all(line.startswith("stage ") for line in err.splitlines())


def test_text_progress_writes_a_line_per_interval():
    out = io.StringIO()
    bar = TextProgress(total=4, desc="d", file=out, mininterval=3600)
    for _ in range(4):
        bar.update()
    assert out.getvalue() == ""  # within the interval: nothing yet
    bar.close()
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "4/4" in lines[0] and lines[0].startswith("d: 100%")
    out = io.StringIO()
    bar = TextProgress(total=3, file=out, mininterval=0)
    for _ in range(3):
        bar.update()
    bar.close()
    assert len(out.getvalue().splitlines()) == 4


def test_a_log_file_gets_plain_lines(tmp_path):
    # a real process whose stderr is a file, as under nohup or a batch scheduler
    script = tmp_path / "job.py"
    script.write_text(
        "import unidist_api as ua\n"
        "def inc(x):\n    return x + 1\n"
        "if __name__ == '__main__':\n"
        "    with ua.Executor('serial') as ex:\n"
        "        p = ex.pipeline(inc, inc, inc)\n"
        "        print(sum(p(range(50), progress={'total': 50})))\n"
    )
    log = tmp_path / "log.txt"
    with open(log, "w") as file:
        subprocess.run(
            [sys.executable, str(script)],
            stderr=file,
            stdout=subprocess.DEVNULL,
            check=True,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
            timeout=120,
        )
    text = log.read_text()
    assert "\x1b" not in text and "\r" not in text
    assert [line.split(":")[0] for line in text.splitlines()] == [
        "stage 1 inc",
        "stage 2 inc",
        "stage 3 inc",
    ]


def test_a_terminal_gets_tqdm(monkeypatch):
    tty = io.StringIO()
    monkeypatch.setattr(tty, "isatty", lambda: True, raising=False)
    bar = progress_bar((range(3),), "x", None, {"file": tty})
    try:
        assert not isinstance(bar, TextProgress)
        assert bar.total == 3
    finally:
        bar.close()


# --------------------------------------------------------------------------- checked
@pytest.mark.parametrize(
    "bad",
    ["yes", 1, None, {"nosuch": 1}, {"total": "many"}, {"total": -1}, {3: "x"}],
)
def test_bad_progress_is_a_type_error(ua_backend, bad):
    with pytest.raises(TypeError, match="progress"):
        ua.map(square, range(3), progress=bad)
    with pytest.raises(TypeError, match="progress"):
        ua.pipeline(inc)(range(3), progress=bad)


def test_bad_stage_name():
    with pytest.raises(TypeError, match="name"):
        ua.stage(inc, name=3)
