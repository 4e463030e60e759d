"""``dask``: tasks run on Dask distributed, in an embedded local cluster or a running cluster.

Without an address, the first task (or ``put``) starts a local cluster of ``workers``
worker processes (default ``os.cpu_count()``), bound to 127.0.0.1, without dashboard
(unless asked for), as
Dask's ``LocalCluster`` would, but with its scheduler in a process of its own. With
``address="tcp://host:8786"`` (or, when ours is unset, Dask's own ``scheduler-address``
setting, e.g. ``DASK_SCHEDULER_ADDRESS``) a client connects to that scheduler, which we never
stop; an unreachable one, or one where no Dask scheduler answers, raises
``ClusterConnectionError`` within ``connect_timeout`` seconds. There, ``workers`` (if set)
only sizes the buffers of ``map`` and ``pipeline``; unset, it is the cluster's thread count.

Backend options:

- ``connect_timeout`` (seconds, default 30): how long to keep trying to reach ``address``.
- ``threads_per_worker`` (default 1): threads of each embedded worker process, so
  ``workers * threads_per_worker`` tasks run at once. A running cluster has its own.
- ``dashboard`` (default False): the embedded cluster's scheduler serves Dask's dashboard
  on 127.0.0.1 (needs bokeh, the ``dashboard`` extra); refused with an address.

Starting, joining or connecting to a cluster logs one INFO line on ``unidist_api``.

How the contract maps onto Dask, one module each:

- :mod:`.backend`: :class:`DaskBackend`: tasks, retries, fetch, cancel, shutdown.
- :mod:`.data`: how values cross Dask: large buffers as Dask frames on every link,
  read-only inputs on the worker, results the caller's own without a copy; ``put``.
- :mod:`.worker`: what runs on the worker: the task wrapper, the initializer plugin.
- :mod:`.complete`: completion from the messages the scheduler sends our client.
- :mod:`.timeouts`: tasks past their timeout that their thread cannot stop.
- :mod:`.errors`: Dask's failures (a lost worker, a lost value) as ours.
- :mod:`.resources`: task resource options as Dask worker resources.
- :mod:`.connect`: reaching a running scheduler within a bounded time.
- :mod:`.cluster`: the embedded cluster: shared, healed, started without ``__main__``.
- :mod:`.scheduler`: its scheduler, in a process of its own that ends with the caller.
"""

from .backend import DaskBackend

__all__ = ["DaskBackend"]
