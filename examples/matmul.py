"""Block matrix multiply: blocks stored once with ``ua.put``, shared by many tasks.

C = A @ B is cut into a grid of blocks: C[i][j] = sum over k of A[i][k] @ B[k][j].
Each block of A is needed by every task of its block row, each block of B by every
task of its block column. ``ua.put`` stores each block once (in Ray's object store, in
Dask's memory, in shared memory for the local pool) and returns a handle; passing the
handle to many tasks, here inside lists, does not copy the block from this process
each time: each task receives the block's value.

Large arrays (1 MiB and more) arrive in a task **read-only**, shared without a copy
where the engine can; a task that wants to write into one copies it (``arr.copy()``).
Here the tasks only read.

The matrices hold small integers, so every product and sum is exact in float64: the
result is checked against ``a @ b`` with ``np.allclose``, and the printed checksum is
identical on every backend. This program names no backend; switch it with
configuration alone:

    UNIDIST_API_BACKEND=serial python examples/matmul.py
    UNIDIST_API_BACKEND=ray python examples/matmul.py
"""

import hashlib

import numpy as np

import unidist_api as ua

N = 1200  # matrix size
GRID = 3  # GRID x GRID blocks of (N // GRID)^2 float64 each: 1.28 MB a block


def blocks(matrix: np.ndarray, grid: int) -> list[list[np.ndarray]]:
    """Cut a square matrix into grid x grid blocks, each a contiguous array of its own.

    ``np.split`` gives views, and a view across columns is not contiguous. Each block is
    stored once with ``ua.put`` (which would make such a view contiguous itself); doing
    it here, once, keeps the caller's blocks in the layout the tasks will see.
    """
    rows = np.split(matrix, grid, axis=0)
    return [[np.ascontiguousarray(block) for block in np.split(row, grid, axis=1)] for row in rows]


def block_product(a_row: list[np.ndarray], b_column: list[np.ndarray]) -> np.ndarray:
    """One block of C: the sum over k of A[i][k] @ B[k][j] (the blocks arrive as values)."""
    assert not a_row[0].flags.writeable  # a large shared input: read-only, not a copy
    out = a_row[0] @ b_column[0]  # a new array, ours to write into
    for a_block, b_block in zip(a_row[1:], b_column[1:], strict=True):
        out += a_block @ b_block
    return out


def main() -> None:
    rng = np.random.default_rng(42)
    a = rng.integers(-9, 10, size=(N, N)).astype(np.float64)
    b = rng.integers(-9, 10, size=(N, N)).astype(np.float64)

    # store every block once; keep the handles
    a_handles = [[ua.put(block) for block in row] for row in blocks(a, GRID)]
    b_handles = [[ua.put(block) for block in row] for row in blocks(b, GRID)]

    # one task per block of C; handles inside list arguments are replaced by their values
    futures = [
        [
            ua.submit(
                block_product,
                a_handles[i],  # row i of A's blocks
                [b_handles[k][j] for k in range(GRID)],  # column j of B's blocks
            )
            for j in range(GRID)
        ]
        for i in range(GRID)
    ]
    c = np.block([[future.result() for future in row] for row in futures])

    print(f"C = A @ B for {N}x{N} matrices, in {GRID}x{GRID} blocks: {GRID**2} tasks")
    print("matches a @ b:", np.allclose(c, a @ b))
    exact = c.astype(np.int64)  # integer-valued: the conversion is exact
    print("all entries integers:", bool(np.array_equal(exact, c)))
    print("trace:", int(np.trace(exact)), "sum:", int(exact.sum()))
    print("sha256 of C:", hashlib.sha256(exact.tobytes()).hexdigest()[:16])


if __name__ == "__main__":
    main()
