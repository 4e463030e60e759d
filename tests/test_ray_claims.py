"""Ray's claims (backends/ray/cancel.py): a cancel the store cannot record leaves no claim."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("ray")

from ray.experimental import internal_kv  # noqa: E402

from unidist_api.backends.ray.cancel import Claims  # noqa: E402


def test_a_cancel_the_store_cannot_record_leaves_no_claim_for_a_local_worker_to_skip(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """cancel() answers False (the task may run), so no worker may find a caller's claim."""

    def unreachable(*args: object, **kwargs: object) -> bool:
        raise ConnectionError("GCS unreachable (injected)")

    claims = Claims(in_store=True)
    try:
        monkeypatch.setattr(internal_kv, "_internal_kv_put", unreachable)
        assert claims.cancel("a1b2") is False
        assert not os.path.exists(os.path.join(claims.directory, "a1b2"))
    finally:
        monkeypatch.undo()
        claims.close()


def test_a_cancel_on_this_machine_alone_claims_the_task() -> None:
    claims = Claims(in_store=False)
    try:
        assert claims.cancel("c3d4") is True
        assert os.path.isdir(os.path.join(claims.directory, "c3d4"))
        assert claims.started("c3d4") is False  # the caller's claim, not a worker's
        assert claims.cancel("c3d4") is False  # claimed once
    finally:
        claims.close()
    assert not os.path.exists(claims.directory)
