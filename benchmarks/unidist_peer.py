"""modin-project's ``unidist`` as a peer, on Ray and on Dask, one fresh process per engine.

unidist picks one engine per process (``UNIDIST_BACKEND``), so each engine gets a child
(``python -m benchmarks.unidist_peer ray|dask``) that starts the engine as our shared
engines are started, then ``unidist.init()`` (which reuses an initialized Ray and the
default Dask client), and measures in alternating rounds: submit+get one task at a
time, and a per-item map (a list of remote calls, then one get), for raw engine calls,
unidist and ours on the same engine. The ratios are against the raw engine in that
same process. If unidist cannot be imported or initialized, the reason is printed and
its rows are skipped. No targets: this places us among peers.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from typing import Any

from .child import emit, run_child
from .engines import WORKERS
from .measure import alternate, fit, log, probe, timed
from .report import Row, Section
from .tasks import inc

__all__ = ["run"]

TIMEOUT = 420.0


# -- the child ----------------------------------------------------------------------------
def _per_unit(call: Callable[[], Any], n: int) -> Callable[[], float]:
    return lambda: timed(call) / n


def _sequential(call: Callable[[int], Any], n: int) -> Callable[[], float]:
    def loop() -> None:
        for i in range(n):
            call(i)

    return _per_unit(loop, n)


def _engine(
    backend: str, stops: list[Callable[[], Any]]
) -> tuple[Callable[[int], Any], Callable[[range], Any], dict[str, Any]]:
    """Start the engine as the shared engines are: (raw submit+get, raw map, ours' options)."""
    if backend == "ray":
        import ray

        ray.init(
            address="local", num_cpus=WORKERS, include_dashboard=False, logging_level=logging.ERROR
        )
        stops.append(ray.shutdown)
        remote = ray.remote(inc)

        def ray_one(i: int) -> Any:
            return ray.get(remote.remote(i))

        def ray_map(items: range) -> Any:
            return ray.get([remote.remote(x) for x in items])

        return ray_one, ray_map, {"workers": WORKERS}
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=WORKERS,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )
    stops.append(cluster.close)
    client = Client(cluster)  # the default client, which unidist.init() reuses
    stops.append(client.close)

    def dask_one(i: int) -> Any:
        return client.submit(inc, i, pure=False).result()

    def dask_map(items: range) -> Any:
        return client.gather(client.map(inc, items, pure=False))

    return dask_one, dask_map, {"address": cluster.scheduler_address, "workers": WORKERS}


def measure(backend: str, n_submit: int, n_map: int, repeats: int, budget: float) -> dict[str, Any]:
    os.environ["UNIDIST_BACKEND"] = backend
    os.environ["UNIDIST_CPUS"] = str(WORKERS)
    stops: list[Callable[[], Any]] = []
    out: dict[str, Any] = {"backend": backend, "results": {}, "unidist_error": None}
    try:
        raw_one, raw_map, options = _engine(backend, stops)
        raw_map(range(100))  # warm: workers started
        n_submit = fit(
            probe(lambda k: timed(lambda: [raw_one(i) for i in range(k)]), 10),
            budget,
            min(20, n_submit),
            n_submit,
        )
        n_map = fit(
            probe(lambda k: timed(lambda: raw_map(range(k))), 100), budget, min(100, n_map), n_map
        )
        out["n_submit"], out["n_map"] = n_submit, n_map
        items = range(n_map)
        contenders = {
            f"raw {backend}: submit+get": _sequential(raw_one, n_submit),
            f"raw {backend}: per-item map": _per_unit(lambda: raw_map(items), n_map),
        }
        try:
            import unidist_api as ua

            ours = ua.Executor(backend, **options)
            stops.append(ours.shutdown)
            ours.gather([ours.submit(inc, i) for i in range(20)])
            list(ours.map(inc, range(10_000)))
            contenders[f"ours {backend}: submit+result"] = _sequential(
                lambda i: ours.submit(inc, i).result(), n_submit
            )
            contenders[f"ours {backend}: ex.map (batched)"] = _per_unit(
                lambda: list(ours.map(inc, items)), n_map
            )
        except Exception as exc:
            out["ours_error"] = f"{type(exc).__name__}: {exc}"
            log(f"ours on {backend} did not start: {out['ours_error']}")
        try:
            import unidist

            unidist.init()
            remote_inc = unidist.remote(inc)
            unidist.get(remote_inc.remote(0))
            contenders[f"unidist on {backend}: submit+get"] = _sequential(
                lambda i: unidist.get(remote_inc.remote(i)), n_submit
            )
            contenders[f"unidist on {backend}: per-item map"] = _per_unit(
                lambda: unidist.get([remote_inc.remote(x) for x in items]), n_map
            )
            out["unidist_version"] = getattr(unidist, "__version__", "?")
        except Exception as exc:
            out["unidist_error"] = f"{type(exc).__name__}: {exc}"
            log(f"unidist on {backend} unavailable, skipped: {out['unidist_error']}")
        results = alternate(contenders, repeats, label=f"unidist peer ({backend})")
        out["results"] = {
            name: {"samples": m.samples, "error": m.error} for name, m in results.items()
        }
    finally:
        for stop in reversed(stops):
            try:
                stop()
            except Exception as exc:
                log(f"stopping failed: {exc}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.unidist_peer")
    parser.add_argument("backend", choices=["ray", "dask"])
    parser.add_argument("--n-submit", type=int, default=200)
    parser.add_argument("--n-map", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--budget",
        type=float,
        default=1.0,
        help="seconds one measurement should take, at most (sizes n)",
    )
    args = parser.parse_args()
    emit(measure(args.backend, args.n_submit, args.n_map, args.repeats, args.budget))


# -- the parent ---------------------------------------------------------------------------
ORDER = (
    "raw {b}: submit+get",
    "unidist on {b}: submit+get",
    "ours {b}: submit+result",
    "raw {b}: per-item map",
    "unidist on {b}: per-item map",
    "ours {b}: ex.map (batched)",
)


def run(backends: list[str], n_submit: int, n_map: int, repeats: int, budget: float) -> Section:
    from .measure import Measured

    section = Section(
        "unidist",
        "modin-project unidist as a peer (a fresh process per engine)",
        "µs per task/item",
        columns=["vs raw"],
    )
    for backend in backends:
        log(f"unidist peer: {backend} (fresh process)")
        try:
            got = run_child(
                "benchmarks.unidist_peer",
                [
                    backend,
                    "--n-submit",
                    str(n_submit),
                    "--n-map",
                    str(n_map),
                    "--repeats",
                    str(repeats),
                    "--budget",
                    str(budget),
                ],
                TIMEOUT,
            )
        except Exception as exc:
            log(f"unidist peer on {backend} failed, skipped: {exc}")
            section.notes.append(f"{backend}: skipped: {exc}")
            continue
        for who in ("unidist", "ours"):
            if got.get(f"{who}_error"):
                section.notes.append(f"{who} on {backend} skipped: {got[f'{who}_error']}")
        for template in ORDER:
            name = template.format(b=backend)
            if name not in got["results"]:
                continue
            result = got["results"][name]
            size = got["n_submit"] if "submit" in name else got["n_map"]
            how = f"{size} one at a time" if "submit" in name else f"n={size:,}"
            section.rows.append(
                Row.of(name, Measured(result["samples"], result["error"]), 1e6, how)
            )
            raw = f"raw {backend}: " + ("submit+get" if "submit" in name else "per-item map")
            if name != raw:
                section.ratio(name, raw, "vs raw")
    section.notes.append(
        "µs per task (submit rows) or per item (map rows); ratio against the "
        "raw engine measured in the same process"
    )
    return section


if __name__ == "__main__":
    main()
