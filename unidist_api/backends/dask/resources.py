# mypy: disallow-untyped-calls=False
"""Task resource options as Dask worker resources, and refusing what no worker offers.

``cpus`` above 1, ``gpus``, ``memory`` and ``resources`` become Dask worker resources
``CPU``, ``GPU``, ``MEMORY`` (bytes) and the given names; a task that asks for none of
them just takes a thread. Embedded workers declare ``CPU`` (their threads) and ``MEMORY``
(their memory limit, Dask's default share of the machine); GPUs need a cluster whose
workers declare them (``dask worker --resources "GPU=1"``). A request no current worker
offers is refused at submit; a cluster with no worker yet accepts it. A running cluster's
worker resources are asked for at most every ``OFFERS_MAX_AGE`` seconds (and once more,
at most once a second, before refusing), not once per task. Dask counts a resource only
among the tasks that ask for it, so with several threads per worker a ``cpus=2`` task may
share its worker with one-thread tasks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from dask.utils import format_bytes

from ...errors import UnsupportedOptionError
from ...task import TaskOptions

__all__ = ["resource_request", "describe_resources", "Offers", "OFFERS_MAX_AGE"]

OFFERS_MAX_AGE = 5.0  # seconds a running cluster's worker resources are cached


def resource_request(options: TaskOptions) -> dict[str, float] | None:
    """The Dask worker resources a task asks for; None for a task that just takes a thread."""
    request: dict[str, float] = {}
    if options.cpus > 1:
        request["CPU"] = options.cpus
    if options.gpus > 0:
        request["GPU"] = options.gpus
    if options.memory is not None:
        request["MEMORY"] = options.memory
    request.update(
        {name: amount for name, amount in (options.resources or {}).items() if amount > 0}
    )
    return request or None


def _covers(offer: Mapping[str, float], request: Mapping[str, float]) -> bool:
    return all(offer.get(name, 0) >= amount for name, amount in request.items())


def describe_resources(resources: Mapping[str, float]) -> str:
    if not resources:
        return "no resources"
    return ", ".join(
        f"{name}={format_bytes(int(amount)) if name == 'MEMORY' else f'{amount:g}'}"
        for name, amount in sorted(resources.items())
    )


class Offers:
    """What the workers of a cluster offer, to refuse requests none of them satisfies.

    ``embedded``: the resources each embedded worker declares (known without starting
    the cluster); None for a running cluster, asked through ``scheduler_info``.
    """

    def __init__(
        self, embedded: Mapping[str, float] | None, scheduler_info: Callable[[], dict[str, Any]]
    ) -> None:
        self._embedded = embedded
        self._scheduler_info = scheduler_info
        # (when, resources of each worker) of a running cluster, when last asked
        self._seen: tuple[float, list[Mapping[str, float]]] = (-math.inf, [])

    def check(self, request: dict[str, float]) -> None:
        """Refuse a resource request that no worker of the cluster could ever satisfy."""
        for max_age in (OFFERS_MAX_AGE, 1.0):  # a refusal looks again, at most once a second
            offers = self._offers(max_age)
            if not offers or any(_covers(offer, request) for offer in offers):
                return
        hint = (
            "the embedded cluster's CPU is the threads_per_worker option; other "
            "resources need a cluster whose workers declare them, "
            if self._embedded is not None
            else "or start workers that declare them, "
        )
        raise UnsupportedOptionError(
            f"the task asks for {describe_resources(request)} (cpus -> CPU, gpus -> GPU, "
            f"memory -> MEMORY, plus its resources), but no worker of the Dask cluster "
            f"offers that; workers offer: "
            f"{'; '.join(sorted({describe_resources(o) for o in offers}))}. Ask for "
            f'less ({hint}e.g. dask worker --resources "GPU=1")'
        )

    def _offers(self, max_age: float) -> list[Mapping[str, float]]:
        """The resources each worker declares (the embedded cluster's, without starting it).

        A running cluster's are asked for at most once per ``max_age`` seconds, so tasks
        with resource options do not cost a round trip to the scheduler each.
        """
        if self._embedded is not None:
            return [self._embedded]
        seen_at, offers = self._seen
        if time.monotonic() - seen_at > max_age:
            workers = self._scheduler_info()["workers"]
            offers = [worker["resources"] for worker in workers.values()]
            self._seen = (time.monotonic(), offers)
        return offers
