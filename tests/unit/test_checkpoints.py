import json
from pathlib import Path

from finetune_platform.training.checkpoints import (
    COMPLETE_MARKER,
    STAGING_DIR,
    CheckpointInfo,
    apply_retention,
    commit_staged,
    list_checkpoints,
    newest_checkpoint,
    remove_incomplete,
    select_retained,
)


def info(step: int, metric: float | None) -> CheckpointInfo:
    return CheckpointInfo(Path(f"checkpoint-{step}"), step, None, metric)


def make_checkpoint(root: Path, step: int, metric: float | None, complete: bool = True) -> Path:
    staged = root / STAGING_DIR / f"checkpoint-{step}"
    staged.mkdir(parents=True)
    (staged / "adapter_model.safetensors").write_bytes(b"weights")
    if complete:
        return commit_staged(staged, root, {"step": step, "epoch": None, "metric": metric})
    final = root / f"checkpoint-{step}"
    staged.rename(final)
    return final


def roles(retained):
    return {role: checkpoint.step for role, checkpoint in retained.items()}


def test_best_last_fastest_are_distinct_when_they_should_be():
    checkpoints = [info(10, 0.80), info(20, 0.895), info(30, 0.90), info(40, 0.88)]
    assert roles(select_retained(checkpoints, greater_is_better=True, tolerance=0.01)) == {
        "best": 30,
        "last": 40,
        "fastest": 20,
    }


def test_fastest_is_best_when_nothing_earlier_is_close():
    checkpoints = [info(10, 0.70), info(20, 0.90), info(30, 0.85)]
    assert roles(select_retained(checkpoints, True, 0.01)) == {"best": 20, "last": 30, "fastest": 20}


def test_ties_go_to_the_earlier_checkpoint():
    checkpoints = [info(10, 0.9), info(20, 0.9)]
    assert roles(select_retained(checkpoints, True, 0.0)) == {"best": 10, "last": 20, "fastest": 10}


def test_lower_is_better_for_loss():
    checkpoints = [info(10, 0.50), info(20, 0.305), info(30, 0.30), info(40, 0.60)]
    assert roles(select_retained(checkpoints, greater_is_better=False, tolerance=0.01)) == {
        "best": 30,
        "last": 40,
        "fastest": 20,
    }


def test_without_metrics_only_last_is_kept():
    assert roles(select_retained([info(10, None), info(20, None)], True, 0.01)) == {"last": 20}
    assert select_retained([], True, 0.01) == {}


def test_apply_retention_deletes_exactly_the_others(tmp_path):
    for step, metric in [(10, 0.80), (20, 0.895), (30, 0.90), (40, 0.70), (50, 0.88)]:
        make_checkpoint(tmp_path, step, metric)
    apply_retention(tmp_path, greater_is_better=True, tolerance=0.01)
    remaining = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint-"))
    assert remaining == ["checkpoint-20", "checkpoint-30", "checkpoint-50"]
    summary = json.loads((tmp_path / "retention.json").read_text())
    assert {role: entry["step"] for role, entry in summary.items()} == {"best": 30, "last": 50, "fastest": 20}


def test_commit_marks_complete_and_records_meta(tmp_path):
    final = make_checkpoint(tmp_path, 7, 0.5)
    assert final == tmp_path / "checkpoint-7"
    assert json.loads((final / COMPLETE_MARKER).read_text()) == {"step": 7}
    assert json.loads((final / "checkpoint_meta.json").read_text())["metric"] == 0.5
    assert not (tmp_path / STAGING_DIR / "checkpoint-7").exists()


def test_incomplete_checkpoints_are_invisible_and_removed(tmp_path):
    make_checkpoint(tmp_path, 10, 0.8)
    make_checkpoint(tmp_path, 20, 0.9, complete=False)  # killed between rename and marker
    (tmp_path / STAGING_DIR / "checkpoint-30").mkdir(parents=True)  # killed mid-write
    assert [c.step for c in list_checkpoints(tmp_path)] == [10]
    assert newest_checkpoint(tmp_path).step == 10
    assert remove_incomplete(tmp_path) == ["checkpoint-20"]
    assert not (tmp_path / STAGING_DIR).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10"]


def test_commit_replaces_an_incomplete_leftover_of_the_same_step(tmp_path):
    make_checkpoint(tmp_path, 20, 0.9, complete=False)
    (tmp_path / "checkpoint-20" / "stale").write_text("x")
    staged = tmp_path / STAGING_DIR / "checkpoint-20"
    staged.mkdir(parents=True)
    final = commit_staged(staged, tmp_path, {"step": 20, "epoch": 1.0, "metric": 0.91})
    assert not (final / "stale").exists()
    assert list_checkpoints(tmp_path)[0].metric == 0.91
