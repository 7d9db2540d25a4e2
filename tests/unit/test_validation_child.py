"""The validation child's own bounds: how many run at once per process, and how long one may take."""

from __future__ import annotations

import pytest

from finetune_platform.data import validation
from finetune_platform.data.loading import DatasetLimitError
from finetune_platform.data.validation import ValidationOptions, validate_in_child
from finetune_platform.errors import ErrorCode, PlatformError
from tests.conftest import SAMPLE_DIR


def test_children_beyond_the_concurrency_wait_then_are_refused(monkeypatch):
    """The attack: many concurrent uploads, each a child allowed VALIDATION_MEMORY_MB, add up past the
    host's memory. Only VALIDATION_CONCURRENCY children run at once; the rest wait, then get 429."""
    monkeypatch.setattr(validation, "SLOT_WAIT_SECONDS", 0.2)
    slot = validation._child_slot(1)
    assert slot.acquire(timeout=1)  # another upload holds the only slot
    try:
        with pytest.raises(PlatformError) as refused:
            validate_in_child(SAMPLE_DIR / "train.csv", ValidationOptions(), 2048, concurrency=1)
    finally:
        slot.release()
    assert refused.value.code is ErrorCode.QUOTA_EXCEEDED
    assert str(refused.value) == (
        "the server is validating 1 uploads already (VALIDATION_CONCURRENCY); try again shortly"
    )
    report = validate_in_child(SAMPLE_DIR / "train.csv", ValidationOptions(), 2048, concurrency=1)
    assert report["ok"] and report["files"][0]["rows_read"] == 320


def test_a_child_past_its_time_limit_is_killed():
    with pytest.raises(DatasetLimitError) as refused:
        validate_in_child(SAMPLE_DIR / "train.csv", ValidationOptions(), 2048, timeout_seconds=0.05)
    assert "validation took longer than its limit of 0.05 s" in str(refused.value)
    assert "VALIDATION_TIMEOUT_SECONDS" in str(refused.value)
