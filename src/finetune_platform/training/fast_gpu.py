"""The fast path for short-text LoRA training on a GPU, where per-step overhead and padding, not arithmetic, are
the limit (SST-2 sentences are ~13 tokens: a plain Trainer keeps an H100 about 1% busy).

What it does differently from the HF Trainer path:
- the whole dataset is tokenised once and kept on the device as one padded id matrix; a batch is an index gather
  on the GPU, never a CPU collate and copy;
- batches are length-bucketed: each epoch shuffles, sorts chunks of 64 batches by length and pads every batch
  only to its own longest text (rounded up to a multiple of 8 on a GPU, where tensor cores want it; exactly on
  a CPU, where every padded token costs its share of the time), so almost no compute goes to padding;
- large batches (default 256) with the learning rate scaled by sqrt(batch / 32) from the configured one, and a
  linear warmup, which keeps accuracy at the larger batch;
- bf16 autocast (fp32 master LoRA weights), SDPA attention, the fused AdamW, no host sync in the step (the loss
  is read every ``log_every`` steps);
- a CUDA out-of-memory error halves the micro-batch and doubles gradient accumulation, so the effective batch
  and the result stay the same, and says so in the log;
- data-parallel (WORLD_SIZE > 1, over NCCL or gloo): each rank takes its share of every length-sorted global
  batch; the trained parameters' gradients live in one flat buffer, averaged by one all-reduce per optimizer
  step (``GradientAverager``), which leaves the model itself as on one GPU (and compilable the same way).

It needs only torch, transformers and PEFT, so the GPU benchmark can run it on a machine without the platform's
services. ``training.driver`` runs it for every platform run, on every device.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from finetune_platform.training.losses import task_row_losses

logger = logging.getLogger("finetune_platform.training")

PAD_MULTIPLE = 8


def pad_multiple(device: Any) -> int:
    """Batch widths round up to this on ``device``: 8 for a GPU's tensor cores, 1 on a CPU (no such units: a
    padded token only costs time)."""
    return 1 if torch.device(device).type == "cpu" else PAD_MULTIPLE


CHUNK_BATCHES = 64  # batches sorted by length together: enough to bucket well, few enough to stay random


class RankOutOfMemory(RuntimeError):
    """CUDA ran out of memory in a data-parallel run, where the micro-batch cannot be halved on one rank alone."""


SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup", "polynomial")


@dataclass
class FastSettings:
    batch_size: int = 256  # rows per optimizer step on each process (micro-batches × accumulation)
    base_learning_rate: float = 1e-3  # the rate for ``reference_batch``; scaled by sqrt(global batch / it)
    reference_batch: int | None = 32  # None: no scaling, ``base_learning_rate`` is the peak rate
    epochs: float = 3.0
    max_steps: int | None = None  # overrides epochs when set
    micro_batch: int | None = None  # rows per forward pass; None = batch_size (no accumulation)
    scheduler: str = "linear"  # after warmup: one of SCHEDULES
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 42
    group_by_length: bool = True  # length buckets; off: batches of random rows (more padding)
    bf16: bool = True
    fp16: bool = False  # fp16 autocast with a gradient scaler (GPUs without bf16)
    log_every: int = 50
    # torch.compile mode: None (eager), "default" (fused kernels) or "reduce-overhead" (fused kernels replayed
    # as CUDA graphs: no per-kernel launch cost). Compiled runs pad to multiples of 16 and drop the last
    # partial batch of an epoch, so a handful of shapes is compiled once each.
    compile: str | None = None
    # The training loss (evaluation is never weighted): single_label (cross entropy), multi_label (binary cross
    # entropy over rows and labels) or regression (squared error); one weight per class id (multi_label: each
    # label's pos_weight), and focal loss's gamma (single_label); both None is the plain mean loss.
    task: str = "single_label"
    class_weights: tuple[float, ...] | None = None
    focal_gamma: float | None = None

    @property
    def autocast(self) -> Any:
        """The autocast dtype, or None for fp32."""

        return torch.bfloat16 if self.bf16 else torch.float16 if self.fp16 else None

    @property
    def learning_rate(self) -> float:
        """The peak rate of a run on ``WORLD_SIZE`` processes (1 outside torchrun)."""
        return self.scaled_rate(world()[1])

    def scaled_rate(self, world_size: int) -> float:
        """The peak rate for the global batch: ``base_learning_rate`` × sqrt(batch × processes / reference)."""
        if self.reference_batch is None:
            return self.base_learning_rate
        return self.base_learning_rate * math.sqrt(self.batch_size * world_size / self.reference_batch)


@dataclass
class DeviceData:
    """Token ids (padded to the longest text) and labels, resident on the device."""

    ids: Any  # (rows, longest) int64
    lengths: Any  # (rows,) int64, on the CPU too (the batch plan is made there)
    # single_label (rows,) int64 class ids; multi_label (rows, labels) float32 0/1; regression (rows,) float32
    # standardised targets (``training.targets``)
    labels: Any
    host_lengths: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def to_device(
    tokenizer: Any,
    texts: list[str],
    labels: Any,
    max_length: int,
    device: Any,
    pairs: list[str] | None = None,
) -> DeviceData:
    """Tokenise ``texts`` (with ``pairs``: each row the pair (text, pair), joined by the tokenizer's own
    separator) and put ids and ``labels`` (a list of class ids, or an array of any of DeviceData's label
    shapes, whose dtype is kept) on ``device``."""

    encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length)["input_ids"]
    lengths = np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(encoded))
    longest = int(lengths.max()) if len(lengths) else 1
    pad = tokenizer.pad_token_id or 0
    matrix = np.full((len(encoded), longest), pad, dtype=np.int64)
    for row, ids in enumerate(encoded):
        matrix[row, : len(ids)] = ids
    return DeviceData(
        ids=torch.from_numpy(matrix).to(device),
        lengths=torch.from_numpy(lengths).to(device),
        labels=_label_tensor(labels).to(device),
        host_lengths=lengths,
    )


def _label_tensor(labels: Any) -> Any:
    if isinstance(labels, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(labels))
    return torch.tensor(labels, dtype=torch.int64)


def save_data(data: DeviceData, path: Any) -> None:
    """The rows as arrays on disk, for other processes of the same run (``load_data``)."""
    np.savez(path, ids=data.ids.cpu().numpy(), labels=data.labels.cpu().numpy(), lengths=data.host_lengths)


def load_data(path: Any, device: Any) -> DeviceData:

    with np.load(path) as arrays:
        ids, labels, lengths = arrays["ids"], arrays["labels"], arrays["lengths"]
    return DeviceData(
        ids=torch.from_numpy(ids).to(device),
        lengths=torch.from_numpy(lengths).to(device),
        labels=torch.from_numpy(labels).to(device),
        host_lengths=lengths,
    )


def batch_plan(
    lengths: np.ndarray, batch_size: int, seed: int, shuffle: bool = True, bucket: bool = True
) -> list[np.ndarray]:
    """Row indices of each batch of one epoch: every row exactly once, similar lengths together (``bucket``)."""
    rows = len(lengths)
    order = np.random.default_rng(seed).permutation(rows) if shuffle else np.arange(rows)
    batches = []
    chunk = batch_size * CHUNK_BATCHES
    for start in range(0, rows, chunk):
        part = order[start : start + chunk]
        if bucket:
            part = part[np.argsort(-lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    if shuffle:
        batches = [batches[i] for i in np.random.default_rng(seed + 1).permutation(len(batches))]
    return batches


def shard(plan: list[np.ndarray], rank: int, world_size: int) -> list[np.ndarray]:
    """This rank's part of a plan of global batches: every world_size-th row of each (rows are sorted by
    length within a batch, so every rank pads to about the same width and no rank waits for another)."""
    if world_size == 1:
        return plan
    return [batch[rank::world_size] for batch in plan if len(batch) >= world_size]


def padded_length(longest: int, multiple: int = PAD_MULTIPLE) -> int:
    return max(multiple, -(-longest // multiple) * multiple)


def on_device(plan: list[np.ndarray], device: Any) -> list[tuple[np.ndarray, Any]]:
    """Each batch's indices also as a slice of one tensor on the device (one upload per epoch: a small copy
    per step from pageable memory would wait for the GPU every step)."""

    if not plan:
        return []
    flat = torch.from_numpy(np.concatenate(plan)).to(device)
    bounds = np.cumsum([0, *(len(b) for b in plan)])
    return [(batch, flat[bounds[i] : bounds[i + 1]]) for i, batch in enumerate(plan)]


def _take(
    data: DeviceData, index: np.ndarray, rows: Any, multiple: int = PAD_MULTIPLE
) -> tuple[Any, Any, Any]:

    width = min(padded_length(int(data.host_lengths[index].max()), multiple), data.ids.shape[1])
    ids = data.ids.index_select(0, rows)[:, :width]
    mask = torch.arange(width, device=ids.device)[None, :] < data.lengths.index_select(0, rows)[:, None]
    return ids, mask.to(torch.int64), data.labels.index_select(0, rows)


def world() -> tuple[int, int]:
    """(rank, world size) under torchrun, else (0, 1)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class FastStep:
    """What one optimizer step did: ``loss`` stays on the device (reading it waits for the GPU)."""

    step: int
    epoch: float
    loss: Any
    learning_rate: float
    samples: int  # over all ranks
    tokens: int  # non-pad tokens over all ranks (this rank's, times world size)


@dataclass
class FastResult:
    steps: int
    samples: int
    seconds: float
    samples_per_second: float
    tokens: int  # non-pad tokens seen in training
    final_loss: float
    micro_batch: int
    accumulation: int
    history: list[dict[str, float]] = field(default_factory=list)


class GradientAverager:
    """Data-parallel gradients without DDP's per-parameter hooks: each trained parameter's ``.grad`` is a view
    into one flat fp32 buffer, so backward accumulates into it and one all-reduce per optimizer step averages it
    over the ranks. At construction every rank takes rank 0's parameters and buffers (a randomly initialised
    head or pooler would otherwise differ between ranks)."""

    def __init__(self, model: Any, trained: list[Any], world_size: int) -> None:

        self.world_size = world_size
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)
        self.flat = torch.zeros(
            sum(p.numel() for p in trained), dtype=torch.float32, device=trained[0].device
        )
        offset = 0
        for parameter in trained:
            parameter.grad = self.flat[offset : offset + parameter.numel()].view_as(parameter)
            offset += parameter.numel()

    def average(self) -> None:

        dist.all_reduce(self.flat)
        self.flat.div_(self.world_size)

    def zero(self) -> None:
        self.flat.zero_()


class FastTrainer:
    """Train ``model`` (a PEFT model) on ``train``; ``on_log`` gets {step, loss, lr, samples_per_second}.

    ``steps()`` yields after every optimizer step (the platform's engine drives evaluation, checkpoints and
    callbacks from it); ``train()`` runs them all (the benchmark).
    """

    def __init__(
        self,
        model: Any,
        train: DeviceData,
        settings: FastSettings,
        *,
        device: Any,
        on_log: Callable[[dict[str, float]], None] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:

        self.settings, self.train_data, self.device, self.on_log = settings, train, device, on_log
        self.rank, self.world_size = (rank, world_size) if world_size is not None else world()
        trainable = [p for p in model.parameters() if p.requires_grad]
        # fp32 master weights for what is trained, whatever the base dtype (before the averager, if any, points
        # their gradients into its buffer)
        for parameter in trainable:
            parameter.data = parameter.data.float()
        self.parameters = trainable
        self.model = model
        self.multiple = pad_multiple(device)
        if settings.compile:
            # lazy: dynamo loads only for compiled runs
            from torch import _dynamo

            # one compiled graph per padded width (and micro-batch size after an out-of-memory back-off)
            _dynamo.config.cache_size_limit = max(_dynamo.config.cache_size_limit, 64)
            self.multiple = 16
            self.model = torch.compile(self.model, mode=settings.compile, dynamic=False)
        self.averager = GradientAverager(model, trainable, self.world_size) if self.world_size > 1 else None
        self.optimizer = torch.optim.AdamW(
            trainable,
            lr=settings.scaled_rate(self.world_size),
            weight_decay=settings.weight_decay,
            fused=device.type == "cuda",
        )
        # fp16 gradients underflow without loss scaling; bf16 and fp32 need none
        self.scaler = torch.amp.GradScaler(device.type) if settings.fp16 else None
        self._autocast = settings.autocast
        self.class_weights = (
            None
            if settings.class_weights is None
            else torch.tensor(settings.class_weights, dtype=torch.float32, device=device)
        )
        self.grad_norm: Any = None  # the last step's gradient norm, on the device (read at logging steps)
        self.micro_batch = min(settings.micro_batch or settings.batch_size, settings.batch_size)
        self.accumulation = -(-settings.batch_size // self.micro_batch)
        self.steps_per_epoch = len(self._global_plan(0))
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{len(train)} training rows make no batch of {settings.batch_size} on {self.world_size} "
                "processes; lower the batch size"
            )
        self.total_steps = settings.max_steps or max(1, math.ceil(self.steps_per_epoch * settings.epochs))
        self._factor = schedule(settings.scheduler, self.total_steps, settings.warmup_ratio)

    def _global_plan(self, epoch: int) -> list[np.ndarray]:
        """The epoch's batches over all ranks (the same on every rank: same seed)."""
        size = self.settings.batch_size * self.world_size
        plan = batch_plan(
            self.train_data.host_lengths,
            size,
            self.settings.seed + epoch,
            bucket=self.settings.group_by_length,
        )
        if len(plan) > 1 and (self.settings.compile or self.world_size > 1):
            # compiled: one batch shape; data-parallel: every rank a full share of every step. The one partial
            # batch of an epoch can be anywhere in the (shuffled) plan.
            plan = [batch for batch in plan if len(batch) == size]
        return plan

    def _plan(self, epoch: int) -> list[tuple[np.ndarray, Any]]:
        return on_device(shard(self._global_plan(epoch), self.rank, self.world_size), self.device)

    def learning_rate(self, step: int) -> float:
        """The rate of optimizer step ``step`` (0-based)."""
        return self.settings.scaled_rate(self.world_size) * self._factor(step)

    def _forward_backward(self, index: np.ndarray, rows: Any) -> Any:
        """One optimizer step's gradients for the rows in ``index`` (split into micro-batches)."""

        total = None
        starts = range(0, len(index), self.micro_batch)
        pieces = [(index[i : i + self.micro_batch], rows[i : i + self.micro_batch]) for i in starts]
        for piece, piece_rows in pieces:
            ids, mask, labels = _take(self.train_data, piece, piece_rows, self.multiple)
            dtype = self._autocast
            with torch.autocast(self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                logits = self.model(input_ids=ids, attention_mask=mask).logits
                loss = self._loss(logits, labels, len(index))
            (loss if self.scaler is None else self.scaler.scale(loss)).backward()
            total = loss.detach() if total is None else total + loss.detach()
        if self.averager is not None:
            self.averager.average()
        return total

    def _loss(self, logits: Any, labels: Any, batch_rows: int) -> Any:
        """A micro-batch's share of the step's mean loss over ``batch_rows`` rows."""
        s = self.settings
        if s.task == "single_label" and self.class_weights is None and s.focal_gamma is None:
            return torch.nn.functional.cross_entropy(logits.float(), labels) * (len(labels) / batch_rows)
        losses = task_row_losses(s.task, logits, labels, weights=self.class_weights, gamma=s.focal_gamma)
        return losses.sum() / batch_rows

    def steps(self, start_step: int = 0) -> Iterator[FastStep]:
        """Train from ``start_step`` (a resumed run: the optimizer state loaded, the same batches follow)."""
        self.model.train()
        step = start_step
        epoch, skip = divmod(start_step, self.steps_per_epoch)
        while step < self.total_steps:
            for position, (index, rows) in enumerate(self._plan(epoch)[skip:], start=skip):
                if step >= self.total_steps:
                    return
                rate = self.learning_rate(step)
                for group in self.optimizer.param_groups:
                    group["lr"] = rate
                loss = self._step(index, rows)
                step += 1
                yield FastStep(
                    step=step,
                    epoch=epoch + (position + 1) / self.steps_per_epoch,
                    loss=loss,
                    learning_rate=rate,
                    samples=len(index) * self.world_size,
                    tokens=int(self.train_data.host_lengths[index].sum()) * self.world_size,
                )
            epoch, skip = epoch + 1, 0

    def train(self) -> FastResult:

        s = self.settings
        samples, tokens, history = 0, 0, []
        running = torch.zeros((), device=self.device)
        started = last_log = time.perf_counter()
        last_step, last_samples, final_loss = 0, 0, float("nan")
        for done in self.steps():
            running += done.loss
            samples += done.samples
            tokens += done.tokens
            if done.step % s.log_every == 0 or done.step == self.total_steps:
                now = time.perf_counter()
                final_loss = float(running) / (done.step - last_step)  # the one host sync per log interval
                entry = {
                    "step": done.step,
                    "epoch": round(done.epoch, 3),
                    "loss": round(final_loss, 4),
                    "lr": done.learning_rate,
                    "samples_per_second": round((samples - last_samples) / (now - last_log), 1),
                }
                history.append(entry)
                if self.on_log is not None and self.rank == 0:
                    self.on_log(entry)
                running.zero_()
                last_step, last_samples, last_log = done.step, samples, now
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - started
        return FastResult(
            steps=self.total_steps,
            samples=samples,
            seconds=seconds,
            samples_per_second=samples / seconds,
            tokens=tokens,
            final_loss=final_loss,
            micro_batch=self.micro_batch,
            accumulation=self.accumulation,
            history=history,
        )

    def _step(self, index: np.ndarray, rows: Any) -> Any:

        while True:
            try:
                loss = self._forward_backward(index, rows)
                break
            except torch.OutOfMemoryError as exc:
                self.optimizer.zero_grad(set_to_none=True)
                if (
                    self.world_size > 1
                ):  # one rank cannot change its batches alone: the collectives would differ
                    raise RankOutOfMemory(
                        f"CUDA out of memory on data-parallel rank {self.rank} with micro-batches of "
                        f"{self.micro_batch} rows; use smaller batches"
                    ) from exc
                if self.micro_batch == 1:
                    raise
                self.micro_batch = max(1, self.micro_batch // 2)
                self.accumulation = -(-self.settings.batch_size // self.micro_batch)
                torch.cuda.empty_cache()
                logger.warning(
                    "CUDA out of memory: continuing with micro-batches of %d and %d accumulation steps "
                    "(the effective batch of %d is unchanged)",
                    self.micro_batch,
                    self.accumulation,
                    self.settings.batch_size,
                )
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        self.grad_norm = torch.nn.utils.clip_grad_norm_(
            self.parameters, self.settings.max_grad_norm, foreach=True
        )
        if self.scaler is None:
            self.optimizer.step()
        else:  # skips the step when the scaled gradients overflowed, and lowers the scale
            self.scaler.step(self.optimizer)
            self.scaler.update()
        if self.averager is not None:
            self.averager.zero()
        else:
            self.optimizer.zero_grad(set_to_none=True)
        return loss


def schedule(name: str, total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    """The learning-rate factor of step ``step``: linear warmup, then ``name`` (a pure function of the step,
    so a resumed run continues on the same curve)."""
    if name not in SCHEDULES:
        raise ValueError(f"scheduler {name!r}: choose one of {', '.join(SCHEDULES)}")
    warmup = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if name == "constant":
            return 1.0
        if step < warmup:
            return (step + 1) / warmup
        if name in ("constant", "constant_with_warmup"):
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if name == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)  # linear, and polynomial of power 1

    return factor


def predict(
    model: Any, data: DeviceData, batch_size: int = 1024, bf16: bool = True, *, fp16: bool = False
) -> np.ndarray:
    """Logits for every row, in row order (batched by length; bf16 or fp16 autocast when asked)."""

    model.eval()
    device = data.ids.device
    out = torch.empty((len(data), model.config.num_labels), dtype=torch.float32, device=device)
    dtype = torch.bfloat16 if bf16 else torch.float16
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=bf16 or fp16):
        for index, rows in on_device(
            batch_plan(data.host_lengths, batch_size, seed=0, shuffle=False), device
        ):
            ids, mask, _ = _take(data, index, rows, pad_multiple(device))
            out[rows] = model(input_ids=ids, attention_mask=mask).logits.float()
    return out.cpu().numpy()


def accuracy(
    model: Any, data: DeviceData, batch_size: int = 1024, bf16: bool = True, *, fp16: bool = False
) -> float:
    logits = predict(model, data, batch_size, bf16, fp16=fp16)
    return float((logits.argmax(-1) == data.labels.cpu().numpy()).mean())
