"""Adapters of every task (single_label, multi_label, regression; one text or pairs) on a tiny random model,
written as the recipe writes them (adapter, tokenizer, label_map.json), with the logits a plain PyTorch pass
gives for them: what each runtime's answers are checked against, before any training of the new tasks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from finetune_platform.data.loading import LabelMap
from finetune_platform.inference.predictor import AdapterSource, ModelInfo, head_options
from finetune_platform.inference.softmax import outputs

MAX_LENGTH = 32
TOPICS = ("acting", "music", "plot", "visuals")
# A label map per kind of model: the thresholds and the target scale differ from the defaults, so that a runtime
# that ignored them would answer differently.
LABEL_MAPS = {
    "single_label": LabelMap(("neg", "pos"), ("neg", "pos")),
    "multi_label": LabelMap(TOPICS, TOPICS, task="multi_label", thresholds=(0.3, 0.5, 0.7, 0.9)),
    "regression": LabelMap(("score",), (), task="regression", scale=(2.5, 1.5)),
    "pair_single_label": LabelMap(
        ("contradiction", "entailment"), ("contradiction", "entailment"), pair=True
    ),
    "pair_regression": LabelMap(("similarity",), (), task="regression", scale=(2.5, 1.25), pair=True),
}


def write_task_adapter(folder: Path, base: Path, label_map: LabelMap, seed: int = 0) -> Path:
    """A LoRA adapter whose head has ``label_map.num_labels`` outputs, random enough that answers differ by text."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(base, **head_options(label_map))
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=["query", "value"])
    model = get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name or "classifier" in name:
                parameter.normal_(std=0.5 if "lora_B" in name else 2.0)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    (folder / "label_map.json").write_text(json.dumps(label_map.to_json()), encoding="utf-8")
    return folder


def task_source(folder: Path, base: Path, key: str) -> AdapterSource:
    name, _, version = key.partition("@")
    names = LabelMap.from_json(json.loads((folder / "label_map.json").read_text(encoding="utf-8"))).names
    info = ModelInfo(
        name, int(version) if version.isdigit() else None, str(base), "English", names, MAX_LENGTH
    )
    return AdapterSource.of(key, folder, info)


def write_run_folder(root: Path, base: Path, kind: str, seed: int = 0) -> Path:
    """A finished run folder (config.yaml, artifacts/) holding an adapter of ``kind``: what `finetune predict
    --run` and `finetune serve --run` read."""
    label_map = LABEL_MAPS[kind]
    run = root / "results" / kind / "run-1"
    (run / "artifacts").mkdir(parents=True)
    write_task_adapter(run / "artifacts", base, label_map, seed)
    data = {"train_file": str(root / "train.csv")}
    if label_map.pair:
        data["text_pair_column"] = "text_pair"
    config = {
        "experiment": kind,
        "output_dir": str(root / "results"),
        "task": label_map.task,
        "model": {"base_model": str(base), "max_length": MAX_LENGTH},
        "data": data,
        "registry": {"enabled": False},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return run


def reference_outputs(source: AdapterSource, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
    """``softmax.outputs`` of the logits of a plain PyTorch pass (the adapter merged, texts padded together,
    tokenised as training tokenises them): the numbers every runtime must give."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    label_map = source.label_map
    model = AutoModelForSequenceClassification.from_pretrained(
        source.info.base_model, **head_options(label_map), torch_dtype=torch.float32
    )
    model = PeftModel.from_pretrained(model, str(source.adapter_dir)).merge_and_unload().eval()
    tokenizer = AutoTokenizer.from_pretrained(source.files_dir)
    encoded = tokenizer(
        texts, pairs, truncation=True, max_length=source.info.max_length, padding=True, return_tensors="pt"
    )
    with torch.inference_mode():
        logits = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits
    return outputs(logits.numpy(), label_map.task, label_map.temperature, label_map.scale)
