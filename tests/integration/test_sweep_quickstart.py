"""configs/sweep_quickstart.yaml: it loads, every value its space may try makes a valid config, it stays the
quickstart with the documented differences, and it runs end to end (a tiny model in place of MiniLM) to a
succeeded sweep whose trials the sweep metrics count."""

from __future__ import annotations

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import select

from finetune_platform.db.models import Job
from finetune_platform.db.session import session_scope, upgrade
from finetune_platform.services import sweeps
from finetune_platform.services.sweep_metrics import SweepCollector
from finetune_platform.services.users import create_user
from finetune_platform.settings import Settings
from finetune_platform.training.sweep_config import (
    Choice,
    LogUniform,
    Pruner,
    Sampler,
    check_space,
    load_sweep,
)
from finetune_platform.worker.executor import execute_job
from tests.conftest import ROOT

SWEEP = ROOT / "configs" / "sweep_quickstart.yaml"
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def test_the_quickstart_sweep_loads_and_every_value_it_may_try_is_valid():
    base, spec = load_sweep(SWEEP)
    config = check_space(spec, base)
    assert (spec.max_trials, spec.parallelism, spec.sampler, spec.pruner) == (
        4,
        2,
        Sampler.TPE,
        Pruner.MEDIAN,
    )
    assert spec.startup_trials < spec.max_trials  # otherwise the pruner could never stop a trial
    assert spec.objective.metric.value == "accuracy"
    learning_rate, rank = spec.space["training.learning_rate"], spec.space["lora.r"]
    assert isinstance(learning_rate, LogUniform) and learning_rate.low < 2.0e-3 < learning_rate.high
    assert isinstance(rank, Choice) and rank.values == [4, 8, 16]
    assert config.model.base_model == "minilm" and config.training.epochs == 3
    assert config.registry.enabled is False  # trials register nothing; `sweep best --promote` does
    header = [line for line in SWEEP.read_text().splitlines() if line.startswith("#")]
    assert "#        finetune sweep submit configs/sweep_quickstart.yaml --wait" in header


def test_the_quickstart_sweep_is_the_quickstart_with_fewer_epochs_and_more_evaluations():
    """Its base config drifts from configs/quickstart.yaml only where its comments say why, and its first
    trial is the quickstart's own learning rate and rank."""
    base, spec = load_sweep(SWEEP)
    quickstart = yaml.safe_load(QUICKSTART.read_text())
    for section in ("model", "data", "lora", "checkpoints"):
        assert base[section] == quickstart[section], section
    differences = {
        key: (quickstart["training"].get(key), value)
        for key, value in base["training"].items()
        if quickstart["training"].get(key) != value
    }
    assert differences == {"epochs": (6, 3), "eval_strategy": ("epoch", "steps"), "eval_steps": (None, 10)}
    assert spec.start_with == [
        {
            "training.learning_rate": quickstart["training"]["learning_rate"],
            "lora.r": quickstart["lora"]["r"],
        }
    ]
    assert base["registry"]["model_name"] == quickstart["registry"]["model_name"]


@pytest.mark.extended  # a minute of training; tests/integration/test_sweeps.py runs sweeps to the end by default
def test_the_quickstart_sweep_runs_to_a_succeeded_sweep(tmp_path, tiny_bert):
    settings = Settings(FINETUNE_HOME=tmp_path / "home", MODEL_REGISTRY_DIR=tmp_path / "cards")
    upgrade(settings)
    sample = ROOT / "data" / "sample"
    base, spec = load_sweep(SWEEP, [
        f"model.base_model={tiny_bert}", "training.epochs=1", "device=cpu", f"output_dir={tmp_path / 'results'}",
        f"data.train_file={sample / 'train.csv'}", f"data.validation_file={sample / 'validation.csv'}",
    ])  # fmt: skip
    with session_scope(settings) as session:
        user = create_user(session, "sweeper", "long enough password")
        submitted = sweeps.submit_sweep(session, user, base, spec, settings=settings)
    assert [trial.status for trial in submitted.trial_list] == ["queued", "queued"]  # parallelism 2
    ran: list[str] = []
    while True:
        with session_scope(settings) as session:
            queued = session.scalars(
                select(Job.id).where(Job.status == "queued").order_by(Job.created_at)
            ).all()
        if not queued:
            break
        for job_id in queued:
            execute_job(settings, job_id)
            ran.append(job_id)
    with session_scope(settings) as session:
        sweep = sweeps.get_sweep(session, user, submitted.id)
    assert sweep.status == "succeeded", sweep.error
    trials = sorted(sweep.trial_list, key=lambda trial: trial.number)
    assert [trial.number for trial in trials] == [0, 1, 2, 3] and len(ran) == 4
    assert {trial.status for trial in trials} <= {"succeeded", "pruned"}
    assert trials[0].params == {"training.learning_rate": 2.0e-3, "lora.r": 8}  # start_with: the quickstart's
    for trial in trials:
        assert 5.0e-4 <= trial.params["training.learning_rate"] <= 5.0e-3 and trial.params["lora.r"] in (
            4,
            8,
            16,
        )
    succeeded = [trial for trial in trials if trial.status == "succeeded"]
    assert succeeded and sweep.best_task_id in {trial.task_id for trial in succeeded}

    registry = CollectorRegistry()
    registry.register(SweepCollector(settings))
    metrics = generate_latest(registry).decode()
    assert f'sweep_trials_total{{state="succeeded"}} {float(len(succeeded))}' in metrics
    assert f'sweep_trials_total{{state="pruned"}} {float(4 - len(succeeded))}' in metrics
    assert 'sweep_trials_total{state="failed"} 0.0' in metrics and "sweeps_running 0.0" in metrics
