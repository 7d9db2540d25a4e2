"""Run a `finetune` command the way the API image runs it: with PyTorch, transformers and PEFT unimportable.

Usage: python without_torch.py MODULES_FILE finetune-arguments...  The top-level names of every module the
process has imported are kept written to MODULES_FILE (one per line, rewritten within 0.2 s of a change; a server
killed by a signal runs no exit hooks), so a test can check them against the image's requirement list.
"""

from __future__ import annotations

import importlib.abc
import sys
import threading
import time
from pathlib import Path

BLOCKED = {"torch", "transformers", "peft", "accelerate", "torchvision", "triton"}


class NotInTheImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the API image)", name=name)
        return None


def _record(target: Path) -> None:
    written: set[str] = set()
    while True:
        names = {name.partition(".")[0] for name in list(sys.modules) if not name.startswith("_")}
        if names != written:
            partial = target.with_suffix(".partial")
            partial.write_text("\n".join(sorted(names)) + "\n")
            partial.replace(target)
            written = names
        time.sleep(0.2)


if __name__ == "__main__":
    modules_file, *arguments = sys.argv[1:]
    sys.meta_path.insert(0, NotInTheImage())
    threading.Thread(target=_record, args=(Path(modules_file),), daemon=True).start()
    sys.argv = ["finetune", *arguments]
    from finetune_platform.cli import app

    app()
