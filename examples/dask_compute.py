"""Dask collections computed by our executor: ``dask.compute(..., scheduler=ex)``.

Dask builds a task graph (``dask.delayed``, ``dask.bag``, ``dask.array``...) and hands it
to a scheduler to run. Besides its own schedulers, ``dask.compute`` accepts any
``concurrent.futures.Executor`` as ``scheduler=``: Dask then walks the graph in this
process and submits each ready task to the executor. A ``ua.Executor`` is one, so a
Dask graph runs on whichever backend is configured (the local pool, Ray, a Dask
cluster, or serial for debugging), with no Dask cluster needed for the first three.

Each task's inputs and result pass through this process (Dask's executor scheduler
works that way), so this suits graphs of coarse tasks, not huge arrays.
Dask is an optional dependency: ``pip install "unidist-api[dask]"`` (or just ``dask``).

This program names no backend; switch it with configuration alone:

    UNIDIST_API_BACKEND=serial python examples/dask_compute.py
    unidist-api run --backend ray examples/dask_compute.py
"""

import dask
import dask.bag as db

import unidist_api as ua


@dask.delayed
def load(part: int) -> list[int]:
    """A stand-in for reading one partition of a data set."""
    return [(part * 7919 + i * 104729) % 1000 for i in range(10_000)]


@dask.delayed
def summarize(values: list[int]) -> dict:
    return {"n": len(values), "sum": sum(values), "max": max(values)}


@dask.delayed
def combine(summaries: list[dict]) -> dict:
    return {
        "n": sum(s["n"] for s in summaries),
        "sum": sum(s["sum"] for s in summaries),
        "max": max(s["max"] for s in summaries),
    }


def main() -> None:
    # a graph of delayed calls: nothing runs yet
    summaries = [summarize(load(part)) for part in range(8)]
    total = combine(summaries)

    # a bag: a partitioned collection with map/filter/fold, also just a graph
    bag = db.from_sequence(range(1, 10_001), npartitions=8)
    odd_squares = bag.filter(lambda x: x % 2).map(lambda x: x * x).sum()

    with ua.Executor() as ex:
        # Dask keeps at most num_workers tasks in flight; it reads that from a private
        # ``_max_workers`` attribute of a stdlib pool, else from its config (default: the
        # CPU count). Set it to the executor's size, so every worker has work.
        with dask.config.set(num_workers=ex.workers):
            # both graphs run together, as tasks of our executor; results in argument order
            total_value, odd_squares_value = dask.compute(total, odd_squares, scheduler=ex)
        print("delayed graph:", total_value)
        print("bag: sum of odd squares up to 10000:", odd_squares_value)

        # scheduler= also works per collection, or for a block:
        # with dask.config.set(scheduler=ex): ...
        print("one partition:", summaries[3].compute(scheduler=ex))

    # the same graph on Dask's own single-threaded scheduler gives the same answer
    print("same as dask's synchronous scheduler:", total.compute(scheduler="sync") == total_value)


if __name__ == "__main__":
    main()
