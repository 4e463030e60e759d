"""``local``'s pool (backends/local/pool.py): native thread pools limited per worker, and
result files a broken pool's workers write after the caller gave up on them removed.
Local only; no timings.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import unidist_api as ua
from unidist_api.backends.local.pool import THREAD_VARS, LostResults, worker_env


def thread_limits() -> dict[str, str | None]:
    return {var: os.environ.get(var) for var in THREAD_VARS}


def test_workers_get_their_share_of_the_cpus_for_native_threads(monkeypatch):
    for var in THREAD_VARS:
        monkeypatch.delenv(var, raising=False)
    share = str(max((os.cpu_count() or 1) // 2, 1))
    with ua.Executor("local", workers=2) as ex:
        assert ex.submit(thread_limits).result() == {var: share for var in THREAD_VARS}


def test_the_env_option_and_the_callers_environment_win(monkeypatch):
    monkeypatch.setenv("MKL_NUM_THREADS", "5")
    assert worker_env(2, {"OMP_NUM_THREADS": "3"})["MKL_NUM_THREADS"] == "5"
    with ua.Executor("local", workers=1, env={"OPENBLAS_NUM_THREADS": "3"}) as ex:
        seen = ex.submit(thread_limits).result()
    assert seen["OPENBLAS_NUM_THREADS"] == "3" and seen["MKL_NUM_THREADS"] == "5"


class _Pool:
    """Stands for a broken loky pool: what LostResults reads of one (its processes)."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._processes = {process.pid: process}


def test_a_result_written_after_its_pool_broke_is_removed(tmp_path):
    path = str(tmp_path / "r0")
    late = subprocess.Popen(
        [sys.executable, "-c", f"import time; time.sleep(0.5); open({path!r}, 'w').write('late')"]
    )
    removed: list[str] = []

    def remove(paths: list[str]) -> None:
        removed.extend(paths)
        for p in paths:
            if os.path.exists(p):
                os.unlink(p)

    try:
        LostResults(remove).add(_Pool(late), path)
        assert removed == [path] and not os.path.exists(path)  # at once: nothing yet
        late.wait(30)
        deadline = time.monotonic() + 10  # and again once the worker is gone
        while len(removed) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        late.kill()
        late.wait()
    assert removed == [path, path]
    assert not os.path.exists(path)
