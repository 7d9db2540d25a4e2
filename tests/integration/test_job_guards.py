"""A job's training going wrong in ways a worker must survive: a diverging loss and a full disk.

The job runs in this process (``execute_job``, exactly what a worker's task calls) so a callback can
break it at a chosen step: it writes NaN into the trainable weights, or fills a real (tmpfs) disk.
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from finetune_platform.db import session as db
from finetune_platform.db.models import Job
from finetune_platform.services import jobs
from finetune_platform.services.users import local_user
from finetune_platform.settings import Settings
from finetune_platform.training.callbacks import Callback
from finetune_platform.training.checkpoints import list_checkpoints
from finetune_platform.training.driver import Driver
from finetune_platform.worker.executor import execute_job
from tests.conftest import tiny_config_dict

pytestmark = pytest.mark.slow


class PoisonWeights(Callback):
    """At the end of step ``at_step`` every trainable weight becomes NaN, as a divergence would leave them (the
    model is the driver's, taken as its training starts)."""

    def __init__(self, at_step: int, monkeypatch) -> None:
        self.at_step, self.model = at_step, None
        original = Driver.train

        def train(driver, resume_from=None):
            self.model = driver.model
            return original(driver, resume_from)

        monkeypatch.setattr(Driver, "train", train)

    def on_step(self, state, control):
        if state.step == self.at_step:
            import torch

            with torch.no_grad():
                for parameter in self.model.parameters():
                    if parameter.requires_grad:
                        parameter.fill_(float("nan"))


class FillDisk(Callback):
    """After the first checkpoint is saved, fill the disk it lives on to the last byte."""

    def __init__(self, filler) -> None:
        self.filler = filler

    def on_save(self, state, checkpoint):
        if self.filler.exists():
            return
        with self.filler.open("wb", buffering=0) as handle:
            for size in (1 << 20, 1 << 12, 1):
                try:
                    while True:
                        handle.write(b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC


@pytest.fixture
def job_settings(tmp_path) -> Settings:
    settings = Settings(FINETUNE_HOME=tmp_path / "home", MLFLOW_ENABLED=False, JOB_LEASE_SECONDS=30)
    db.upgrade(settings)
    return settings


def queued_job(settings: Settings, config: dict) -> str:
    with db.session_scope(settings) as session:
        return jobs.submit_job(session, local_user(session), config).job.id


def test_nan_loss_stops_the_job_and_keeps_the_last_good_checkpoint(
    job_settings, tmp_path, tiny_bert, sentiment_data, monkeypatch
):
    config = tiny_config_dict(
        tiny_bert, *sentiment_data, tmp_path / "results", max_steps=40, logging_steps=1, eval_steps=4
    )
    config["precision"] = "fp32"
    job_id = queued_job(job_settings, config)
    assert (
        execute_job(job_settings, job_id, callbacks=[PoisonWeights(at_step=6, monkeypatch=monkeypatch)])
        == "failed"
    )
    with db.session_scope(job_settings) as session:
        job = session.get(Job, job_id)
        assert (job.status, job.attempts, job.stage) == ("failed", 1, "training")
        assert job.error == (
            "training stopped: loss is nan at step 7 (diverged; try a lower learning rate or fp32); "
            "the last good checkpoint, checkpoint-4, is kept"
        )
    checkpoints = list_checkpoints(tmp_path / "results" / "tiny" / job_id / "artifacts" / "checkpoints")
    assert [info.step for info in checkpoints] == [4]
    from safetensors.torch import load_file

    weights = load_file(checkpoints[0].path / "adapter_model.safetensors")
    assert weights and all(bool(tensor.isfinite().all()) for tensor in weights.values())


@pytest.fixture
def small_disk(tmp_path):
    """A real 16 MiB filesystem (tmpfs): writes past its size fail with ENOSPC."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if result.returncode != 0:
        reason = f"cannot mount a tmpfs to fill (needs root): {result.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(
    job_settings, small_disk, tiny_bert, sentiment_data
):
    config = tiny_config_dict(tiny_bert, *sentiment_data, small_disk / "results", max_steps=16, eval_steps=4)
    job_id = queued_job(job_settings, config)
    filler = small_disk / "filler.bin"
    assert execute_job(job_settings, job_id, callbacks=[FillDisk(filler)]) == "requeued"
    with db.session_scope(job_settings) as session:
        job = session.get(Job, job_id)
        assert (job.status, job.attempts) == ("queued", 1)
        assert job.error.startswith("saving checkpoint-8 failed: No space left on device (")
        assert job.error.endswith("the last good checkpoint, checkpoint-4, is kept")
    checkpoints_dir = small_disk / "results" / "tiny" / job_id / "artifacts" / "checkpoints"
    assert [info.step for info in list_checkpoints(checkpoints_dir)] == [4]
    assert sorted(p.name for p in checkpoints_dir.iterdir()) == [
        "checkpoint-4",
        "retention.json",
    ]  # no partial copy
    filler.unlink()  # space again: the next attempt resumes from checkpoint-4, once its retry backoff is over
    assert execute_job(job_settings, job_id) == "held"
    with db.session_scope(job_settings) as session:
        session.get(Job, job_id).not_before = None  # as if RETRY_BACKOFF_SECONDS had gone by
    assert execute_job(job_settings, job_id) == "succeeded"
    with db.session_scope(job_settings) as session:
        job = session.get(Job, job_id)
        assert (job.status, job.attempts, job.progress["step"]) == ("succeeded", 2, 16)
        events = jobs.job_events(session, local_user(session), job_id)
    assert [e["message"] for e in events if e["kind"] == "resumed"] == ["resuming from checkpoint-4"]
