"""The `--input` help of `finetune predict` and `finetune jobs predict` lists every suffix of the format
registry (before: a hand-written "csv, tsv, jsonl, json or parquet", missing .tab, .ndjson and .pq)."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from finetune_platform.data.formats import SUFFIXES, SUFFIXES_TEXT
from tests.conftest import finetune_bin


@pytest.mark.parametrize("command", [["predict"], ["jobs", "predict"]])
def test_input_help_lists_every_registered_suffix(command):
    env = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1", "TERM": "dumb"}
    done = subprocess.run(
        [finetune_bin(), *command, "--help"], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    (line,) = [line for line in done.stdout.splitlines() if line.lstrip("│ *").startswith("--input")]
    assert SUFFIXES_TEXT in line
    assert set(re.findall(r"\.[a-z]+", line)) >= set(SUFFIXES)
