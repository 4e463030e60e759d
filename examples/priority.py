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


@ua.task(priority=-1)
def background(n: int) -> tuple[int, float]:
    started = time.time()
    time.sleep(0.2)
    return n * n, started


@ua.task(priority=10)
def urgent() -> tuple[str, float]:
    return "handled", time.time()


def main() -> None:
    # One worker slot, so that tasks start one after another and their order is plain to
    # see (with more slots, tasks freed at the same moment start at the same moment).
    with ua.Executor(max_workers=1) as ex:
        ua.wait([ex.submit(time.sleep, 0.2) for _ in range(ex.workers)])  # every worker up
        batch = [ex.submit(background, n) for n in range(8)]
        waiting = sum(not future.done() for future in batch) > ex.workers
        answer, urgent_started = ex.submit(urgent).result()
        results = [future.result() for future in batch]
        slots = ex.workers
    ahead = sum(started < urgent_started for _, started in results)
    print(f"urgent task: {answer}")
    print(f"batch: {len(results)} tasks, sum of squares {sum(value for value, _ in results)}")
    # Only the batch tasks that had a worker slot when the urgent one came started before
    # it; the others waited behind it. (On serial each task runs as it is submitted, so
    # nothing ever waits: the rule holds trivially.)
    print(
        "batch tasks ahead of the urgent one: only the one that had the slot:",
        ahead <= slots or not waiting,
    )


if __name__ == "__main__":
    main()
