"""The forward pass CUDA graphs capture, run eagerly on the CPU: a batch padded to its bucket with the mask
handed over in 4-D gives the real rows the probabilities of the ordinary pass, for every supported family."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from finetune_platform.inference.graphs import forward_probabilities, pad_to_bucket

TEXTS = ["fine.", "a quiet, patient film that earns every minute of its ending", "no"]


def tiny_classifier(tiny_model_factory, family: str):
    folder = tiny_model_factory(family)
    torch.manual_seed(0)
    return AutoTokenizer.from_pretrained(folder), AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=3
    ).eval()


@pytest.mark.parametrize(("family", "ready_mask"), [("bert", True), ("roberta", True), ("distilbert", True),
                                                    ("albert", True), ("deberta-v2", False)])  # fmt: skip
def test_bucket_padding_gives_the_eager_probabilities(tiny_model_factory, family, ready_mask):
    tokenizer, model = tiny_classifier(tiny_model_factory, family)
    encoded = tokenizer(TEXTS, padding=True, return_tensors="np")
    ids, mask = encoded["input_ids"].astype(np.int64), encoded["attention_mask"].astype(np.int64)
    padded_ids, padded_mask = pad_to_bucket(ids, mask, rows=4, width=32, pad_id=tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
        eager = torch.softmax(logits.float(), dim=-1).numpy()
        padded = forward_probabilities(
            model, torch.from_numpy(padded_ids), torch.from_numpy(padded_mask), ready_mask
        ).numpy()
    assert padded.shape == (4, 3)
    np.testing.assert_allclose(padded[: len(TEXTS)], eager, atol=1e-5)
    assert np.isfinite(padded).all()  # the padding row attends to one token: no NaN from an empty softmax


def test_deberta_refuses_a_4d_mask_so_its_graphs_take_the_2d_one(tiny_model_factory):
    tokenizer, model = tiny_classifier(tiny_model_factory, "deberta-v2")
    encoded = tokenizer(TEXTS, padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad(), pytest.raises(RuntimeError, match="must match the size of tensor b"):
        forward_probabilities(model, encoded["input_ids"], encoded["attention_mask"], ready_mask=True)
