"""Write the compose stack's .env from .env.example, with a new random value for every secret (`make env`).

Every secret the compose file needs is empty in .env.example and filled here from Python's `secrets` module, so
no two installs share a password and none is ever written in the repository. An existing file is kept unless
--force: its passwords are also stored in the stack's volumes (PostgreSQL, MLflow's users), which a new .env
does not change: only its empty secrets are filled (so a copy of .env.example, `cp .env.example .env`, becomes a
usable .env): compose refuses to start while any is empty, so no volume holds one yet. Standard library only: it
runs before the virtual environment exists.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _hex(n_bytes: int) -> Callable[[], str]:
    # Hex only: these values go into URLs (postgresql://user:PASSWORD@…, redis://:PASSWORD@…) unescaped.
    return lambda: secrets.token_hex(n_bytes)


# Each secret of .env.example and how it is made: 64 hex digits (256 bits) for keys, 48 (192 bits) for passwords.
GENERATORS: dict[str, Callable[[], str]] = {
    "JWT_SECRET": _hex(32),
    "POSTGRES_PASSWORD": _hex(24),
    "DATABASE_APP_PASSWORD": _hex(24),
    "REDIS_PASSWORD": _hex(24),
    "MLFLOW_ADMIN_PASSWORD": _hex(24),
    "MLFLOW_FLASK_SECRET_KEY": _hex(32),
    "METRICS_TOKEN": _hex(32),
    "GRAFANA_ADMIN_PASSWORD": _hex(24),
    "SERVE_API_KEYS": lambda: json.dumps([secrets.token_urlsafe(32)]),
}


def render(example: str) -> str:
    """The example's text with each empty secret filled in; a secret it lacks or pre-fills is an error."""
    lines, filled = [], set()
    for line in example.splitlines():
        name, equals, value = line.partition("=")
        if equals and not line.startswith("#") and name in GENERATORS:
            if value:
                raise ValueError(f"{name} has a value in the example file: secrets there must be empty")
            line = f"{name}={GENERATORS[name]()}"
            filled.add(name)
        lines.append(line)
    missing = sorted(set(GENERATORS) - filled)
    if missing:
        raise ValueError(f"the example file has no line for {', '.join(missing)}")
    return "\n".join(lines) + "\n"


def fill_empty(text: str) -> tuple[str, int]:
    """The text of an existing .env with each of its empty secrets filled, every other line kept as it is, and
    how many were filled."""
    lines, filled = [], 0
    for line in text.splitlines():
        name, equals, value = line.partition("=")
        if equals and not line.startswith("#") and name in GENERATORS and not value.strip():
            line, filled = f"{name}={GENERATORS[name]()}", filled + 1
        lines.append(line)
    return "\n".join(lines) + "\n", filled


def write_private(path: Path, text: str, force: bool) -> None:
    """Write ``text`` readable by its owner only; refuse an existing file unless ``force``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not force:
        # O_EXCL: never replace a file that appeared since the caller looked.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        return
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", type=Path, default=ROOT / ".env.example", help="template (.env.example)")
    parser.add_argument("--output", type=Path, default=Path(".env"), help="file to write (.env)")
    parser.add_argument("--force", action="store_true", help="replace an existing output file")
    parser.add_argument(
        "--fill",
        action="store_true",
        help="only fill the empty secrets of the existing output file (nothing to fill is no error)",
    )
    args = parser.parse_args(argv)
    if args.fill and not args.output.is_file():
        print(f"make env: no {args.output}: make env writes one (every secret random)", file=sys.stderr)
        return 1
    if args.output.is_file() and not args.force:
        try:
            text, filled = fill_empty(args.output.read_text())
            if filled:
                write_private(args.output, text, force=True)
        except OSError as error:
            print(f"make env: {error}", file=sys.stderr)
            return 1
        if filled:
            print(f"make env: filled {filled} empty secrets in {args.output} (readable by you only)")
            return 0
        if args.fill:
            return 0
    if args.output.exists() and not args.force:
        print(
            f"make env: {args.output} exists; it is kept (its passwords are also stored in the stack's volumes). "
            "FORCE=1 make env writes new secrets over it.",
            file=sys.stderr,
        )
        return 1
    try:
        text = render(args.example.read_text())
        write_private(args.output, text, args.force)
    except (OSError, ValueError) as error:
        print(f"make env: {error}", file=sys.stderr)
        return 1
    print(f"make env: wrote {args.output} with {len(GENERATORS)} new secrets (readable by you only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
