"""``ray``: tasks run on Ray, either a private local Ray we start or a cluster we join.

Where it runs: without an address, a private local Ray that we start and stop; with
one, a cluster we connect to and never stop (:mod:`.connect`); one Ray per process,
shared by every executor and counted (:mod:`.runtime`). Every task is a call of one
remote function (:mod:`.worker`), submitted with a small spec, its packed arguments and
its input futures' ObjectRefs (:mod:`.backend`); values cross Ray as our own packed
pickles, large buffers in Ray's object store (:mod:`.data`); futures complete from bulk
fetches, or from a watcher once something waits (:mod:`.complete`); Ray's errors become
ours (:mod:`.errors`); cancelling claims the task before a worker does, never
``ray.cancel`` (:mod:`.cancel`).
"""

from __future__ import annotations

import ray

if not hasattr(ray.ObjectRef, "_on_ready"):
    raise ImportError(
        f"the ray backend needs Ray >= 2.60 (ObjectRef._on_ready), found {ray.__version__}"
    )

from .backend import RayBackend  # noqa: E402

__all__ = ["RayBackend"]
