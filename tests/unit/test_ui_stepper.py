"""The job page's stepper line: where a task is, and where a stopped one stopped."""

from __future__ import annotations

from finetune_platform.ui.views import stepper


def test_a_pruned_trial_shows_where_its_pruner_stopped_it():
    line = stepper({"kind": "train", "status": "pruned", "stage": "training"})
    assert (
        line
        == "✓ queued  →  ✓ validating  →  ✗ training (pruned)  →  · evaluating  →  · registering  →  · done"
    )


def test_running_failed_and_succeeded_tasks():
    assert (
        stepper({"kind": "train", "status": "running", "stage": "evaluating"}).split("  →  ")[3]
        == "▶ evaluating"
    )
    assert "✗ validating (failed)" in stepper({"kind": "train", "status": "failed", "stage": "validating"})
    assert stepper({"kind": "train", "status": "succeeded", "stage": "done"}).endswith(
        "✓ registering  →  ✓ done"
    )
