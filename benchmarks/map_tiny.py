"""map over many tiny items (``x + 1``): the cost per item of each way to map in parallel.

Ours (``list(ex.map(inc, range(n)))``, automatic batching) on every backend, against
joblib, ``multiprocessing.Pool.map``, ``ProcessPoolExecutor.map`` (chunksize 1 and
1000), raw per-item Ray and Dask, and the engines' own batched maps (Ray's
``multiprocessing.Pool``, ``dask.bag``). Pools are made once and warmed up; a call's
own set-up (joblib's ``Parallel(...)``, a bag's graph) is timed, as a user pays it.
The slow contenders (per-item Ray and Dask, chunksize=1, the bag) map a smaller n, sized
so one call takes about the time budget (shown in the note).
Targets: every backend of ours at least as fast per item as joblib, and ours on
local within 2x of ``multiprocessing.Pool.map``.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any

from .engines import WORKERS, Engines
from .measure import TIMEOUT, alternate, bounded, fit, log, probe, timed
from .report import Row, Section
from .tasks import inc

__all__ = ["run"]

JOBLIB = "joblib Parallel(n_jobs=2)"
MP_POOL = "multiprocessing.Pool(2).map"
VS_JOBLIB = 1.0
VS_MP_POOL = 2.0
BAG_PARTITIONS = 4 * WORKERS


def _per_item(call: Callable[[range], Any], n: int) -> Callable[[], float]:
    items = range(n)

    def measure() -> float:
        out: list[Any] = []
        seconds = timed(lambda: out.append(call(items)))
        result = out[0]
        if len(result) != n or result[-1] != n:  # inc(n - 1) == n
            raise AssertionError(f"wrong result: {len(result)} items, last {result[-1]!r}")
        return seconds / n

    return measure


class _Peers:
    """The pools of the other ways to map, made once; :meth:`close` stops them all."""

    def __init__(self) -> None:
        self.closers: list[Callable[[], Any]] = []

    def make(
        self, what: str, factory: Callable[[], Any], close: Callable[[Any], Any]
    ) -> Any | None:
        try:
            pool = factory()
        except Exception as exc:
            log(f"map: {what} could not start, skipped: {type(exc).__name__}: {exc}")
            return None
        self.closers.append(lambda: close(pool))
        return pool

    def close(self) -> None:
        for closer in reversed(self.closers):
            try:
                closer()
            except Exception as exc:
                log(f"map: stopping a pool failed: {exc}")
        self.closers.clear()


Call = Callable[[range], Any]  # maps inc over the items it is given, returns the list


class _Found(dict[str, tuple[Call, int, int]]):
    """name -> (call, lo, hi): n is fixed when lo == hi, else sized to the time budget."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def __setitem__(self, name: str, value: Call | tuple[Call, int, int]) -> None:
        super().__setitem__(name, value if isinstance(value, tuple) else (value, self.n, self.n))


def _contenders(engines: Engines, peers: _Peers, n: int, n_slow: int) -> _Found:
    found = _Found(n)
    per_item_bounds = (min(200, n_slow), n_slow)
    for backend, ex in engines.ours.items():
        found[f"ours {backend}: ex.map"] = lambda xs, ex=ex: list(ex.map(inc, xs))
    try:
        from joblib import Parallel, delayed

        found[JOBLIB] = lambda xs: Parallel(n_jobs=WORKERS)(delayed(inc)(x) for x in xs)
        peers.closers.append(_stop_joblib)
    except ImportError as exc:
        log(f"map: joblib missing, skipped: {exc}")
    spawn = multiprocessing.get_context("spawn")  # no fork of a process running threads
    pool = peers.make(MP_POOL, lambda: spawn.Pool(WORKERS), _stop_mp_pool)
    if pool is not None:
        found[MP_POOL] = lambda xs: pool.map(inc, xs)
    from concurrent.futures import ProcessPoolExecutor

    ppe = peers.make(
        "ProcessPoolExecutor",
        lambda: ProcessPoolExecutor(WORKERS, mp_context=spawn),
        lambda p: p.shutdown(wait=True, cancel_futures=True),
    )
    if ppe is not None:
        found["ProcessPoolExecutor(2).map chunksize=1"] = (
            lambda xs: list(ppe.map(inc, xs, chunksize=1)),
            *per_item_bounds,
        )
        found["ProcessPoolExecutor(2).map chunksize=1000"] = lambda xs: list(
            ppe.map(inc, xs, chunksize=1000)
        )
    if engines.has("ray"):
        ray, remote = engines.ray, engines.ray_inc
        found["raw ray per item: ray.get([f.remote(x)...])"] = (
            lambda xs: ray.get([remote.remote(x) for x in xs]),
            *per_item_bounds,
        )
        from ray.util.multiprocessing import Pool as RayPool

        ray_pool = peers.make(
            "ray.util.multiprocessing.Pool", lambda: RayPool(WORKERS), lambda p: p.terminate()
        )
        if ray_pool is not None:
            found["ray.util.multiprocessing.Pool(2).map"] = lambda xs: ray_pool.map(inc, xs)
    if engines.has("dask"):
        client = engines.client
        found["raw dask per item: client.map+gather"] = (
            lambda xs: client.gather(client.map(inc, xs, pure=False)),
            *per_item_bounds,
        )
        import dask.bag as db

        found[f"dask.bag map, npartitions={BAG_PARTITIONS}"] = (
            lambda xs: (
                db.from_sequence(xs, npartitions=BAG_PARTITIONS).map(inc).compute(scheduler=client)
            ),
            min(2000, n),
            n,
        )
    return found


def _stop_joblib() -> None:
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True, kill_workers=True)


def _stop_mp_pool(pool: Any) -> None:
    pool.close()
    pool.join()


def run(engines: Engines, n: int, n_slow: int, repeats: int, budget: float) -> Section:
    peers = _Peers()
    try:
        found = _contenders(engines, peers, n, n_slow)
        sizes: dict[str, int] = {}
        for name, (call, lo, hi) in found.items():
            if lo == hi:
                sizes[name] = n
                try:  # warm up on a tenth (the slow ones are warmed up by their probe)
                    bounded(lambda call=call: call(range(n // 10)), TIMEOUT)
                except Exception:
                    pass  # shows in the rounds
                continue
            try:
                per_item = probe(lambda k, call=call: timed(lambda: call(range(k))), lo)
            except Exception as exc:
                log(f"map: {name} failed, skipped: {type(exc).__name__}: {exc}")
                continue
            sizes[name] = fit(per_item, budget, lo, hi)
        order = [name for name in found if name in sizes]
        results = alternate(
            {name: _per_item(found[name][0], sizes[name]) for name in order},
            repeats,
            label="map",
            warmup=0,
        )
    finally:
        peers.close()
    section = Section(
        "map", "map over tiny items: time per item", "µs/item", columns=["vs joblib", "vs mp.Pool"]
    )
    for name in order:
        section.rows.append(Row.of(name, results[name], 1e6, f"n={sizes[name]:,}"))
    for row in section.rows:
        section.ratio(row.contender, JOBLIB, "vs joblib")
        if row.contender.startswith("ours"):
            section.ratio(row.contender, MP_POOL, "vs mp.Pool")
    for backend in engines.ours:
        if backend == "serial":
            continue  # in-process: a reference, not a contender
        name = f"ours {backend}: ex.map"
        row = section.row(name)
        section.target(
            name, "ours/joblib", row.ratios.get("vs joblib") if row else None, "<=", VS_JOBLIB
        )
        if backend == "local":
            section.target(
                name,
                "ours/mp.Pool",
                row.ratios.get("vs mp.Pool") if row else None,
                "<=",
                VS_MP_POOL,
            )
    section.notes.append(
        "ratio = µs per item / the reference's; lower is better; "
        "pools made and warmed up outside the timing"
    )
    return section
