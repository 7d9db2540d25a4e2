"""Run folders: results/<experiment>/<run-id>/ with config.yaml, metrics.json, logs.txt, history.jsonl and
artifacts/.

``run.json`` holds the run's state; its status is in the job row's words (``JobStatus``): running, succeeded,
failed, or cancelled for a run its user stopped (Ctrl-C). ``history.jsonl`` is the run's metrics as it trains,
one JSON object a line: a training entry per logging step (``loss``, ``learning_rate``, ``grad_norm``,
``samples_per_second``, ``eta_seconds``) and an evaluation entry per evaluation (``eval_loss`` and the task's
metrics: ``eval_accuracy``, ``eval_macro_f1`` for single_label, ``eval_micro_f1``, ``eval_macro_f1``,
``eval_subset_accuracy`` for multi_label, ``eval_rmse``, ``eval_mae``, ``eval_pearson``, ``eval_spearman`` for
regression), each with its ``step`` and ``epoch``.
"""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from finetune_platform.atomic import write_atomic
from finetune_platform.db.job_vocabulary import JobStatus
from finetune_platform.errors import ErrorCode, NotFoundError, PlatformError
from finetune_platform.training.checkpoints import STAGING_DIR, newest_checkpoint

STATE_FILE = "run.json"
HISTORY_FILE = "history.jsonl"
# Statuses that run.json files written before it shared the job row's words may hold.
_EARLIER_STATUS = {"interrupted": JobStatus.CANCELLED}


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class RunFolder:
    root: Path

    @property
    def run_id(self) -> str:
        return self.root.name

    @property
    def experiment(self) -> str:
        return self.root.parent.name

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.json"

    @property
    def logs_path(self) -> Path:
        return self.root / "logs.txt"

    @property
    def history_path(self) -> Path:
        return self.root / HISTORY_FILE

    @property
    def state_path(self) -> Path:
        return self.root / STATE_FILE

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "artifacts"

    @property
    def checkpoints_dir(self) -> Path:
        return self.artifacts_dir / "checkpoints"

    @property
    def staging_dir(self) -> Path:
        return self.checkpoints_dir / STAGING_DIR

    @classmethod
    def create(cls, output_dir: Path, experiment: str, run_id: str | None = None) -> RunFolder:
        folder = cls(Path(output_dir) / experiment / (run_id or new_run_id()))
        if folder.root.exists():
            raise PlatformError(
                f"run folder {folder.root} already exists; choose another --run-id or add --resume",
                ErrorCode.CONFLICT,
            )
        folder.checkpoints_dir.mkdir(parents=True)
        return folder

    def read_state(self) -> dict[str, Any]:
        if not self.state_path.is_file():
            return {}
        return json.loads(self.state_path.read_text(encoding="utf-8"))

    @property
    def status(self) -> JobStatus | None:
        """The run's status, None before it first started; an older run folder's words are read as today's."""
        status = self.read_state().get("status")
        return None if status is None else _EARLIER_STATUS.get(status) or JobStatus(status)

    def update_state(self, **changes: Any) -> dict[str, Any]:
        state = {**self.read_state(), **changes, "updated_at": datetime.now(UTC).isoformat()}
        write_atomic(self.state_path, json.dumps(state, indent=2))
        return state

    @classmethod
    def find_resumable(cls, output_dir: Path, experiment: str, run_id: str | None = None) -> RunFolder:
        """The named run, or the newest unfinished run of the experiment."""
        experiment_dir = Path(output_dir) / experiment
        if run_id is not None:
            folder = cls(experiment_dir / run_id)
            if not folder.config_path.is_file():
                raise NotFoundError(f"no run {run_id!r} in {experiment_dir}")
            return folder
        candidates = sorted(
            (cls(path) for path in experiment_dir.glob("*/") if (path / "config.yaml").is_file()),
            key=lambda folder: folder.run_id,
        )
        unfinished = [folder for folder in candidates if folder.status is not JobStatus.SUCCEEDED]
        if not unfinished:
            raise NotFoundError(
                f"nothing to resume: no unfinished run of experiment {experiment!r} in {experiment_dir}"
            )
        return unfinished[-1]

    def newest_checkpoint(self) -> Path | None:
        info = newest_checkpoint(self.checkpoints_dir)
        return info.path if info else None


def append_history(path: Path, entry: dict[str, Any]) -> None:
    """One entry as a line of ``history.jsonl``; a value that is not a finite number is written as null."""
    line = json.dumps({key: _finite(value) for key, value in entry.items()}, allow_nan=False)
    with Path(path).open("a", encoding="utf-8") as handle:
        handle.write(line + "\n")


def read_history(path: Path) -> list[dict[str, Any]]:
    """The entries of ``history.jsonl`` in file order; none when it does not exist yet. A line still being
    written (or cut short by a crash) is skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    entries = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("step"), int):
            entries.append({key: _finite(value) for key, value in entry.items()})
    return entries


def truncate_history(path: Path, step: int) -> None:
    """Keep the entries up to ``step``: a run resumed from the checkpoint of ``step`` trains the later steps
    again, and writes their entries anew."""
    if not Path(path).is_file():
        return
    kept = [entry for entry in read_history(path) if entry["step"] <= step]
    write_atomic(Path(path), "".join(json.dumps(entry, allow_nan=False) + "\n" for entry in kept))


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def latest_run(output_dir: Path, experiment: str | None = None) -> RunFolder | None:
    pattern = f"{experiment}/*/config.yaml" if experiment else "*/*/config.yaml"
    folders = [RunFolder(path.parent) for path in Path(output_dir).glob(pattern)]
    return max(folders, key=lambda f: f.config_path.stat().st_mtime, default=None)
