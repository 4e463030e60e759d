"""``python -m benchmarks.ray_cancel_probe [seconds]``: is ``ray.cancel`` safe on this Ray?

The ray backend never calls ``ray.cancel`` (docs/reliability.md, "Cancellation"): when a
cancel crosses the task's completion, Ray's task manager aborts the calling process
("Check failed: it != submissible_tasks_.end() Tried to complete task that was not
pending", ray-project/ray#54846). This probe cancels batches of short tasks at random
moments for ``seconds`` (default 120) on a private local Ray. Exit status 0 and "no
crash" mean the race was not hit; a crash kills this process (non-zero status, the
Check-failed line on stderr). Seen with Ray 2.60.0 on 2026-11-30: crashed within
seconds. Rerun it on a new Ray before letting the backend cancel.
"""

from __future__ import annotations

import random
import sys
import time


def main(seconds: float) -> None:
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)

    @ray.remote(max_retries=3)
    def nap(x: int, s: float) -> int:
        time.sleep(s)
        return x

    rng = random.Random(0)
    cancels = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        refs = [nap.remote(i, rng.choice([0, 0.001, 0.005, 0.02])) for i in range(40)]
        time.sleep(rng.choice([0, 0.001, 0.005, 0.01, 0.03]))
        for ref in refs:
            ray.cancel(ref)
            cancels += 1
        for ref in refs:
            try:
                ray.get(ref)
            except (ray.exceptions.TaskCancelledError, ray.exceptions.RayTaskError):
                pass
    ray.shutdown()
    print(f"no crash: {cancels} cancels in {seconds:g} s (ray {ray.__version__})")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 120.0)
