"""Ways a training stops early on purpose, and the guard that stops it when the loss stops being a number.

A callback that wants the run to end asks the driver to stop and leaves the reason in ``stop_error``; the
recipe raises it once the driver has returned, so evaluation, saving and registration never run on a run that
did not finish (``training.callbacks``).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from finetune_platform.errors import PlatformError
from finetune_platform.training.checkpoints import newest_checkpoint


class TrainingStopped(PlatformError):
    """Training ended before its last step; ``retryable`` says whether another attempt could succeed."""

    retryable = False


class NonFiniteLoss(TrainingStopped):
    pass


class TrialPruned(TrainingStopped):
    """A sweep's pruner judged the trial hopeless at an evaluation: it ends ``pruned``, not failed."""


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
