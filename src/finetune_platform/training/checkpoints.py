"""Atomic checkpoints and the best/last/fastest retention policy.

A checkpoint is written into ``checkpoints/.staging/checkpoint-N``, renamed into place, and only then
marked complete with a ``COMPLETE`` file (itself written atomically). A process killed at any point
leaves either no checkpoint-N, or one without the marker, which resume ignores and the next save removes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_platform.atomic import fsync_dir, write_atomic

COMPLETE_MARKER = "COMPLETE"
META_FILE = "checkpoint_meta.json"
STAGING_DIR = ".staging"
PREFIX = "checkpoint-"


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int
    epoch: float | None
    metric: float | None
    metric_name: str | None = None  # e.g. eval_accuracy: what ``metric`` measures


def is_complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file()


def list_checkpoints(root: Path) -> list[CheckpointInfo]:
    """Complete checkpoints under ``root``, oldest step first."""
    found = []
    if not root.is_dir():
        return found
    for path in root.iterdir():
        if not path.is_dir() or not path.name.startswith(PREFIX) or not is_complete(path):
            continue
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        found.append(
            CheckpointInfo(
                path, int(meta["step"]), meta.get("epoch"), meta.get("metric"), meta.get("metric_name")
            )
        )
    return sorted(found, key=lambda info: info.step)


def newest_checkpoint(root: Path) -> CheckpointInfo | None:
    checkpoints = list_checkpoints(root)
    return checkpoints[-1] if checkpoints else None


def commit_staged(staged: Path, root: Path, meta: dict[str, Any]) -> Path:
    """Move a fully written staging folder into place and mark it complete."""
    write_atomic(staged / META_FILE, json.dumps(meta, indent=2))
    final = root / staged.name
    if final.exists():  # an incomplete leftover from a killed run, or a re-save after resume
        shutil.rmtree(final)
    os.replace(staged, final)
    fsync_dir(root)
    write_atomic(final / COMPLETE_MARKER, json.dumps({"step": meta["step"]}))
    fsync_dir(final)
    return final


def select_retained(
    checkpoints: list[CheckpointInfo], greater_is_better: bool, tolerance: float
) -> dict[str, CheckpointInfo]:
    """Pick the best (by metric), the last (by step) and the fastest: the earliest within tolerance of best."""
    if not checkpoints:
        return {}
    ordered = sorted(checkpoints, key=lambda info: info.step)
    retained = {"last": ordered[-1]}
    scored = [info for info in ordered if info.metric is not None and math.isfinite(info.metric)]
    if scored:
        sign = 1.0 if greater_is_better else -1.0
        # Ties go to the earlier step: the same quality, reached sooner.
        best = max(scored, key=lambda info: (sign * info.metric, -info.step))
        retained["best"] = best
        retained["fastest"] = next(
            (info for info in scored if sign * (best.metric - info.metric) <= tolerance + 1e-12), best
        )
    return retained


def apply_retention(root: Path, greater_is_better: bool, tolerance: float) -> dict[str, CheckpointInfo]:
    """Delete every checkpoint that is not best, last or fastest; record the choice in retention.json."""
    retained = select_retained(list_checkpoints(root), greater_is_better, tolerance)
    keep = {info.path.name for info in retained.values()}
    for path in root.iterdir():
        if path.is_dir() and path.name.startswith(PREFIX) and path.name not in keep and is_complete(path):
            shutil.rmtree(path)
    summary = {
        role: {"checkpoint": info.path.name, "step": info.step, "metric": info.metric}
        for role, info in retained.items()
    }
    write_atomic(root / "retention.json", json.dumps(summary, indent=2))
    return retained


def remove_incomplete(root: Path) -> list[str]:
    """Remove staging leftovers and checkpoints without a completion marker; return their names."""
    removed = []
    if not root.is_dir():
        return removed
    shutil.rmtree(root / STAGING_DIR, ignore_errors=True)
    for path in root.iterdir():
        if path.is_dir() and path.name.startswith(PREFIX) and not is_complete(path):
            shutil.rmtree(path)
            removed.append(path.name)
    return removed
