"""finetune-platform: LoRA fine-tuning from a labelled text dataset to a tracked, servable classifier."""

__version__ = "0.1.0"
