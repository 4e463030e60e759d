"""An urgent task overtakes a queued batch: the ``priority`` task option.

A background batch (``priority=-1``) fills every worker and queues behind them; then an
urgent task (``priority=10``) is submitted. When more tasks wait than there are free
worker slots, higher priorities start first (equal ones in submission order), so the
urgent task starts as soon as a slot frees, before the rest of the batch. The serial
backend runs each task when it is submitted, so there the batch is already done and
nothing is waiting: the rule holds there too, trivially.

This program names no backend; it prints the same lines on every backend:

    UNIDIST_API_BACKEND=ray python examples/priority.py
"""

import time

import unidist_api as ua

MARGIN = 0.05  # seconds: a batch task sent to a worker just before the urgent one came


@ua.task(priority=-1)
def background(n: int) -> tuple[int, float]:
    started = time.time()
    time.sleep(0.2)
    return n * n, started


@ua.task(priority=10)
def urgent() -> tuple[str, float]:
    return "handled", time.time()


def main() -> None:
    with ua.Executor() as ex:
        ua.wait([ex.submit(time.sleep, 0.2) for _ in range(ex.workers)])  # every worker up
        batch = [ex.submit(background, n) for n in range(8)]
        submitted = time.time()
        answer, urgent_started = ex.submit(urgent).result()
        results = [future.result() for future in batch]
    waiting = [started for _, started in results if started > submitted + MARGIN]
    print(f"urgent task: {answer}")
    print(f"batch: {len(results)} tasks, sum of squares {sum(value for value, _ in results)}")
    print(
        "the urgent task started before every batch task still waiting:",
        all(urgent_started <= started for started in waiting),
    )


if __name__ == "__main__":
    main()
