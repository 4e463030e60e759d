"""``checkpoint=PATH`` on ``map`` and on pipeline calls: resume without running twice.

Each task counts its calls in a file per item, so the tests see exactly which items ran
in which run. Outputs are compared with the builtin ``map`` of the same functions.
"""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import unidist_api as ua
from unidist_api.errors import CheckpointError, JournalInUseError, NotAJournalError
from unidist_api.journal import settle

REPO = Path(__file__).resolve().parent.parent


def count_call(folder: str, x: object) -> None:
    with open(os.path.join(folder, f"{x}"), "a") as file:
        file.write(".")


def calls(folder: Path) -> dict[str, int]:
    return {path.name: len(path.read_text()) for path in folder.iterdir()}


class Counted:
    """``x -> 3 * x + 1``, counting each call in ``folder``; fails on ``fail`` if that
    file exists (so a rerun can succeed)."""

    def __init__(self, folder: Path, fail: object = None) -> None:
        self.folder = str(folder)
        self.fail = fail

    def __call__(self, x: int) -> int:
        count_call(self.folder, x)
        if x == self.fail and os.path.exists(os.path.join(self.folder, "..", "failing")):
            raise ValueError(f"item {x} fails")
        return 3 * x + 1


def settled_calls(folder: Path) -> dict[str, int]:
    """The call counts once tasks started by an interrupted run have ended (they are not
    stopped: cancel only stops what has not started)."""
    seen, quiet = calls(folder), time.monotonic()
    while time.monotonic() - quiet < 0.5:
        time.sleep(0.1)
        now = calls(folder)
        if now != seen:
            seen, quiet = now, time.monotonic()
    return seen


def recorded(journal: Path) -> int:
    """How many results the journal holds (read as another program would, once the
    last commits of the calls that ended have been made)."""
    settle()
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as db:
        count: int = db.execute(
            "SELECT (SELECT count(*) FROM results) + (SELECT coalesce(sum(count), 0) FROM batches)"
        ).fetchone()[0]
    db.close()
    return count


def ran_once_where_missing(
    before: dict[str, int], after: dict[str, int], held: int, yielded: int, total: int
) -> None:
    """The rerun ran each item the journal lacked once, and nothing else: the ``yielded``
    first items (surely recorded) not at all, none twice, ``total - held`` in all."""
    ran_again = {int(x): after[x] - before.get(x, 0) for x in after}
    assert set(ran_again) == set(range(total))
    assert all(ran_again[x] == 0 for x in range(yielded))
    assert all(n in (0, 1) for n in ran_again.values())
    assert sum(ran_again.values()) == total - held


def plus_one(x: int) -> int:
    return x + 1


def test_a_map_rerun_runs_only_the_items_the_journal_lacks(
    ua_backend: ua.Executor, tmp_path: Path
) -> None:
    folder = tmp_path / "calls"
    folder.mkdir()
    fn, journal, items = Counted(folder), tmp_path / "journal", range(60)
    first = ua_backend.map(fn, items, chunksize=5, checkpoint=journal)
    taken = list(itertools.islice(first, 25))
    first.close()  # interrupted: the 25 yielded are recorded
    assert taken == [3 * x + 1 for x in range(25)]
    held = recorded(journal)  # those yielded, and the rest of their batches
    assert 25 <= held < 60
    before = settled_calls(folder)
    assert list(ua_backend.map(fn, items, checkpoint=journal)) == [3 * x + 1 for x in items]
    after = calls(folder)
    ran_once_where_missing(before, after, held, 25, 60)
    # a third run runs nothing at all, and still yields everything in order
    assert list(ua_backend.map(fn, items, checkpoint=journal)) == [3 * x + 1 for x in items]
    assert calls(folder) == after


def test_a_pipeline_rerun_runs_only_the_items_the_journal_lacks(
    ua_backend: ua.Executor, tmp_path: Path
) -> None:
    folder = tmp_path / "calls"
    folder.mkdir()
    pipeline = ua_backend.pipeline(Counted(folder), ua.stage(plus_one, workers=1))
    journal = tmp_path / "journal"
    expected = [3 * x + 2 for x in range(50)]
    first = pipeline(range(50), chunksize=5, checkpoint=journal)
    assert list(itertools.islice(first, 20)) == expected[:20]
    first.close()
    held = recorded(journal)
    assert 20 <= held < 50
    before = settled_calls(folder)
    assert list(pipeline(range(50), checkpoint=journal)) == expected
    ran_once_where_missing(before, calls(folder), held, 20, 50)


def test_a_rerun_with_new_items_interleaved_runs_only_those(
    ua_backend: ua.Executor, tmp_path: Path
) -> None:
    folder = tmp_path / "calls"
    folder.mkdir()
    fn, journal = Counted(folder), tmp_path / "journal"
    evens = list(range(0, 80, 2))
    assert list(ua_backend.map(fn, evens, checkpoint=journal)) == [3 * x + 1 for x in evens]
    before = calls(folder)
    everything = list(range(80))
    assert list(ua_backend.map(fn, everything, checkpoint=journal)) == [
        3 * x + 1 for x in everything
    ]
    after = calls(folder)
    assert {int(x): after[x] - before.get(x, 0) for x in after} == {x: x % 2 for x in everything}
    unordered = ua_backend.map(fn, everything, ordered=False, checkpoint=journal)
    assert sorted(unordered) == [3 * x + 1 for x in everything]
    assert calls(folder) == after


def test_a_failed_item_is_not_recorded_and_runs_again(
    ua_backend: ua.Executor, tmp_path: Path
) -> None:
    folder = tmp_path / "calls"
    folder.mkdir()
    (tmp_path / "failing").touch()
    fn, journal = Counted(folder, fail=7), tmp_path / "journal"
    results = []
    with pytest.raises(ValueError, match="item 7 fails"):
        for value in ua_backend.map(fn, range(12), chunksize=1, checkpoint=journal):
            results.append(value)
    assert results == [3 * x + 1 for x in range(7)]
    (tmp_path / "failing").unlink()
    before = settled_calls(folder)
    assert list(ua_backend.map(fn, range(12), checkpoint=journal)) == [3 * x + 1 for x in range(12)]
    after = calls(folder)
    ran_again = {int(x): after[x] - before.get(x, 0) for x in after}
    assert all(ran_again[x] == 0 for x in range(7))
    assert all(ran_again[x] == 1 for x in range(7, 12))


OFFSET = 1


def reads_a_global(x: int, folder: str) -> int:
    count_call(folder, x)
    return x + OFFSET


def test_a_changed_function_or_global_is_recomputed_never_served_stale(
    ua_backend: ua.Executor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal, folder = tmp_path / "journal", tmp_path / "calls"
    folder.mkdir()
    inputs = (range(5), [str(folder)] * 5)
    assert list(ua_backend.map(reads_a_global, *inputs, checkpoint=journal)) == [1, 2, 3, 4, 5]
    list(ua_backend.map(reads_a_global, *inputs, checkpoint=journal))
    assert set(calls(folder).values()) == {1}  # unchanged: served from the journal
    # A changed global makes a new call, run again (a worker that has the function
    # already may still see the old value: executors ship a function once, as the
    # stdlib's pools, whose workers never see the caller's later assignments).
    monkeypatch.setitem(reads_a_global.__globals__, "OFFSET", 10)
    list(ua_backend.map(reads_a_global, *inputs, checkpoint=journal))
    assert set(calls(folder).values()) == {2}
    edited: dict[str, object] = {}
    for body in ("x * 2", "x * 3"):  # the same name, an edited body
        exec(f"def scale(x):\n    return {body}\n", edited)
        factor = int(body[-1])
        assert list(ua_backend.map(edited["scale"], range(4), checkpoint=journal)) == [
            factor * x for x in range(4)
        ]

    def closes_over(k: int):  # noqa: ANN202
        return lambda x: x + k

    for k in (100, 200):
        assert list(ua_backend.map(closes_over(k), range(3), checkpoint=journal)) == [
            x + k for x in range(3)
        ]


def test_a_journal_in_use_by_another_map_is_refused_then_free_again(
    ua_backend: ua.Executor, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    running = ua_backend.map(plus_one, range(10), checkpoint=journal)
    with pytest.raises(JournalInUseError, match="in use by another running map"):
        ua_backend.map(plus_one, range(10), checkpoint=journal)
    assert list(running) == list(range(1, 11))
    assert list(ua_backend.map(plus_one, range(10), checkpoint=journal)) == list(range(1, 11))
    assert ua_backend.submit(plus_one, 1).result() == 2  # the executor is fine


def test_a_journal_held_by_another_process_is_refused(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            import unidist_api as ua
            with ua.use("serial"):
                it = ua.map(abs, range(5), checkpoint={str(journal)!r})
                print("holding", flush=True)
                sys.stdin.readline()
        """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        with ua.use("serial"), pytest.raises(JournalInUseError, match=str(journal)):
            ua.map(abs, range(5), checkpoint=journal)
    finally:
        holder.communicate("\n", timeout=60)
    with ua.use("serial"):
        assert list(ua.map(abs, range(-2, 2), checkpoint=journal)) == [2, 1, 0, 1]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir()}


@pytest.mark.parametrize("kind", ["text", "sqlite", "corrupt", "directory"])
def test_a_file_that_is_not_a_journal_is_refused_and_left_untouched(
    ua_backend: ua.Executor, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "data"
    if kind == "text":
        path.write_text("precious notes\n")
    elif kind == "sqlite":
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE accounts (id INTEGER, balance REAL)")
            db.execute("INSERT INTO accounts VALUES (1, 9.5)")
        db.close()
    elif kind == "corrupt":
        path.write_bytes(b"SQLite format 3\x00" + os.urandom(3000))
    else:
        path.mkdir()
    before = _snapshot(tmp_path) if kind != "directory" else {}
    with pytest.raises(NotAJournalError, match=str(path)):
        ua_backend.map(plus_one, range(3), checkpoint=path)
    with pytest.raises(NotAJournalError, match=str(path)):
        ua_backend.pipeline(plus_one)(range(3), checkpoint=path)
    if kind != "directory":
        assert _snapshot(tmp_path) == before  # the same bytes, and no -wal or -shm beside it
    assert list(ua_backend.map(plus_one, range(3))) == [1, 2, 3]


def test_bad_checkpoint_values_are_refused_at_the_call(
    ua_backend: ua.Executor, tmp_path: Path
) -> None:
    with pytest.raises(TypeError, match="checkpoint must be a file path"):
        ua_backend.map(plus_one, range(3), checkpoint=3)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="cannot open"):
        ua_backend.map(plus_one, range(3), checkpoint=tmp_path / "no" / "such" / "dir" / "j")
    assert list(ua_backend.map(plus_one, range(3))) == [1, 2, 3]


KILLED = textwrap.dedent("""
    import os, signal, sys, time
    import unidist_api as ua

    folder, journal, kill_after = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def work(x):
        with open(os.path.join(folder, str(x)), "a") as file:
            file.write(".")
        time.sleep(0.01)
        return [x, x * x, str(x)]

    if __name__ == "__main__":
        out = []
        for i, value in enumerate(ua.map(work, range(300), checkpoint=journal)):
            out.append(value)
            if i + 1 == kill_after:
                time.sleep(1.0)  # what was yielded so far is committed by now
                os.kill(os.getpid(), signal.SIGKILL)
        print(repr(out))
""")


def test_a_map_whose_driver_is_killed_resumes_and_runs_each_missing_item_once(
    ua_backend: ua.Executor, tmp_path: Path
) -> None:
    folder = tmp_path / "calls"
    folder.mkdir()
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    journal = tmp_path / "journal"
    env = dict(os.environ, UNIDIST_API_BACKEND=ua_backend.backend)

    def run(kill_after: int) -> subprocess.CompletedProcess[str]:
        process = subprocess.Popen(
            [sys.executable, str(script), str(folder), str(journal), str(kill_after)],
            env=env,
            cwd=tmp_path,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = process.communicate(timeout=240)
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # what the killed driver started
            except ProcessLookupError:
                pass
            process.wait()
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    killed = run(kill_after=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    held = recorded(journal)
    assert 120 <= held < 300
    before = calls(folder)
    resumed = run(kill_after=0)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == repr([[x, x * x, str(x)] for x in range(300)])
    ran_once_where_missing(before, calls(folder), held, 120, 300)


def test_checkpoint_info_prints_what_a_journal_holds(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    with ua.use("serial"):
        list(ua.map(plus_one, range(7), checkpoint=journal))
        list(ua.pipeline(plus_one, abs)(range(3), checkpoint=journal))
    cli = [sys.executable, "-m", "unidist_api", "checkpoint", "info"]
    shown = subprocess.run([*cli, str(journal)], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "calls: 2" in shown.stdout
    assert "map plus_one: 7 item(s) recorded" in shown.stdout
    assert "pipeline plus_one -> abs: 3 item(s) recorded" in shown.stdout
    (tmp_path / "notes").write_text("hello")
    refused = subprocess.run(
        [*cli, str(tmp_path / "notes")], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2
    assert "not a unidist-api journal" in refused.stderr


def test_the_journal_commits_within_a_fraction_of_a_second(tmp_path: Path) -> None:
    """Results are committed as the map goes, not only at its end (a kill keeps them)."""
    journal = tmp_path / "journal"
    with ua.use("serial"):
        running = ua.map(plus_one, itertools.count(), chunksize=1, checkpoint=journal)
        deadline = time.monotonic() + 1.0
        for _ in itertools.islice(running, 10):
            pass
        while time.monotonic() < deadline:
            next(running)
        assert recorded(journal) > 0
        running.close()


UNCONSUMED = textwrap.dedent("""
    import sys, time
    import unidist_api as ua

    def slow(x):
        time.sleep(0.002)
        return x * 2

    if __name__ == "__main__":
        it = ua.map(slow, range(300), checkpoint=sys.argv[1])  # run out at exit, unconsumed
""")


def test_a_map_run_out_at_exit_records_everything(ua_backend: ua.Executor, tmp_path: Path) -> None:
    """The stdlib runs an unconsumed map's input before exit; its journal keeps it all."""
    script, journal = tmp_path / "unconsumed.py", tmp_path / "journal"
    script.write_text(UNCONSUMED)
    env = dict(os.environ, UNIDIST_API_BACKEND=ua_backend.backend)
    done = subprocess.run(
        [sys.executable, str(script), str(journal)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    assert recorded(journal) == 300
