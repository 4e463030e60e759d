"""Monte Carlo estimate of pi, reproducible on every backend: one explicit seed per task.

Each task draws points in the unit square from its own generator,
``numpy.random.default_rng(seed)``, and counts those inside the quarter circle. The seed
is an argument of the task, not something a worker picks up from its environment (the
time, the process id, a global generator that each worker process starts differently),
so the counts are the same whatever process, machine or backend runs a task; and
``ua.reduce`` adds them with a fixed tree, so even the total does not depend on which
task finished first. The estimate printed is identical on every backend.

This program names no backend; switch it with configuration alone:

    UNIDIST_API_BACKEND=serial python examples/monte_carlo.py
    UNIDIST_API_BACKEND=dask python examples/monte_carlo.py
    unidist-api run --backend local --workers 2 examples/monte_carlo.py
"""

import operator

import numpy as np

import unidist_api as ua

TASKS = 16
POINTS_PER_TASK = 500_000


def hits_in_quarter_circle(seed: int, points: int) -> int:
    """How many of ``points`` uniform points in [0, 1)^2 fall inside the unit circle."""
    rng = np.random.default_rng(seed)  # this task's own, seeded generator
    x = rng.random(points)
    y = rng.random(points)
    return int(np.count_nonzero(x * x + y * y < 1.0))


def main() -> None:
    # distinct seeds derived from one master seed: the same on every run and backend
    seeds = np.random.SeedSequence(2024).generate_state(TASKS).tolist()
    hits = list(ua.map(hits_in_quarter_circle, seeds, [POINTS_PER_TASK] * TASKS))
    print("hits per task (first 4):", hits[:4])

    total_hits = ua.reduce(operator.add, hits)  # integers: exact in any order anyway
    total_points = TASKS * POINTS_PER_TASK
    estimate = 4 * total_hits / total_points
    print(f"{total_points} points, {total_hits} inside the quarter circle")
    print(f"pi is about {estimate:.6f} (error {abs(estimate - np.pi):.6f})")

    # the per-task estimates, averaged by a float reduction: ua.reduce uses a fixed tree
    # shape, so this float sum is bit-identical on every backend, too
    per_task = [4 * h / POINTS_PER_TASK for h in hits]
    print("mean of per-task estimates:", repr(ua.reduce(operator.add, per_task) / TASKS))


if __name__ == "__main__":
    main()
