"""Ways a training stops early on purpose, and the guard that stops it when the loss stops being a number.

A callback that wants the run to end sets ``control.should_training_stop`` and leaves the reason in
``stop_error``; the recipe raises it once the Trainer has returned, so evaluation, saving and
registration never run on a run that did not finish.
"""

from __future__ import annotations

import contextlib
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from finetune_platform.errors import PlatformError
from finetune_platform.training.checkpoints import newest_checkpoint


class TrainingStopped(PlatformError):
    """Training ended before its last step; ``retryable`` says whether another attempt could succeed."""

    retryable = False


class NonFiniteLoss(TrainingStopped):
    pass


class CheckpointSaveError(TrainingStopped):
    """Writing a checkpoint failed (disk full, quota, I/O error); the previous checkpoints are intact."""

    retryable = True


def kept_checkpoint(checkpoints_dir: Path) -> str:
    info = newest_checkpoint(checkpoints_dir)
    return f"the last good checkpoint, {info.path.name}, is kept" if info else "no checkpoint had been saved"


@contextlib.contextmanager
def staging_checkpoint(staged: Path, checkpoints_dir: Path) -> Iterator[Path]:
    """Write a checkpoint into ``staged`` (emptied first). Disk full, quota or an I/O error removes the partial copy
    and becomes a CheckpointSaveError; the checkpoints already in ``checkpoints_dir`` are untouched."""
    shutil.rmtree(staged, ignore_errors=True)
    try:
        yield staged
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
        shutil.rmtree(staged, ignore_errors=True)
        raise CheckpointSaveError(
            f"saving {staged.name} failed: {getattr(exc, 'strerror', None) or exc} "
            f"({getattr(exc, 'filename', None) or staged}); "
            f"{kept_checkpoint(checkpoints_dir)}"
        ) from exc


class NonFiniteLossGuard(TrainerCallback):
    """Stop at the first logged loss or gradient norm that is NaN or infinite, without saving that state.

    The Trainer's ``logging_nan_inf_filter`` is turned off by the recipe, so a non-finite step loss
    reaches the logged average instead of being replaced by it.
    """

    def __init__(self, checkpoints_dir: Path) -> None:
        self.checkpoints_dir = checkpoints_dir
        self.stop_error: TrainingStopped | None = None

    def on_log(self, args, state, control, logs: dict[str, Any] | None = None, **kwargs):
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if isinstance(value, int | float) and not math.isfinite(value):
                # This step's weights are already damaged: neither evaluate nor checkpoint them.
                control.should_save = False
                control.should_evaluate = False
                control.should_training_stop = True
                self.stop_error = NonFiniteLoss(
                    f"training stopped: {key} is {value} at step {state.global_step} (diverged; try a lower "
                    f"learning rate or fp32); {kept_checkpoint(self.checkpoints_dir)}"
                )
                return
