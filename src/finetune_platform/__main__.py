"""`python -m finetune_platform` is the `finetune` command (for machines where the entry point is not installed)."""

from finetune_platform.cli import app

app(prog_name="finetune")
