"""One hash seed per executor: every worker process of an executor hashes a str alike.

So user code that buckets keys by the builtin ``hash()`` puts each key in one bucket,
whichever worker runs it (Dask's nannies give their workers one seed; local and ray
give theirs one per executor). The caller's own ``hash()`` still differs unless it set
``PYTHONHASHSEED`` itself (docs/semantics.md).
"""

from __future__ import annotations

import functools
import os
import time

import pytest


def pid_and_hash(delay: float, _: int) -> tuple[int, int]:
    time.sleep(delay)  # long enough for every worker to take some of the items
    return os.getpid(), hash("unidist-api")


@pytest.mark.ua_exclude("serial", reason="serial runs every task in the caller's process")
def test_every_worker_of_an_executor_hashes_a_str_alike(ua_backend):
    seen = set(
        ua_backend.map(
            functools.partial(pid_and_hash, 0.1),
            range(4 * ua_backend.workers),
            chunksize=1,
            timeout=120,
        )
    )
    pids = {pid for pid, _ in seen}
    hashes = {value for _, value in seen}
    assert len(pids) >= 2, f"only {len(pids)} worker process(es) ran the items"
    assert len(hashes) == 1, f"{len(pids)} workers hashed one str {len(hashes)} ways"
