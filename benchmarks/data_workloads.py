"""The five data-plane workloads, each written once per contender kind.

Kinds: ``ours`` (a ``ua.Executor``), ``ray`` (raw Ray: ``ray.put``, ObjectRefs passed to
tasks), ``dask`` (raw Dask: ``client.scatter``, futures passed to tasks), ``joblib``
(``Parallel(n_jobs=2)``: arrays passed as they are, joblib memmaps the large ones) and
``loky`` (the plain reusable executor: arrays pickled with each task). joblib and loky
have no futures as arguments, so a value going from one task to the next comes back to
the caller and goes out again.

Each kind's function returns what the caller got; :meth:`Workload.digest` reduces it
(in the timed part, as a caller would) and :meth:`Workload.check` compares it with
NumPy in this process, raising :class:`Wrong`.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .data_tasks import block_dot, full, pattern, slice_sum, total
from .engines import WORKERS

__all__ = ["Wrong", "Workload", "WORKLOADS", "RayKit", "MB"]

MB = 1 << 20  # sizes are in MB of 2**20 bytes
FLOAT = 8  # bytes per float64


class Wrong(AssertionError):
    """A contender's result differs from NumPy's."""

    def __init__(self, what: str) -> None:
        super().__init__(f"WRONG result: {what}")


class RayKit:
    """Raw Ray: the module and each task as a remote function."""

    def __init__(self, ray: Any) -> None:
        self.ray = ray
        self.slice_sum = ray.remote(slice_sum)
        self.full = ray.remote(full)
        self.total = ray.remote(total)
        self.block_dot = ray.remote(block_dot)


def _parallel() -> Any:
    from joblib import Parallel

    return Parallel(n_jobs=WORKERS)


def _delayed(fn: Any) -> Any:
    from joblib import delayed

    return delayed(fn)


class Workload:
    """One workload at one scale (1 = the base size, 4 = four times the bytes)."""

    key = ""
    title = ""

    def __init__(self, scale: int) -> None:
        self.scale = scale

    def describe(self) -> str:
        raise NotImplementedError

    def gathered_bytes(self) -> int:
        """Bytes of array data the caller gathers (W2 only; 0 elsewhere)."""
        return 0

    def digest(self, out: Any) -> Any:
        return out

    def check(self, out: Any, digest: Any) -> None:
        raise NotImplementedError

    def run(self, kind: str, engine: Any) -> Any:
        return getattr(self, f"run_{kind}")(engine)


class Broadcast(Workload):
    """W1: one array stored once, ``parts`` tasks each summing their slice of it."""

    key, title, parts = "W1", "broadcast", 20

    def __init__(self, scale: int) -> None:
        super().__init__(scale)
        self.arr = pattern(50 * MB * scale // FLOAT)
        self.expected = [slice_sum(self.arr, i, self.parts) for i in range(self.parts)]
        self.expected_total = float(self.arr.sum())

    def describe(self) -> str:
        return (
            f"one {self.arr.nbytes / MB:.0f} MB array stored once, {self.parts} tasks "
            f"each sum a slice"
        )

    def run_ours(self, ex: Any) -> Any:
        handle = ex.put(self.arr)
        return ex.gather([ex.submit(slice_sum, handle, i, self.parts) for i in range(self.parts)])

    def run_ray(self, kit: RayKit) -> Any:
        ref = kit.ray.put(self.arr)
        return kit.ray.get([kit.slice_sum.remote(ref, i, self.parts) for i in range(self.parts)])

    def run_dask(self, client: Any) -> Any:
        stored = client.scatter(self.arr, hash=False)  # broadcast=False, as ours
        return client.gather(
            [client.submit(slice_sum, stored, i, self.parts, pure=False) for i in range(self.parts)]
        )

    def run_joblib(self, _: Any) -> Any:
        return _parallel()(_delayed(slice_sum)(self.arr, i, self.parts) for i in range(self.parts))

    def run_loky(self, pool: Any) -> Any:
        futures = [pool.submit(slice_sum, self.arr, i, self.parts) for i in range(self.parts)]
        return [f.result() for f in futures]

    def digest(self, out: Any) -> Any:
        return sum(out)

    def check(self, out: Any, digest: Any) -> None:
        if list(out) != self.expected or digest != self.expected_total:
            raise Wrong(f"sum {digest!r}, expected {self.expected_total!r}")


class Results(Workload):
    """W2: ``count`` tasks each return a fresh array, all gathered in the caller."""

    key, title, count = "W2", "results", 20

    def __init__(self, scale: int) -> None:
        super().__init__(scale)
        self.n = 10 * MB * scale // FLOAT

    def describe(self) -> str:
        return (
            f"{self.count} tasks each return a fresh {self.n * FLOAT / MB:.0f} MB array, "
            "all gathered"
        )

    def gathered_bytes(self) -> int:
        return self.count * self.n * FLOAT

    def run_ours(self, ex: Any) -> Any:
        return ex.gather([ex.submit(full, self.n, i) for i in range(self.count)])

    def run_ray(self, kit: RayKit) -> Any:
        return kit.ray.get([kit.full.remote(self.n, i) for i in range(self.count)])

    def run_dask(self, client: Any) -> Any:
        return client.gather(
            [client.submit(full, self.n, i, pure=False) for i in range(self.count)]
        )

    def run_joblib(self, _: Any) -> Any:
        return _parallel()(_delayed(full)(self.n, i) for i in range(self.count))

    def run_loky(self, pool: Any) -> Any:
        futures = [pool.submit(full, self.n, i) for i in range(self.count)]
        return [f.result() for f in futures]

    def digest(self, out: Any) -> Any:
        return [float(a.sum()) for a in out]  # touches every page

    def check(self, out: Any, digest: Any) -> None:
        if len(out) != self.count:
            raise Wrong(f"{len(out)} results, expected {self.count}")
        for i, (a, s) in enumerate(zip(out, digest, strict=True)):
            if not (
                isinstance(a, np.ndarray)
                and a.dtype == np.float64
                and a.shape == (self.n,)
                and s == float(i * self.n)
                and bool((a == i).all())
            ):
                raise Wrong(f"result {i} is not np.full({self.n}, {i}.0)")


class Chain(Workload):
    """W3: task A makes an array, task B (given A's future) sums it; ``pairs`` pairs."""

    key, title, pairs = "W3", "chain", 5

    def __init__(self, scale: int) -> None:
        super().__init__(scale)
        self.n = 50 * MB * scale // FLOAT
        self.expected = [float((k + 1) * self.n) for k in range(self.pairs)]

    def describe(self) -> str:
        return (
            f"{self.pairs} pairs: A makes a {self.n * FLOAT / MB:.0f} MB array, B gets "
            "A's future and sums it"
        )

    def run_ours(self, ex: Any) -> Any:
        firsts = [ex.submit(full, self.n, k + 1) for k in range(self.pairs)]
        return ex.gather([ex.submit(total, a) for a in firsts])

    def run_ray(self, kit: RayKit) -> Any:
        firsts = [kit.full.remote(self.n, k + 1) for k in range(self.pairs)]
        return kit.ray.get([kit.total.remote(a) for a in firsts])

    def run_dask(self, client: Any) -> Any:
        firsts = [client.submit(full, self.n, k + 1, pure=False) for k in range(self.pairs)]
        return client.gather([client.submit(total, a, pure=False) for a in firsts])

    def run_joblib(self, _: Any) -> Any:
        arrays = _parallel()(_delayed(full)(self.n, k + 1) for k in range(self.pairs))
        return _parallel()(_delayed(total)(a) for a in arrays)

    def run_loky(self, pool: Any) -> Any:
        arrays = [f.result() for f in [pool.submit(full, self.n, k + 1) for k in range(self.pairs)]]
        return [f.result() for f in [pool.submit(total, a) for a in arrays]]

    def check(self, out: Any, digest: Any) -> None:
        if list(out) != self.expected:
            raise Wrong(f"sums {list(out)[:3]}..., expected {self.expected[:3]}...")


class Matmul(Workload):
    """W4: C = A @ B in a grid x grid of blocks, each block of A and B stored once."""

    key, title, grid = "W4", "block matmul", 4

    def __init__(self, scale: int) -> None:
        super().__init__(scale)
        side = 1536 * max(1, round(scale**0.5))  # 4x the bytes: twice the side
        self.side, self.block = side, side // self.grid
        rng = np.random.default_rng(20240)
        self.a = rng.standard_normal((side, side))
        self.b = rng.standard_normal((side, side))
        self.expected = self.a @ self.b
        b, g = self.block, self.grid
        self.a_blocks = [
            [
                np.ascontiguousarray(self.a[i * b : (i + 1) * b, k * b : (k + 1) * b])
                for k in range(g)
            ]
            for i in range(g)
        ]
        self.b_blocks = [
            [
                np.ascontiguousarray(self.b[k * b : (k + 1) * b, j * b : (j + 1) * b])
                for j in range(g)
            ]
            for k in range(g)
        ]

    def describe(self) -> str:
        b = self.block
        return (
            f"{self.side}x{self.side} in {self.grid}x{self.grid} blocks of {b}x{b} "
            f"({b * b * FLOAT / 1e6:.2f} MB), one task per C block"
        )

    def _tasks(self, store: Any, submit: Any) -> list[Any]:
        g = self.grid
        a = [[store(x) for x in row] for row in self.a_blocks]
        b = [[store(x) for x in row] for row in self.b_blocks]
        return [submit(*a[i], *(b[k][j] for k in range(g))) for i in range(g) for j in range(g)]

    def run_ours(self, ex: Any) -> Any:
        return ex.gather(self._tasks(ex.put, functools.partial(ex.submit, block_dot)))

    def run_ray(self, kit: RayKit) -> Any:
        return kit.ray.get(self._tasks(kit.ray.put, kit.block_dot.remote))

    def run_dask(self, client: Any) -> Any:
        return client.gather(
            self._tasks(
                lambda x: client.scatter(x, hash=False),
                lambda *blocks: client.submit(block_dot, *blocks, pure=False),
            )
        )

    def run_joblib(self, _: Any) -> Any:
        return _parallel()(self._tasks(lambda x: x, _delayed(block_dot)))

    def run_loky(self, pool: Any) -> Any:
        return [
            f.result() for f in self._tasks(lambda x: x, functools.partial(pool.submit, block_dot))
        ]

    def digest(self, out: Any) -> Any:
        g = self.grid
        return np.block([[out[i * g + j] for j in range(g)] for i in range(g)])

    def check(self, out: Any, digest: Any) -> None:
        if digest.shape != self.expected.shape or not np.allclose(digest, self.expected):
            raise Wrong("C differs from A @ B")


class Stages(Workload):
    """W5: ``items`` through two stages: make an array from the item, reduce it."""

    key, title, items = "W5", "pipeline", 20

    def __init__(self, scale: int) -> None:
        super().__init__(scale)
        self.n = 5 * MB * scale // FLOAT
        self.make = functools.partial(full, self.n)
        self.expected = [total(self.make(i)) for i in range(self.items)]  # plain Python

    def describe(self) -> str:
        return (
            f"{self.items} items, stage 1 makes a {self.n * FLOAT / MB:.0f} MB array, "
            "stage 2 sums it"
        )

    def run_ours(self, ex: Any) -> Any:
        return list(ex.pipeline(self.make, total)(range(self.items)))

    def run_ray(self, kit: RayKit) -> Any:
        return kit.ray.get(
            [kit.total.remote(kit.full.remote(self.n, i)) for i in range(self.items)]
        )

    def run_dask(self, client: Any) -> Any:
        made = [client.submit(full, self.n, i, pure=False) for i in range(self.items)]
        return client.gather([client.submit(total, m, pure=False) for m in made])

    def run_joblib(self, _: Any) -> Any:
        arrays = _parallel()(_delayed(self.make)(i) for i in range(self.items))
        return _parallel()(_delayed(total)(a) for a in arrays)

    def run_loky(self, pool: Any) -> Any:
        arrays = list(pool.map(self.make, range(self.items)))
        return list(pool.map(total, arrays))

    def check(self, out: Any, digest: Any) -> None:
        if list(out) != self.expected:
            raise Wrong(f"outputs {list(out)[:3]}..., expected {self.expected[:3]}...")


WORKLOADS: tuple[type[Workload], ...] = (Broadcast, Results, Chain, Matmul, Stages)
