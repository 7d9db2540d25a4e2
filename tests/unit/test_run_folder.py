import json

import pytest

from finetune_platform.errors import ErrorCode, NotFoundError, PlatformError
from finetune_platform.training.run_folder import RunFolder, latest_run


def make_run(root, experiment, run_id, status):
    folder = RunFolder.create(root, experiment, run_id)
    folder.config_path.write_text("experiment: x\n")
    folder.update_state(status=status)
    return folder


def test_layout_and_state(tmp_path):
    folder = RunFolder.create(tmp_path, "exp", "run-1")
    assert folder.root == tmp_path / "exp" / "run-1"
    assert folder.checkpoints_dir == tmp_path / "exp" / "run-1" / "artifacts" / "checkpoints"
    assert folder.checkpoints_dir.is_dir()
    assert folder.update_state(status="running", attempts=1)["attempts"] == 1
    state = folder.update_state(status="failed")
    assert state["status"] == "failed" and state["attempts"] == 1 and "updated_at" in state


def test_an_existing_run_id_is_a_conflict(tmp_path):
    RunFolder.create(tmp_path, "exp", "run-1")
    with pytest.raises(PlatformError) as caught:
        RunFolder.create(tmp_path, "exp", "run-1")
    assert caught.value.code is ErrorCode.CONFLICT
    assert str(caught.value) == (
        f"run folder {tmp_path / 'exp' / 'run-1'} already exists; choose another --run-id or add --resume"
    )


def test_resume_picks_the_newest_unfinished_run(tmp_path):
    make_run(tmp_path, "exp", "20260101-000000-aaaaaa", "failed")
    make_run(tmp_path, "exp", "20260102-000000-bbbbbb", "running")
    make_run(tmp_path, "exp", "20260103-000000-cccccc", "succeeded")
    assert RunFolder.find_resumable(tmp_path, "exp").run_id == "20260102-000000-bbbbbb"
    assert (
        RunFolder.find_resumable(tmp_path, "exp", "20260101-000000-aaaaaa").run_id == "20260101-000000-aaaaaa"
    )
    with pytest.raises(NotFoundError, match="no run 'nope' in"):
        RunFolder.find_resumable(tmp_path, "exp", "nope")
    with pytest.raises(NotFoundError, match="nothing to resume: no unfinished run of experiment 'other'"):
        RunFolder.find_resumable(tmp_path, "other")


def test_latest_run(tmp_path):
    assert latest_run(tmp_path) is None
    make_run(tmp_path, "a", "r1", "succeeded")
    newest = make_run(tmp_path, "b", "r2", "succeeded")
    assert latest_run(tmp_path) == newest
    assert latest_run(tmp_path, "a").run_id == "r1"


def test_run_json_speaks_the_job_rows_words_and_reads_older_folders(tmp_path):
    """run.json's status is a JobStatus; a folder from before, stopped with Ctrl-C ("interrupted"), reads as
    cancelled and still resumes."""
    from finetune_platform.db.job_vocabulary import JobStatus

    assert RunFolder.create(tmp_path, "exp", "new").status is None
    older = make_run(tmp_path, "exp", "20260101-000000-aaaaaa", "interrupted")
    make_run(tmp_path, "exp", "20260102-000000-bbbbbb", JobStatus.SUCCEEDED)
    assert older.status is JobStatus.CANCELLED
    assert RunFolder.find_resumable(tmp_path, "exp").run_id == older.run_id
    older.update_state(status=JobStatus.RUNNING)
    assert json.loads(older.state_path.read_text())["status"] == "running"


def test_runs_list_shows_an_older_folders_status_in_todays_words(tmp_path):
    from typer.testing import CliRunner

    from finetune_platform.cli import app

    make_run(tmp_path, "exp", "20260101-000000-aaaaaa", "interrupted")
    listed = CliRunner().invoke(app, ["runs", "list", "--output-dir", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.stdout.splitlines() if "20260101-000000-aaaaaa" in line)
    assert row.split()[:3] == ["exp", "20260101-000000-aaaaaa", "cancelled"]
