"""Tiny real runs of the training driver: callbacks, evaluations, atomic checkpoints with retention, resume,
the refusal of older checkpoint formats, and data parallel over gloo processes under torch's elastic launcher."""

from __future__ import annotations

import json
import math
import shutil
from datetime import datetime

import pytest
import torch
import yaml
from safetensors.torch import load_file

from finetune_platform.errors import ConfigError
from finetune_platform.training.callbacks import Callback
from finetune_platform.training.checkpoints import (
    STAGING_DIR,
    CheckpointInfo,
    list_checkpoints,
    select_retained,
)
from finetune_platform.training.config import Device, config_from_dict
from finetune_platform.training.devices import check_devices
from finetune_platform.training.driver import Driver
from finetune_platform.training.fast_gpu import schedule
from finetune_platform.training.guards import NonFiniteLoss, TrainingStopped
from finetune_platform.training.run_folder import read_history
from finetune_platform.training.runner import run_training
from finetune_platform.worker.control import JobCallback, JobControl, JobPreempted, StopKind
from tests.conftest import sentiment_rows, tiny_config_dict, write_csv

pytestmark = pytest.mark.slow

CHECKPOINT_FILES = {
    "COMPLETE",
    "checkpoint_meta.json",
    "optimizer.pt",
    "rng_state.pth",
    "driver_state.json",
    "adapter_model.safetensors",
    "adapter_config.json",
}


@pytest.fixture
def untracked(settings):
    """MLflow off: these tests are about the driver, and a tracked run costs seconds."""
    return settings.model_copy(update={"MLFLOW_ENABLED": False})


@pytest.fixture(scope="module")
def dropout_free_bert(tiny_bert, tmp_path_factory):
    """tiny_bert without hidden or attention dropout: two runs of the same steps give the same weights
    whatever state the random generator is in."""
    folder = tmp_path_factory.mktemp("tiny-bert-no-dropout") / "model"
    shutil.copytree(tiny_bert, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def fast_config(model, train_file, validation_file, output_dir, **training) -> dict:
    raw = tiny_config_dict(model, train_file, validation_file, output_dir, engine="fast", **training)
    raw.update(precision="fp32", registry={"enabled": False})
    return raw


def train(settings, raw: dict, **kwargs):
    return run_training(config_from_dict(raw), settings=settings, show_progress=False, **kwargs)


def adapter_weights(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


def loss_entries(checkpoint) -> list[dict]:
    state = json.loads((checkpoint / "driver_state.json").read_text())
    return [entry for entry in state["history"] if "loss" in entry]


def assert_same_history(ours: list[dict], theirs: list[dict], abs: float) -> None:
    assert [entry.keys() for entry in ours] == [entry.keys() for entry in theirs]
    for mine, other in zip(ours, theirs, strict=True):
        assert mine == pytest.approx(other, abs=abs)


def test_a_run_evaluates_every_epoch_and_keeps_best_last_fastest(untracked, tiny_bert, tmp_path):
    # 100 rows in batches of 8: 12 full batches and one of 4, which a single process keeps.
    train_file = write_csv(tmp_path / "train.csv", sentiment_rows(100, seed=1))
    validation_file = write_csv(tmp_path / "val.csv", sentiment_rows(32, seed=2))
    raw = fast_config(
        tiny_bert,
        train_file,
        validation_file,
        tmp_path / "r",
        epochs=4,
        eval_strategy="epoch",
        eval_steps=None,
    )
    result = train(untracked, raw)
    root = result.run.root
    metrics = json.loads((root / "metrics.json").read_text())

    assert metrics["train"]["global_step"] == 13 * 4
    assert metrics["train"]["epoch"] == pytest.approx(4.0)
    assert [(entry["step"], entry["epoch"]) for entry in metrics["history"]] == [
        (13, 1.0),
        (26, 2.0),
        (39, 3.0),
        (52, 4.0),
    ]
    config = yaml.safe_load((root / "config.yaml").read_text())
    assert config["training"]["engine"] == "fast"
    assert config["resolved"]["engine"] == "fast"
    assert json.loads((root / "run.json").read_text())["status"] == "succeeded"
    logs = (root / "logs.txt").read_text()
    assert "training: 52 steps, 8 samples per step, starting at step 0" in logs
    assert "eval at step 39 (epoch 3.00)" in logs
    assert sum("training.progress: step " in line for line in logs.splitlines()) == 26

    # Only best, last and fastest of the four evaluated checkpoints stay, each complete and of format 2.
    checkpoints = result.run.checkpoints_dir
    history = [CheckpointInfo(root, e["step"], e["epoch"], e["eval_accuracy"]) for e in metrics["history"]]
    expected = select_retained(history, greater_is_better=True, tolerance=0.01)
    kept = list_checkpoints(checkpoints)
    assert [info.step for info in kept] == sorted({info.step for info in expected.values()})
    for info in kept:
        assert {path.name for path in info.path.iterdir()} >= CHECKPOINT_FILES
        meta = json.loads((info.path / "checkpoint_meta.json").read_text())
        assert meta["format"] == 2 and meta["metric_name"] == "eval_accuracy"
        assert meta["metric"] == next(
            e["eval_accuracy"] for e in metrics["history"] if e["step"] == info.step
        )
        saved = json.loads((info.path / "driver_state.json").read_text())
        assert (saved["format"], saved["step"]) == (2, info.step)
    assert {role: entry["step"] for role, entry in metrics["checkpoints"].items()} == {
        role: info.step for role, info in expected.items()
    }
    assert json.loads((checkpoints / "retention.json").read_text()) == metrics["checkpoints"]
    assert not (checkpoints / STAGING_DIR).exists()

    # The final adapter is the best checkpoint's: the final evaluation reproduces that evaluation.
    best = expected["best"]
    best_eval = next(e for e in metrics["history"] if e["step"] == best.step)
    assert metrics["final_checkpoint"] == f"checkpoint-{best.step}"
    assert metrics["eval"]["accuracy"] == pytest.approx(best_eval["eval_accuracy"])
    assert metrics["eval"]["loss"] == pytest.approx(best_eval["eval_loss"], abs=1e-5)
    assert metrics["eval"]["accuracy"] >= 0.9
    final = adapter_weights(result.run.artifacts_dir)
    for name, tensor in adapter_weights(checkpoints / f"checkpoint-{best.step}").items():
        torch.testing.assert_close(final[name], tensor)

    # The logged rates follow the linear schedule with warmup (52 steps, 3 of warmup, no batch scaling).
    factor = schedule("linear", 52, 0.06)
    logged = {entry["step"]: entry["learning_rate"] for entry in loss_entries(checkpoints / "checkpoint-52")}
    assert sorted(logged) == list(range(2, 53, 2))
    assert logged[2] == pytest.approx(1e-2 * 2 / 3)
    assert logged[52] == pytest.approx(1e-2 / 49)
    assert all(logged[step] == pytest.approx(1e-2 * factor(step - 1)) for step in logged)


def test_early_stopping_ends_a_run_after_patience(untracked, tiny_bert, sentiment_data, tmp_path):
    train_file, validation_file = sentiment_data
    raw = fast_config(
        tiny_bert,
        train_file,
        validation_file,
        tmp_path / "r",
        learning_rate=1e-12,
        eval_steps=2,
        early_stopping_patience=2,
        early_stopping_threshold=0.5,
    )
    result = train(untracked, raw)
    # The evaluation at step 2 sets the best; those at 4 and 6 do not beat it by 0.5: the run stops at 6.
    assert result.metrics["train"]["global_step"] == 6
    assert [entry["step"] for entry in result.metrics["history"]] == [2, 4, 6]
    assert [info.step for info in list_checkpoints(result.run.checkpoints_dir)] == [2, 6]
    assert result.metrics["final_checkpoint"] == "checkpoint-2"
    assert json.loads(result.run.state_path.read_text())["status"] == "succeeded"


class PoisonWeights(Callback):
    """Make the weights NaN after step ``step``, as a diverging run would (the model is the driver's)."""

    def __init__(self, step: int, monkeypatch) -> None:
        self.step, self.model = step, None
        original = Driver.train

        def train(driver, resume_from=None):
            self.model = driver.model
            return original(driver, resume_from)

        monkeypatch.setattr(Driver, "train", train)

    def on_step(self, state, control):
        if state.step == self.step:
            with torch.no_grad():
                next(p for p in self.model.parameters() if p.requires_grad).fill_(float("nan"))


def test_a_nan_loss_stops_a_run_without_saving_it(
    untracked, tiny_bert, sentiment_data, tmp_path, monkeypatch
):
    train_file, validation_file = sentiment_data
    raw = fast_config(tiny_bert, train_file, validation_file, tmp_path / "r", eval_steps=12)
    with pytest.raises(NonFiniteLoss) as caught:
        train(untracked, raw, callbacks=[PoisonWeights(13, monkeypatch)])
    # Step 14 is the first NaN forward; the loss logged at step 14 averages steps 13 and 14.
    assert str(caught.value) == (
        "training stopped: loss is nan at step 14 (diverged; try a lower learning rate or fp32); "
        "the last good checkpoint, checkpoint-12, is kept"
    )
    (folder,) = (tmp_path / "r" / "tiny").iterdir()
    assert [info.step for info in list_checkpoints(folder / "artifacts" / "checkpoints")] == [12]
    assert not (folder / "metrics.json").exists()
    state = json.loads((folder / "run.json").read_text())
    assert state["status"] == "failed" and state["error"] == str(caught.value)


class PreemptAt(Callback):
    """A worker shutdown (SIGTERM) arriving while step ``step`` runs."""

    def __init__(self, control: JobControl, step: int) -> None:
        self.control, self.step = control, step

    def on_step(self, state, control):
        if state.step == self.step:
            self.control.request_stop(StopKind.PREEMPT, "worker shutting down")


def preempt_and_resume(settings, raw: dict, step: int):
    """Train until a preemption after ``step`` (which saves checkpoint-<step>), then resume the run."""
    control, reports = JobControl(), []
    config = config_from_dict(raw)
    job = JobCallback(lambda **fields: reports.append(fields["progress"]), control, None)
    with pytest.raises(
        JobPreempted, match=f"^worker shutting down; saved checkpoint-{step} for the next worker$"
    ):
        run_training(
            config, settings=settings, show_progress=False, callbacks=[PreemptAt(control, step), job]
        )
    return reports, run_training(config, resume=True, settings=settings, show_progress=False)


def test_a_preempted_run_resumes_and_ends_with_the_uninterrupted_weights(
    untracked, dropout_free_bert, sentiment_data, tmp_path
):
    train_file, validation_file = sentiment_data
    raw = fast_config(dropout_free_bert, train_file, validation_file, tmp_path / "straight", eval_steps=12)
    straight = train(untracked, raw)

    raw["output_dir"] = str(tmp_path / "preempted")
    # Step 30 is not an evaluation step: the checkpoint exists only because the preemption asked for it.
    reports, resumed = preempt_and_resume(untracked, raw, 30)
    assert reports[-1] == {"step": 30, "max_steps": 96, "epoch": 2.5, "percent": 31.2}
    folder = resumed.run.root
    logs = (folder / "logs.txt").read_text()
    assert "resuming from checkpoint-30" in logs
    assert "training: 96 steps, 8 samples per step, starting at step 30" in logs
    state = json.loads((folder / "run.json").read_text())
    assert state["status"] == "succeeded" and state["attempts"] == 2

    assert resumed.metrics["train"]["global_step"] == straight.metrics["train"]["global_step"] == 96
    assert_same_history(resumed.metrics["history"], straight.metrics["history"], abs=1e-6)
    assert resumed.metrics["final_checkpoint"] == straight.metrics["final_checkpoint"]
    assert resumed.metrics["eval"]["loss"] == pytest.approx(straight.metrics["eval"]["loss"], abs=1e-6)
    # The logged losses after the resume are the uninterrupted run's: the same batches, rates and state.
    ours = loss_entries(resumed.run.checkpoints_dir / "checkpoint-96")
    theirs = loss_entries(straight.run.checkpoints_dir / "checkpoint-96")
    assert [(e["step"], e["learning_rate"]) for e in ours] == [
        (e["step"], e["learning_rate"]) for e in theirs
    ]
    # history.jsonl (what GET /task/{id}/metrics reads): the steps after checkpoint-30 that the first attempt
    # logged were dropped when the resumed run began, so every logging and evaluation step is there once.
    written, expected = read_history(folder / "history.jsonl"), read_history(straight.run.history_path)
    assert [(e["step"], "loss" in e) for e in written] == [(e["step"], "loss" in e) for e in expected]
    assert [e["step"] for e in written if "eval_loss" in e] == [12, 24, 36, 48, 60, 72, 84, 96]
    for mine, other in zip(written, expected, strict=True):
        for key in ("loss", "learning_rate", "grad_norm", "eval_loss", "eval_accuracy", "epoch"):
            assert mine.get(key) == pytest.approx(other.get(key), abs=1e-6), (mine, other)
    assert all(e["samples_per_second"] > 0 and e["eta_seconds"] >= 0 for e in written if "loss" in e)
    assert [e["step"] for e in written if "loss" in e] == [e["step"] for e in ours]  # the driver's history
    assert [e["loss"] for e in ours] == pytest.approx([e["loss"] for e in theirs], abs=1e-4)
    ours, theirs = adapter_weights(resumed.run.artifacts_dir), adapter_weights(straight.run.artifacts_dir)
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-5, rtol=1e-4)
    for name, tensor in adapter_weights(resumed.run.checkpoints_dir / "checkpoint-96").items():
        torch.testing.assert_close(
            tensor, adapter_weights(straight.run.checkpoints_dir / "checkpoint-96")[name]
        )


def test_a_resumed_run_with_dropout_matches_the_uninterrupted_run(
    untracked, tiny_bert, sentiment_data, tmp_path
):
    train_file, validation_file = sentiment_data
    raw = fast_config(tiny_bert, train_file, validation_file, tmp_path / "straight", eval_steps=12)
    straight = train(untracked, raw)
    raw["output_dir"] = str(tmp_path / "preempted")
    _, resumed = preempt_and_resume(untracked, raw, 30)
    ours = adapter_weights(resumed.run.checkpoints_dir / "checkpoint-96")
    theirs = adapter_weights(straight.run.checkpoints_dir / "checkpoint-96")
    for name in ours:  # the tolerance of the SIGKILL resume test (test_resume.py)
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-4, rtol=1e-3)


def test_data_parallel_on_two_cpu_processes_equals_one_process_with_the_global_batch(
    untracked, dropout_free_bert, sentiment_data, tmp_path
):
    train_file, validation_file = sentiment_data
    common = dict(epochs=6, eval_strategy="epoch", eval_steps=None, learning_rate_reference_batch=8)
    raw = fast_config(dropout_free_bert, train_file, validation_file, tmp_path / "dp", devices=2, **common)
    parallel = train(untracked, raw)
    raw = fast_config(
        dropout_free_bert, train_file, validation_file, tmp_path / "one", batch_size=16, **common
    )
    single = train(untracked, raw)

    # 96 rows in global batches of 8 × 2 processes: 6 steps an epoch.
    assert parallel.metrics["train"]["global_step"] == 96 // (8 * 2) * 6 == 36
    assert [entry["step"] for entry in parallel.metrics["history"]] == [6, 12, 18, 24, 30, 36]
    ranks = parallel.run.root / "ranks"
    agent_log = (ranks / "agent.log").read_text()
    assert json.loads((ranks / "launch.json").read_text())["config"]["training"]["devices"] == 2
    assert not (ranks / "train.npz").exists() and not (ranks / "eval.npz").exists()
    logs = parallel.run.logs_path.read_text()
    assert "data parallel over 2 processes under torch's elastic launcher" in logs
    assert "training: 36 steps, 16 samples per step, starting at step 0" in logs
    # The rate is scaled by sqrt(global batch 16 / reference 8); step 2 is past the warmup of int(36 × 0.06).
    logged = loss_entries(parallel.run.checkpoints_dir / "checkpoint-36")
    assert logged[0]["step"] == 2 and logged[0]["learning_rate"] == pytest.approx(1e-2 * math.sqrt(2))
    assert parallel.metrics["eval"]["accuracy"] >= 0.9

    # Each rank takes half of every global batch and one all-reduce averages the gradients: the same updates as one
    # process stepping on the whole batch of 16 at the same (scaled) rate.
    assert single.metrics["train"]["global_step"] == 36
    assert_same_history(parallel.metrics["history"], single.metrics["history"], abs=1e-4)
    ours, theirs = adapter_weights(parallel.run.artifacts_dir), adapter_weights(single.run.artifacts_dir)
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-4, rtol=1e-3)

    # Both ranks ran to the end under the agent and left without tearing down their process group (whose gloo
    # destructor could deadlock): the agent reports success.
    assert "rank 0 finished at step 36" in agent_log and "rank 1 finished at step 36" in agent_log
    waited = logged_at(logs, "final evaluation") - logged_at(logs, "eval at step 36 ")
    assert waited < 30


def logged_at(logs: str, text: str) -> float:
    """Seconds since the epoch of the first logs.txt line containing ``text``."""
    line = next(line for line in logs.splitlines() if text in line)
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _config(**training):
    return config_from_dict({"data": {"train_file": "train.csv"}, "training": training})


@pytest.mark.parametrize("engine", ["auto", "fast"])
def test_auto_and_fast_engines_are_accepted_for_older_configs(engine):
    assert _config(engine=engine).training.engine.value == engine


def test_the_removed_trainer_engine_is_refused_by_name():
    with pytest.raises(ConfigError) as caught:
        _config(engine="trainer")
    assert "training.engine" in str(caught.value)
    assert (
        "'trainer' (the Hugging Face Trainer engine) was removed: every run trains on the platform's driver, on "
        "every device; remove training.engine or set it to 'auto'"
    ) in str(caught.value)


@pytest.mark.parametrize(
    ("engine", "writer"), [("fast", "the fast engine"), (None, "the Hugging Face Trainer engine")]
)
def test_a_run_with_checkpoints_of_the_old_format_is_not_resumed(
    untracked, tiny_bert, sentiment_data, tmp_path, engine, writer
):
    """A run begun before the driver (its checkpoints in format 1: trainer_state.json) fails to resume with a
    message that names the old format; it never starts over silently."""
    train_file, validation_file = sentiment_data
    raw = fast_config(tiny_bert, train_file, validation_file, tmp_path / "r", max_steps=12)
    config = config_from_dict(raw)
    control = JobControl()
    with pytest.raises(JobPreempted):
        run_training(config, settings=untracked, show_progress=False,
                     callbacks=[PreemptAt(control, 6), JobCallback(lambda **_: None, control, None)])  # fmt: skip
    (folder,) = (tmp_path / "r" / "tiny").iterdir()
    checkpoint = folder / "artifacts" / "checkpoints" / "checkpoint-6"
    saved = json.loads((checkpoint / "driver_state.json").read_text())
    (checkpoint / "driver_state.json").unlink()  # as the engines before the driver wrote it
    (checkpoint / "trainer_state.json").write_text(
        json.dumps({"global_step": 6, "log_history": saved["history"]})
    )
    meta = json.loads((checkpoint / "checkpoint_meta.json").read_text())
    meta.pop("format")
    if engine:
        meta["engine"] = engine
    (checkpoint / "checkpoint_meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError) as caught:
        run_training(config, resume=True, settings=untracked, show_progress=False)
    assert str(caught.value) == (
        f"checkpoint-6 was written by {writer} (checkpoint format 1, before this version's format 2); it "
        "cannot be resumed: start the run again (finetune train without --resume)"
    )
    assert json.loads((folder / "run.json").read_text())["status"] == "failed"
    assert (checkpoint / "trainer_state.json").is_file()  # nothing of the old run was removed


def test_several_devices_need_that_many_gpus_or_the_cpu(monkeypatch):
    config = _config(devices=2)
    check_devices(config, Device.CPU)
    check_devices(_config(), Device.MPS)
    with pytest.raises(ConfigError) as caught:
        check_devices(config, Device.MPS)
    assert str(caught.value) == "training.devices: 2 processes need CUDA GPUs (or the CPU); MPS runs one"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # the check's outcome without two real GPUs
    with pytest.raises(ConfigError) as caught:
        check_devices(config, Device.CUDA)
    assert str(caught.value) == (
        "training.devices: 2 GPUs requested but 1 CUDA device(s) visible (check CUDA_VISIBLE_DEVICES)"
    )


def test_too_few_rows_for_one_global_batch_is_refused_before_any_rank_starts(
    untracked, tiny_bert, sentiment_data, tmp_path
):
    train_file, validation_file = sentiment_data  # 96 training rows
    raw = fast_config(tiny_bert, train_file, validation_file, tmp_path / "r", batch_size=64, devices=2)
    with pytest.raises(ConfigError) as caught:
        train(untracked, raw)
    assert str(caught.value) == (
        "training.batch_size: 96 training rows make no full batch of 64 rows × 1 accumulation steps × 2 devices; "
        "lower training.batch_size"
    )
    (run,) = (tmp_path / "r" / "tiny").iterdir()
    assert not (run / "ranks").exists()


def test_a_rank_that_dies_fails_the_run_at_once_with_the_agents_report(
    untracked, tiny_bert, sentiment_data, tmp_path, monkeypatch
):
    """Rank 1's interpreter exits at start (a sitecustomize on its path, as a crash would): the elastic agent
    ends rank 0 and the run fails with the agent's report, not after the rendezvous timeout."""
    train_file, validation_file = sentiment_data
    raw = fast_config(tiny_bert, train_file, validation_file, tmp_path / "r", devices=2)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import os\nif os.environ.get('RANK') == '1':\n    os._exit(3)\n")
    monkeypatch.setenv("PYTHONPATH", f"{site}:{__import__('os').environ.get('PYTHONPATH', '')}")
    with pytest.raises(TrainingStopped) as caught:
        train(untracked, raw)
    assert str(caught.value).startswith("data-parallel training failed (exit 1): ")
    (run,) = (tmp_path / "r" / "tiny").iterdir()
    agent_log = (run / "ranks" / "agent.log").read_text()
    assert "exitcode" in agent_log and ": 3" in agent_log
    assert not (run / "ranks" / "train.npz").exists()
    assert json.loads((run / "run.json").read_text())["status"] == "failed"


def _averager_rank(rank: int, port: int, results) -> None:
    import torch.distributed as dist

    from finetune_platform.training.fast_gpu import GradientAverager

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(rank)  # different initial weights on each rank
        model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
        frozen = model[0].bias
        frozen.requires_grad_(False)
        trained = [p for p in model.parameters() if p.requires_grad]
        averager = GradientAverager(model, trained, world_size=2)
        # plain lists: a tensor in a queue is shared memory that dies with this process
        start = {name: tensor.tolist() for name, tensor in model.state_dict().items()}
        loss = model[0](torch.full((1, 3), float(rank + 1))).sum()  # rank 0: inputs of 1, rank 1: of 2
        loss.backward()
        averager.average()
        gradients = [p.grad.tolist() for p in trained]
        averager.zero()
        results.put((rank, start, gradients, [p.grad.abs().sum().item() for p in trained]))
    finally:
        dist.destroy_process_group()


def test_the_gradient_averager_starts_ranks_from_rank_0_and_averages_their_gradients():
    import torch.multiprocessing as multiprocessing

    from tests.conftest import free_port

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port = free_port()
    processes = [context.Process(target=_averager_rank, args=(rank, port, results)) for rank in (0, 1)]
    for process in processes:
        process.start()
    outcome = dict((rank, rest) for rank, *rest in (results.get(timeout=120) for _ in processes))
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    (start0, gradients0, zeroed0), (start1, gradients1, zeroed1) = outcome[0], outcome[1]
    # every parameter and buffer, trained or frozen, is rank 0's on both ranks
    assert start0.keys() == start1.keys() and len(start0) == 7
    assert start0 == start1
    # d(sum of outputs)/d(weight) is the input: 1 on rank 0, 2 on rank 1, averaged to 1.5 on both
    assert gradients0[0] == gradients1[0] == [[1.5] * 3] * 2
    # the BatchNorm's weight and bias took no part in the loss: zero gradients, still averaged
    assert gradients0[1:] == gradients1[1:] == [[0.0, 0.0], [0.0, 0.0]]
    assert zeroed0 == zeroed1 == [0.0, 0.0, 0.0]


def test_two_nodes_meet_at_a_rendezvous_and_train_as_one_run(untracked, tiny_bert, sentiment_data, tmp_path):
    """Two "nodes" on loopback: `finetune train` with training.nodes: 2 on the first, and on the second the
    torchrun command it prints (started first here: it waits at the rendezvous). One rank each; whichever becomes
    rank 0 reports through the shared run folder."""
    import subprocess
    import sys

    from tests.conftest import free_port

    train_file, validation_file = sentiment_data
    endpoint = f"127.0.0.1:{free_port()}"
    raw = fast_config(tiny_bert, train_file, validation_file, tmp_path / "r", nodes=2, rendezvous=endpoint)
    raw["training"].update(eval_strategy="epoch", eval_steps=None, epochs=2)
    ranks = tmp_path / "r" / "tiny" / "two-nodes" / "ranks"
    command = (
        f"torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint {endpoint} "
        f"--rdzv-id two-nodes -m finetune_platform.training.launch {ranks}"
    )
    with (tmp_path / "second-node.log").open("w") as log:
        second = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", *command.split()[1:]],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            result = train(untracked, raw, run_id="two-nodes")
            assert second.wait(timeout=120) == 0
        finally:
            if second.poll() is None:
                second.kill()
    # 96 rows in global batches of 8 × 2 processes: 6 steps an epoch.
    assert result.metrics["train"]["global_step"] == 12
    assert [entry["step"] for entry in result.metrics["history"]] == [6, 12]
    logs = result.run.logs_path.read_text()
    assert f"waiting for 1 more node(s) at {endpoint}; on each, run: {command}" in logs
    assert "training: 12 steps, 16 samples per step, starting at step 0" in logs
    both = (ranks / "agent.log").read_text() + (tmp_path / "second-node.log").read_text()
    assert "rank 0 finished at step 12" in both and "rank 1 finished at step 12" in both
    assert result.metrics["eval"]["accuracy"] >= 0.5


def _processes_of(folder) -> list[int]:
    """Live processes whose command line names ``folder`` (the agent and its ranks)."""
    from pathlib import Path

    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            status = (entry / "status").read_text()
        except OSError:
            continue
        if str(folder) in command and "State:\tZ" not in status:
            found.append(int(entry.name))
    return found


# under --extended (make test-all), to keep the default run under 20 minutes; the default run sees a dying
# rank end the run at once (test_a_rank_that_dies_fails_the_run_at_once_with_the_agents_report)
@pytest.mark.extended
def test_ranks_do_not_outlive_a_command_killed_outright(cli_env, tiny_bert, sentiment_data, tmp_path):
    """SIGKILL to `finetune train` (a worker killed by the OOM killer, say) while two ranks train: the kernel tells
    the agent, which ends its ranks, so nothing keeps writing into the run folder the next attempt resumes."""
    import signal
    import subprocess

    from tests.conftest import finetune_bin
    from tests.integration.queue_harness import wait_for

    train_file, validation_file = sentiment_data
    raw = fast_config(tiny_bert, train_file, validation_file, tmp_path / "r", devices=2, max_steps=10_000_000)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    command = subprocess.Popen(
        [finetune_bin(), "train", str(config_file), "--run-id", "killed", "--no-progress"],
        env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    ranks = tmp_path / "r" / "tiny" / "killed" / "ranks"
    try:
        wait_for(lambda: (ranks / "events.jsonl").is_file() and b'"log"' in (ranks / "events.jsonl").read_bytes(),
                 180, "the ranks training")  # fmt: skip
        assert len(_processes_of(ranks)) == 3  # the agent and two ranks
        command.send_signal(signal.SIGKILL)
        command.wait(timeout=30)
        wait_for(lambda: not _processes_of(ranks), 60, "the agent and its ranks to end")
    finally:
        command.kill()
        for pid in _processes_of(ranks):
            __import__("os").kill(pid, signal.SIGKILL)
