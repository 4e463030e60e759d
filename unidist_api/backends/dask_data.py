# mypy: disallow-untyped-calls=False
"""How values cross Dask: packed values whose large buffers travel as Dask frames.

A :class:`DaskPacked` (what ``_run`` returns and ``put`` scatters when a value has
large buffers) has a registered ``dask_serialize``/``dask_deserialize`` pair: Dask sends
the header and each buffer as frames of their own on every link (client to worker,
worker to worker, and through the scheduler, whose links pickle with protocol 4),
never copied into a pickle stream. The class lives in this module, which registers the
pair at import, so a worker that unpickles the type imports the serializer with it.
Frames received from a socket are this process's own, so the caller loads a result
over them without a copy (``load_result(private=True)``).
"""

from __future__ import annotations

from pickle import PickleBuffer
from typing import Any

from distributed.protocol.serialize import dask_deserialize, dask_serialize

from ..data import Packed

__all__ = ["DaskPacked", "for_dask"]


class DaskPacked(Packed):
    """A :class:`~unidist_api.data.Packed` that Dask sends as frames."""

    __slots__ = ()


def for_dask(data: bytes | Packed) -> bytes | DaskPacked:
    """``data`` as Dask should carry it (plain pickles stay ``bytes``)."""
    if isinstance(data, Packed) and type(data) is not DaskPacked:
        return DaskPacked(data.header, *data.buffers)
    return data


@dask_serialize.register(DaskPacked)  # type: ignore[untyped-decorator]
def _serialize(value: DaskPacked) -> tuple[dict[str, Any], list[Any]]:
    return {}, [value.header, *[_flat(b) for b in value.buffers]]


def _flat(buffer: Any) -> memoryview:
    """A buffer as the flat bytes Dask sends (a Fortran-ordered array's too)."""
    if isinstance(buffer, PickleBuffer):
        return buffer.raw()
    view = memoryview(buffer)
    return view if view.ndim == 1 and view.format == "B" else view.cast("B")


@dask_deserialize.register(DaskPacked)  # type: ignore[untyped-decorator]
def _deserialize(header: dict[str, Any], frames: list[Any]) -> DaskPacked:
    return DaskPacked(bytes(frames[0]), *frames[1:])
