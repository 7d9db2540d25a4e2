"""The job lifecycle table, walked cell by cell, and the retry policy beside it."""

from __future__ import annotations

import pytest

from finetune_platform.errors import ErrorCode, PlatformError
from finetune_platform.services.job_states import (
    ACTIVE,
    FINISHED,
    STAGE_AFTER,
    TABLE,
    IllegalTransition,
    JobStage,
    JobStatus,
    LifecycleEvent,
    after_failed_attempt,
    after_lost_worker,
    failure_reason,
    gave_up,
    next_state,
    retries,
)
from finetune_platform.training.guards import CheckpointSaveError, NonFiniteLoss

STATES = [None, "queued", "running", "succeeded", "failed", "cancelled", "pruned"]
EVENTS = [
    "submit", "claim", "hold", "heartbeat", "progress", "finish", "fail", "stop", "prune", "release", "preempt",
    "cancel", "retry", "reconcile",
]  # fmt: skip

# Written out by hand, not derived from the table: (state, event) -> the state it lands in.
LEGAL = {
    (None, "submit"): "queued",
    ("queued", "claim"): "running",
    ("queued", "hold"): "queued",
    ("queued", "cancel"): "cancelled",
    ("running", "cancel"): "running",
    ("running", "heartbeat"): "running",
    ("running", "progress"): "running",
    ("running", "finish"): "succeeded",
    ("running", "fail"): "failed",
    ("running", "stop"): "cancelled",
    ("running", "prune"): "pruned",  # a sweep trial its pruner stopped: ended, and never retried
    ("running", "release"): "queued",
    ("running", "preempt"): "queued",
    ("running", "reconcile"): "queued",
    ("failed", "retry"): "queued",
    ("cancelled", "retry"): "queued",
}
# The stage each event leaves a job in, every event named: None keeps the stage the job had (the worker reports
# its way through the running stages; a failed or cancelled job keeps the one it stopped in).
STAGE = {
    "submit": None, "claim": "validating", "hold": None, "heartbeat": None, "progress": None, "finish": "done",
    "fail": None, "stop": None, "prune": None, "release": None, "preempt": None, "cancel": None, "retry": None,
    "reconcile": None,
}  # fmt: skip
# What an illegal move says after "only …": the states the event may leave from, and how the event reads.
ONLY = {
    "submit": "new jobs can be submitted",
    "claim": "queued jobs can be claimed",
    "hold": "queued jobs can be held",
    "heartbeat": "running jobs can be kept alive",
    "progress": "running jobs can be updated",
    "finish": "running jobs can be finished",
    "fail": "running jobs can be failed",
    "stop": "running jobs can be stopped",
    "prune": "running jobs can be pruned",
    "release": "running jobs can be released",
    "preempt": "running jobs can be preempted",
    "cancel": "queued or running jobs can be cancelled",
    "retry": "failed or cancelled jobs can be retried",
    "reconcile": "running jobs can be requeued",
}


def test_the_vocabulary_is_the_whole_table():
    assert [None, *JobStatus] == STATES and list(LifecycleEvent) == EVENTS
    assert all(isinstance(word, str) for word in (*JobStatus, *LifecycleEvent))
    assert {(state, event.value): target.value for (state, event), target in TABLE.items()} == LEGAL
    assert {"succeeded", "failed", "cancelled", "pruned"} == FINISHED and {"queued", "running"} == ACTIVE
    assert list(STAGE) == EVENTS
    assert {event.value: stage.value for event, stage in STAGE_AFTER.items()} == {
        event: stage for event, stage in STAGE.items() if stage is not None
    }
    assert "done" in list(JobStage) and all(isinstance(stage, JobStage) for stage in STAGE_AFTER.values())


@pytest.mark.parametrize("event", EVENTS)
@pytest.mark.parametrize("state", STATES)
def test_every_state_and_event(state, event):
    if (state, event) in LEGAL:
        landed = next_state(state, LifecycleEvent(event), job_id="job-1")
        assert landed == LEGAL[state, event] and isinstance(landed, JobStatus)
        return
    with pytest.raises(IllegalTransition) as caught:
        next_state(state, LifecycleEvent(event), job_id="job-1")
    already = "already " if state in {"succeeded", "failed", "cancelled", "pruned"} else ""
    assert str(caught.value) == f"job job-1 is {already}{state or 'new'}: only {ONLY[event]}"
    assert isinstance(caught.value, PlatformError) and caught.value.code is ErrorCode.CONFLICT
    assert (caught.value.job_id, caught.value.state, caught.value.event) == ("job-1", state, event)


def test_which_failures_retry():
    assert retries(OSError(28, "No space left on device")) and retries(RuntimeError("CUDA out of memory"))
    assert retries(CheckpointSaveError("saving checkpoint-20 failed: disk full"))  # says it is retryable
    assert not retries(NonFiniteLoss("training stopped: loss is nan at step 3"))
    assert not retries(PlatformError("no model 'gone'"))
    assert failure_reason(RuntimeError("CUDA out of memory")) == "RuntimeError: CUDA out of memory"
    assert failure_reason(PlatformError("no model 'gone'")) == "no model 'gone'"


def test_the_attempt_budget():
    assert [after_failed_attempt(attempts, 3) for attempts in (1, 2, 3, 4)] == [
        "release", "release", "fail", "fail",
    ]  # fmt: skip
    lost = [after_lost_worker(cancel_requested=False, attempts=n, max_attempts=2) for n in (1, 2)]
    assert lost == ["reconcile", "fail"]
    assert after_lost_worker(cancel_requested=True, attempts=1, max_attempts=2) == "stop"
    assert gave_up(2, "reason") == "gave up after 2 attempts; last: reason"
