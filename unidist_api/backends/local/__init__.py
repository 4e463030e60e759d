"""``local``: a loky process pool on this machine, large values through shared memory.

Modules: :mod:`.backend` (``LocalBackend``: submit, put, completion, lost workers,
shutdown), :mod:`.calls` (a task as sent to the pool, stuck-task notes, pool errors),
:mod:`.pool` (starting a pool, removing a broken pool's late files, stopping every
pool at exit), :mod:`.shm` (the shared-memory files: format, mapping, who holds each
file, removal) and :mod:`.worker` (what runs in a loky worker).
"""

from .backend import LocalBackend

__all__ = ["LocalBackend"]
