"""The GPU fast path's pieces, run on the CPU with a tiny real model: the batch plan covers every row once with
little padding, a training run learns, and micro-batches with accumulation give the full batch's update."""

from __future__ import annotations

import numpy as np
import pytest

from finetune_platform.training.fast_gpu import (
    FastSettings,
    FastTrainer,
    accuracy,
    batch_plan,
    on_device,
    pad_multiple,
    padded_length,
    to_device,
)
from tests.conftest import sentiment_rows


def test_the_batch_plan_takes_every_row_once_and_groups_lengths():
    lengths = np.random.default_rng(0).integers(3, 60, size=10_000)
    plan = batch_plan(lengths, 64, seed=1)
    taken = np.concatenate(plan)
    assert sorted(taken.tolist()) == list(range(10_000))
    assert [len(b) for b in plan].count(64) == 10_000 // 64
    padded = sum(padded_length(int(lengths[b].max())) * len(b) for b in plan)
    assert padded / lengths.sum() < 1.2  # one padded batch of 10,000 random lengths would be ~1.9
    assert [b.tolist() for b in batch_plan(lengths, 64, seed=1)] == [b.tolist() for b in plan]
    assert [b.tolist() for b in batch_plan(lengths, 64, seed=2)] != [b.tolist() for b in plan]


def test_learning_rate_scales_with_the_square_root_of_the_batch():
    assert FastSettings(batch_size=32, base_learning_rate=1e-3).learning_rate == pytest.approx(1e-3)
    assert FastSettings(batch_size=512, base_learning_rate=1e-3).learning_rate == pytest.approx(4e-3)


def _model(tiny_bert):
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    return get_peft_model(
        model, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=["query", "value"])
    )


def _data(tiny_bert, rows: int = 128):
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    pairs = sentiment_rows(rows, 3)
    texts, labels = [t for t, _ in pairs], [int(label) for _, label in pairs]
    return to_device(tokenizer, texts, labels, 32, torch.device("cpu"))


def test_a_run_on_the_cpu_learns(tiny_bert):
    import torch

    data = _data(tiny_bert)
    model = _model(tiny_bert)
    before = accuracy(model, data, bf16=False)
    logged = []
    settings = FastSettings(batch_size=16, base_learning_rate=1e-2, epochs=4, bf16=False, log_every=8)
    result = FastTrainer(model, data, settings, device=torch.device("cpu"), on_log=logged.append).train()
    assert result.steps == 4 * 128 // 16 and result.samples == 4 * 128
    assert [entry["step"] for entry in logged] == list(range(8, 33, 8))
    assert logged[-1]["loss"] < logged[0]["loss"]
    assert accuracy(model, data, bf16=False) > max(before, 0.75)


def test_micro_batches_with_accumulation_give_the_full_batch_gradient(tiny_bert):
    import torch

    data = _data(tiny_bert, rows=64)
    index = np.arange(64)
    (rows,) = [r for _, r in on_device([index], torch.device("cpu"))]
    gradients = []
    for micro in (64, 16):
        trainer = FastTrainer(
            _model(tiny_bert), data, FastSettings(batch_size=64, bf16=False), device=torch.device("cpu")
        )
        trainer.micro_batch = micro
        trainer.model.train()
        for module in trainer.model.modules():  # dropout off: the same forward both times
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        trainer._forward_backward(index, rows)
        gradients.append(torch.cat([p.grad.flatten() for p in trainer.parameters]))
    torch.testing.assert_close(gradients[0], gradients[1], rtol=1e-4, atol=1e-6)


def test_fp16_trains_through_a_gradient_scaler(tiny_bert):
    """fp16 autocast with loss scaling (GPUs without bf16): the scaler is used every step, the loss goes down,
    and the logged gradient norm is the unscaled one (clipping sees true gradients)."""
    import torch

    data = _data(tiny_bert)
    model = _model(tiny_bert)
    logged = []
    settings = FastSettings(
        batch_size=16, base_learning_rate=1e-2, epochs=4, bf16=False, fp16=True, log_every=8
    )
    trainer = FastTrainer(model, data, settings, device=torch.device("cpu"), on_log=logged.append)
    assert isinstance(trainer.scaler, torch.amp.GradScaler) and trainer.scaler.is_enabled()
    result = trainer.train()
    assert result.steps == 32
    assert logged[-1]["loss"] < logged[0]["loss"]
    assert trainer.scaler.get_scale() > 1.0  # scaled (the first scale is 65536, lowered only on overflow)
    assert 0.0 < float(trainer.grad_norm) < 1e3  # unscaled before clipping: never ~65536 times too large
    assert accuracy(model, data, bf16=False, fp16=True) > 0.75


def test_a_cpu_batch_is_as_wide_as_its_longest_text_a_gpu_batch_a_multiple_of_8(tiny_bert):
    """Padding costs a CPU its share of the time (no tensor cores to feed): each training and evaluation batch
    is exactly as wide as its longest text there; on a GPU widths round up to 8."""
    import torch

    assert pad_multiple(torch.device("cpu")) == 1
    assert pad_multiple("cuda") == 8 and pad_multiple(torch.device("mps")) == 8
    data = _data(tiny_bert)
    model = _model(tiny_bert)
    seen = []  # (width, longest text) of every forward pass
    model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(
            (kwargs["input_ids"].shape[1], int(kwargs["attention_mask"].sum(1).max()))
        ),
        with_kwargs=True,
    )
    FastTrainer(
        model, data, FastSettings(batch_size=16, epochs=1, bf16=False), device=torch.device("cpu")
    ).train()
    accuracy(model, data, bf16=False)
    assert len(seen) == 128 // 16 + 1  # 8 training steps, one evaluation batch
    assert all(width == longest for width, longest in seen), seen
    assert any(width % 8 for width, _ in seen), seen  # the texts' lengths are not all multiples of 8
