"""The fast path's schedule and data-parallel plan: learning-rate factors, rate scaling, per-rank shards, and a
step iterator that resumes on the same batches and rates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from finetune_platform.training import fast_gpu
from finetune_platform.training.fast_gpu import (
    FastSettings,
    FastTrainer,
    batch_plan,
    padded_length,
    schedule,
    shard,
    to_device,
)
from tests.conftest import sentiment_rows

# 100 steps, warmup_ratio 0.1: steps 0..9 warm up to the peak at step 9; the decay runs over steps 10..99.
FACTORS = [
    ("linear", 0, 0.1),
    ("linear", 4, 0.5),
    ("linear", 9, 1.0),
    ("linear", 10, 1.0),
    ("linear", 55, 0.5),
    ("linear", 99, 1 / 90),
    ("polynomial", 55, 0.5),  # power 1: the linear curve
    ("cosine", 4, 0.5),
    ("cosine", 10, 1.0),
    ("cosine", 40, 0.75),
    ("cosine", 55, 0.5),
    ("cosine", 99, 0.5 * (1 + math.cos(math.pi * 89 / 90))),
    ("constant", 0, 1.0),  # no warmup at all
    ("constant", 99, 1.0),
    ("constant_with_warmup", 0, 0.1),
    ("constant_with_warmup", 4, 0.5),
    ("constant_with_warmup", 10, 1.0),
    ("constant_with_warmup", 99, 1.0),
]


@pytest.mark.parametrize(("name", "step", "expected"), FACTORS)
def test_schedule_factor_at_a_step(name, step, expected):
    assert schedule(name, 100, 0.1)(step) == pytest.approx(expected)


def test_no_warmup_starts_at_the_peak():
    factor = schedule("linear", 10, 0.0)
    assert [factor(step) for step in range(10)] == pytest.approx([1 - step / 10 for step in range(10)])


def test_an_unknown_schedule_is_refused_with_the_choices():
    with pytest.raises(ValueError) as caught:
        schedule("exponential", 100, 0.1)
    assert str(caught.value) == (
        "scheduler 'exponential': choose one of linear, cosine, constant, constant_with_warmup, polynomial"
    )


def test_the_rate_scales_with_the_square_root_of_the_global_batch():
    settings = FastSettings(batch_size=64, base_learning_rate=1e-3, reference_batch=32)
    assert settings.scaled_rate(1) == pytest.approx(1e-3 * math.sqrt(2))
    assert settings.scaled_rate(2) == pytest.approx(2e-3)
    assert settings.scaled_rate(8) == pytest.approx(4e-3)
    unscaled = FastSettings(batch_size=64, base_learning_rate=1e-3, reference_batch=None)
    assert unscaled.scaled_rate(1) == unscaled.scaled_rate(8) == 1e-3


def test_each_rank_gets_an_equal_disjoint_share_of_every_batch_with_about_the_same_width():
    lengths = np.random.default_rng(0).integers(3, 60, size=10_000)
    plan = batch_plan(lengths, 64, seed=1)
    shares = [shard(plan, rank, 4) for rank in range(4)]
    assert all(len(share) == len(plan) for share in shares)
    for number, batch in enumerate(plan):
        parts = [share[number] for share in shares]
        assert sorted(np.concatenate(parts).tolist()) == sorted(batch.tolist())
        assert {len(part) for part in parts} == {len(batch) // 4}
        # Rows are sorted by length within a batch and dealt out in turn, so each rank's longest text is one of
        # the batch's four longest: the ranks pad to about the same width and none waits for another.
        longest = [int(lengths[part].max()) for part in parts]
        assert max(longest) - min(longest) <= 1
        assert max(longest) == int(lengths[batch].max())
        assert len({padded_length(value) for value in longest}) <= 2
    assert shard(plan, 0, 1) is plan
    # A batch with fewer rows than processes would leave a rank without work: it is skipped.
    assert [part.tolist() for part in shard([np.array([5]), np.array([1, 2, 3])], 1, 2)] == [[2]]


def _model(tiny_bert):
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    return get_peft_model(
        model, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=["query", "value"])
    )


def _data(tiny_bert, rows: int):
    import torch
    from transformers import AutoTokenizer

    pairs = sentiment_rows(rows, 3)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    return to_device(
        tokenizer, [text for text, _ in pairs], [int(label) for _, label in pairs], 32, torch.device("cpu")
    )


def _trainer(tiny_bert, data, settings: FastSettings, world_size: int = 1) -> FastTrainer:
    import torch

    return FastTrainer(
        _model(tiny_bert), data, settings, device=torch.device("cpu"), rank=0, world_size=world_size
    )


def _schedule_of(steps) -> list[tuple]:
    return [(s.step, s.epoch, s.learning_rate, s.samples, s.tokens) for s in steps]


# 7 steps an epoch: resumed within the first epoch, at its end, within the second, at its end, near the last step
@pytest.mark.parametrize("start", [5, 7, 10, 14, 20])
def test_a_resumed_step_iterator_continues_on_the_same_batches_and_rates(tiny_bert, start):
    data = _data(tiny_bert, rows=100)
    settings = FastSettings(
        batch_size=16, base_learning_rate=5e-3, reference_batch=None, epochs=3, bf16=False, warmup_ratio=0.2
    )
    straight = _schedule_of(_trainer(tiny_bert, data, settings).steps())
    # 100 rows: 6 full batches of 16 and one of 4 each epoch (kept on one process).
    assert [step for step, *_ in straight] == list(range(1, 22))
    assert sorted(samples for *_, samples, _ in straight[:7]) == [4] + [16] * 6
    assert sum(samples for *_, samples, _ in straight) == 300
    assert sum(tokens for *_, tokens in straight) == 3 * int(data.host_lengths.sum())
    assert [epoch for _, epoch, *_ in straight][6::7] == pytest.approx([1.0, 2.0, 3.0])
    assert straight[start - 1][2] == pytest.approx(5e-3 * schedule("linear", 21, 0.2)(start - 1))

    resumed = _schedule_of(_trainer(tiny_bert, data, settings).steps(start))
    assert resumed == straight[start:]


@pytest.mark.parametrize(
    ("world_size", "compile_mode"), [(2, None), (1, "default")], ids=["data-parallel", "compiled"]
)
def test_every_epoch_drops_the_partial_global_batch(tiny_bert, monkeypatch, world_size, compile_mode):
    # Planning needs no process group: no gradient averager.
    monkeypatch.setattr(fast_gpu, "GradientAverager", lambda *arguments: None)
    data = _data(tiny_bert, rows=100)
    settings = FastSettings(batch_size=16 // world_size, epochs=8, bf16=False, seed=7, compile=compile_mode)
    trainer = _trainer(tiny_bert, data, settings, world_size=world_size)
    # Global batches of 16 rows: 6 full ones; the 4 rows left over are dropped in every epoch, wherever the
    # shuffle put their batch (third in epoch 0 with seed 7, last only in some epochs).
    assert [len(batch) for batch in batch_plan(data.host_lengths, 16, seed=7)] == [16, 16, 4, 16, 16, 16, 16]
    assert [[len(batch) for batch in trainer._global_plan(epoch)] for epoch in range(8)] == [[16] * 6] * 8
    assert trainer.steps_per_epoch == 6 and trainer.total_steps == 48
