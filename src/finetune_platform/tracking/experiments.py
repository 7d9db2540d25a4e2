"""Experiments and runs as the tracking store holds them: list, show and compare side by side."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from finetune_platform.errors import NotFoundError
from finetune_platform.settings import Settings
from finetune_platform.tracking.client import mlflow_client
from finetune_platform.tracking.plots import loss_curves_png

SUMMARY_METRICS = ("final_accuracy", "final_macro_f1", "final_loss", "final_train_samples_per_second")


@dataclass
class RunSummary:
    run_id: str
    run_name: str
    experiment: str
    status: str
    started: str
    metrics: dict[str, float]
    params: dict[str, str]
    dataset_version: str | None


@dataclass
class Comparison:
    runs: list[RunSummary]
    metrics: dict[str, dict[str, float | None]]  # metric -> run_id -> value
    differing_params: dict[str, dict[str, str | None]]  # param -> run_id -> value
    loss_curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    plot: str | None = None


class ExperimentStore:
    def __init__(self, settings: Settings) -> None:
        self.client = mlflow_client(settings)

    def experiments(self, only: set[str] | None = None) -> list[dict[str, Any]]:
        """Experiments with their run count, last start and best accuracy; with ``only``, counted over those
        runs, and an experiment holding none of them is left out."""
        listed = []
        for experiment in self.client.search_experiments():
            runs = self.client.search_runs([experiment.experiment_id], max_results=1000)
            if only is not None:
                runs = [r for r in runs if r.info.run_id in only]
            if not runs and (only is not None or experiment.name == "Default"):
                continue
            last = max((r.info.start_time for r in runs), default=None)
            listed.append(
                {
                    "name": experiment.name,
                    "id": experiment.experiment_id,
                    "runs": len(runs),
                    "last_run": _time(last) if last else None,
                    "best_accuracy": max(
                        (
                            r.data.metrics["final_accuracy"]
                            for r in runs
                            if "final_accuracy" in r.data.metrics
                        ),
                        default=None,
                    ),
                }
            )
        return sorted(listed, key=lambda e: e["name"])

    def runs(self, experiment: str, only: set[str] | None = None) -> list[RunSummary]:
        """The experiment's runs, newest first (with ``only``: those of them; none at all is not found)."""
        found = self.client.get_experiment_by_name(experiment)
        missing = NotFoundError(f"no experiment {experiment!r} in the tracking store")
        if found is None:
            raise missing
        runs = self.client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"])
        if only is not None:
            runs = [run for run in runs if run.info.run_id in only]
            if not runs:  # the same answer as for an experiment that does not exist
                raise missing
        return [self._summary(run, experiment) for run in runs]

    def newest_successful_run(self, experiment: str) -> tuple[RunSummary, str | None]:
        """The experiment's newest run (by start) that finished successfully, with its run folder as the run
        recorded it (None if it did not); NotFoundError naming the experiment when it has no such run."""
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            raise NotFoundError(f"no experiment {experiment!r} in the tracking store")
        runs = self.client.search_runs(
            [found.experiment_id],
            filter_string="attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not runs:
            statuses = [run.info.status for run in self.client.search_runs([found.experiment_id])]
            counts = ", ".join(f"{statuses.count(s)} {s.lower()}" for s in sorted(set(statuses))) or "none"
            raise NotFoundError(f"experiment {experiment!r} has no successful run (its runs: {counts})")
        return self._summary(runs[0], experiment), runs[0].data.tags.get("finetune.run_folder")

    def run(self, run_id: str, only: set[str] | None = None) -> RunSummary:
        from mlflow.exceptions import MlflowException  # lazy: mlflow, only when a store is read

        if only is not None and run_id not in only:
            raise NotFoundError(f"no run {run_id!r} in the tracking store")
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            raise NotFoundError(f"no run {run_id!r} in the tracking store") from None
        experiment = self.client.get_experiment(run.info.experiment_id).name
        return self._summary(run, experiment)

    def _summary(self, run: Any, experiment: str) -> RunSummary:
        return RunSummary(
            run_id=run.info.run_id,
            run_name=run.info.run_name,
            experiment=experiment,
            status=run.info.status,
            started=_time(run.info.start_time),
            metrics=dict(run.data.metrics),
            params=dict(run.data.params),
            dataset_version=run.data.tags.get("finetune.dataset_version"),
        )

    def compare(
        self, run_ids: list[str], plot_path: Path | None = None, only: set[str] | None = None
    ) -> Comparison:
        if len(run_ids) < 2:
            raise NotFoundError("compare needs two or more run ids")
        runs = [self.run(run_id, only) for run_id in run_ids]
        metric_names = sorted({m for r in runs for m in r.metrics if m.startswith(("final_", "eval_"))})
        metrics = {name: {r.run_id: r.metrics.get(name) for r in runs} for name in metric_names}
        param_names = sorted({p for r in runs for p in r.params})
        differing = {
            name: {r.run_id: r.params.get(name) for r in runs}
            for name in param_names
            if len({r.params.get(name) for r in runs}) > 1
            and not name.startswith(("resolved.dataset.train_file",))
        }
        curves = {
            f"{r.run_name} ({r.run_id[:8]})": [
                (m.step, m.value) for m in self.client.get_metric_history(r.run_id, "train_loss")
            ]
            for r in runs
        }
        comparison = Comparison(runs, metrics, differing, curves)
        if plot_path is not None:
            comparison.plot = str(loss_curves_png(curves, Path(plot_path), "Training loss by run"))
        return comparison


def _time(milliseconds: int | None) -> str:
    if not milliseconds:
        return ""
    return datetime.fromtimestamp(milliseconds / 1000, UTC).isoformat(timespec="seconds")
