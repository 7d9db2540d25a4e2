"""Write the generated parts of the documentation: `make docs` (python docs/gen/generate.py).

Every block between ``<!-- generated: NAME -->`` and ``<!-- end generated -->`` in a page under docs/ is
rewritten from the code it describes, so a reference table cannot drift from what it documents:

- ``settings``: the ``Settings`` class (src/finetune_platform/settings.py), one row per environment variable;
- ``config``: ``TrainConfig`` (training/config.py), one table per section with path, type, default, bounds;
- ``cli``: the ``finetune`` Typer app, every command with its arguments, options and help;
- ``helm-values``: the chart's ``## @param`` lines (charts/finetune-platform/values.yaml) with their defaults;
- ``bench NAME``: a benchmark table from bench/results (bench/render_tables.py).

A setting, config field, command, option or chart value without a description stops the generation with a
list of what lacks one: the text belongs at the source. ``--check`` writes nothing and exits 1 naming every
page whose generated blocks are stale; ``--root DIR`` works on a copy of the repository.
"""

from __future__ import annotations

import argparse
import enum
import json
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(
    r"(?P<open><!-- generated: (?P<name>[^>]+?) -->\n)(?P<body>.*?)(?P<close><!-- end generated -->)",
    re.DOTALL,
)


class MissingDescriptions(Exception):
    """Things the documentation would have to describe by hand: they need text at the source."""


CODE_SPAN = re.compile(r"(`+).*?\1")
MARKUP = str.maketrans({"*": "\\*", "_": "\\_", "<": "&lt;", ">": "&gt;"})


def cell(text: Any) -> str:
    """A value as one markdown table cell: one line, pipes escaped, and outside code spans no markup (a `*` or
    `_` in a description is not emphasis, ``<owner>`` is not an HTML tag)."""
    line = " ".join(str(text).split()).replace("|", "\\|")
    parts, last = [], 0
    for span in CODE_SPAN.finditer(line):
        parts += [line[last : span.start()].translate(MARKUP), span.group()]
        last = span.end()
    return "".join([*parts, line[last:].translate(MARKUP)])


def code(value: Any) -> str:
    text = str(value)
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


# --- types, defaults and bounds of pydantic fields -----------------------------------------------------------


def type_name(annotation: Any) -> str:
    """A reader's name for a field's type: ``integer``, ``path or unset``, ``one of `a`, `b` ``…"""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        named = [type_name(arg) for arg in args if arg is not type(None)]
        text = " or ".join(named)
        return f"{text} or unset" if type(None) in args else text
    if origin is typing.Literal:
        return "one of " + ", ".join(code(arg) for arg in args)
    if origin is list:
        return f"list of {type_name(args[0])}s" if args else "list"
    if origin is dict:
        return "JSON object"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(code(member.value) for member in annotation)
    names = {bool: "boolean", int: "integer", float: "number", str: "string", Path: "path"}
    if annotation in names:
        return names[annotation]
    name = getattr(annotation, "__name__", str(annotation))
    return {"SecretStr": "secret"}.get(name, name)


def _number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def bounds(metadata: list[Any], annotation: Any = None) -> str:
    """The constraints pydantic checks, as a reader says them: ``≥ 1, ≤ 64``, ``1 to 128 characters``,
    ``at most 50 items``, a pattern."""
    parts = []
    unit = "items" if "list" in str(annotation) else "characters"
    for item in metadata:
        for attribute, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if getattr(item, attribute, None) is not None:
                parts.append(f"{sign} {_number(getattr(item, attribute))}")
        if getattr(item, "min_length", None) is not None:
            parts.append(f"at least {_number(item.min_length)} {unit}")
        if getattr(item, "max_length", None) is not None:
            parts.append(f"at most {_number(item.max_length)} {unit}")
        if getattr(item, "pattern", None) is not None:
            parts.append(f"matches {code(item.pattern)}")
    return ", ".join(parts)


def default_text(field: Any, *, unset: str = "unset") -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return unset
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, Path):
        value = value.as_posix()
    if isinstance(value, (list, dict)):
        value = json.dumps(value)
    if isinstance(value, bool):
        value = str(value).lower()
    return code(value)


def settings_table() -> str:
    from finetune_platform.settings import Settings  # lazy: imported after sys.path points at this tree

    missing = [name for name, field in Settings.model_fields.items() if not field.description]
    if missing:
        raise MissingDescriptions(f"Settings fields without a description: {', '.join(missing)}")
    lines = ["| variable | type | default | description |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        kind = type_name(field.annotation)
        if limits := bounds(field.metadata, field.annotation):
            kind += f" ({limits})"
        lines.append(f"| `{name}` | {cell(kind)} | {cell(default_text(field))} | {cell(field.description)} |")
    return "\n".join(lines)


def _sections(model: type, prefix: str = "") -> Iterator[tuple[str, str, type]]:
    """(dotted name, description, model) of the config and each of its sections, in field order."""
    from pydantic import BaseModel  # lazy: beside the config import

    yield prefix, (model.__doc__ or "").strip(), model
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _sections(annotation, f"{prefix}{name}.")


def config_tables() -> str:
    from pydantic import BaseModel  # lazy: beside the config import

    from finetune_platform.training.config import TrainConfig  # lazy: imported after sys.path is set

    missing = []
    out: list[str] = []
    for prefix, _doc, model in _sections(TrainConfig):
        section = prefix.rstrip(".") or "top level"
        parent_field = None
        if prefix:
            parent, _, last = prefix.rstrip(".").rpartition(".")
            owner = TrainConfig
            for part in filter(None, parent.split(".")):
                owner = owner.model_fields[part].annotation
            parent_field = owner.model_fields[last]
        rows = []
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                continue
            if not field.description:
                missing.append(f"{prefix}{name}")
            rows.append(
                f"| `{prefix}{name}` | {cell(type_name(annotation))} | {cell(default_text(field))} | "
                f"{cell(bounds(field.metadata, annotation))} | {cell(field.description or '')} |"
            )
        if parent_field is not None and not parent_field.description:
            missing.append(f"the section {section}")
        heading = f"### `{section}`" if prefix else "### Top level"
        out += [heading, ""]
        if parent_field is not None and parent_field.description:
            out += [parent_field.description, ""]
        out += ["| field | type | default | bounds | description |", "|---|---|---|---|---|", *rows, ""]
    if missing:
        raise MissingDescriptions(f"TrainConfig fields without a description: {', '.join(missing)}")
    return "\n".join(out).rstrip()


# --- the command line ----------------------------------------------------------------------------------------


def _is_group(command: Any) -> bool:
    return hasattr(command, "commands")  # typer's groups (its own copy of click's), by what they hold


def _commands(command: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
    if getattr(command, "hidden", False):
        return
    yield path, command
    if _is_group(command):
        for name in sorted(command.commands):
            yield from _commands(command.commands[name], [*path, name])


def _param_type(param: Any, context: Any) -> str:
    if getattr(param, "is_flag", False):
        return "flag"
    text = param.display_type(context).strip("<>").removesuffix(" range")
    text = re.sub(r"^list\[(.*)\]$", r"\1", text)  # a repeatable option says so below
    names = {"str": "text", "int": "integer", "float": "number", "bool": "boolean", "dir": "folder"}
    text = (
        names.get(text, text) if "|" not in text else "one of " + ", ".join(code(c) for c in text.split("|"))
    )
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if low is not None or high is not None:
        limits = [f"≥ {low}" if low is not None else "", f"≤ {high}" if high is not None else ""]
        text += " " + ", ".join(filter(None, limits))
    if param.multiple or param.nargs == -1:
        text += ", repeatable"
    return text


def _param_default(param: Any) -> str:
    if param.required:
        return "required"
    value = param.default
    if callable(value):
        value = None
    if value is None or value == () or value == []:
        return ""
    if getattr(param, "is_flag", False):
        if param.secondary_opts:
            return code(param.opts[0] if value else param.secondary_opts[0])
        return "" if value is False else code("on")
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, (list, tuple)):
        return ", ".join(code(item) for item in value)
    return code(value)


def cli_reference() -> str:
    import typer  # lazy: only the CLI reference needs it

    from finetune_platform.cli import app  # lazy: imported after sys.path is set

    root = typer.main.get_command(app)
    missing = []
    out = []
    for path, command in _commands(root, ["finetune"]):
        name = " ".join(path)
        summary = (command.help or "").strip()
        if not summary:
            missing.append(name)
        if _is_group(command):
            if len(path) == 1:
                out += [summary, ""]
                continue
            out += [f"### `{name}`", "", summary, ""]
            continue
        context = typer.Context(command, info_name=name)
        usage = ["[OPTIONS]"] if any(p.param_type_name == "option" for p in command.params) else []
        for param in command.params:
            if param.param_type_name == "argument":
                word = param.display_name_raw.upper() + ("..." if param.nargs == -1 else "")
                usage.append(word if param.required else f"[{word}]")
        usage = " ".join(usage)
        out += [f"### `{name}`", "", summary, "", "```text", f"{name} {usage}".rstrip(), "```", ""]
        rows = []
        for param in command.params:
            if param.name == "help" or getattr(param, "hidden", False):
                continue
            if param.param_type_name == "argument":
                label = code(param.display_name_raw.upper())
            else:
                label = ", ".join(code(option) for option in [*param.opts, *param.secondary_opts])
            text = (getattr(param, "help", None) or "").strip()
            if not text:
                missing.append(f"{name} {param.name}")
            rows.append(
                f"| {label} | {cell(_param_type(param, context))} | {cell(_param_default(param))} | {cell(text)} |"
            )
        if rows:
            out += ["| argument or option | type | default | description |", "|---|---|---|---|", *rows, ""]
    if missing:
        raise MissingDescriptions("CLI commands or parameters without help: " + "; ".join(missing))
    return "\n".join(out).rstrip()


# --- the Helm chart's values ---------------------------------------------------------------------------------

CHART_VALUES = Path("charts/finetune-platform/values.yaml")
DOC_LINE = re.compile(r"^\s*## ?(?P<text>.*)$")


def _values_docs(text: str) -> list[tuple[str, str, str]]:
    """(kind, name or title, description) of every ``## @section`` and ``## @param`` in order, each joined
    with the ``##`` lines straight after it."""
    entries: list[list[str]] = []
    open_entry = False
    for line in text.splitlines():
        match = DOC_LINE.match(line)
        if match is None:
            open_entry = False
            continue
        words = match["text"]
        if words.startswith("@param "):
            name, _, description = words.removeprefix("@param ").partition(" ")
            entries.append(["param", name, description])
            open_entry = True
        elif words.startswith("@section "):
            entries.append(["section", words.removeprefix("@section "), ""])
            open_entry = True
        elif open_entry and entries:
            entries[-1][2] = f"{entries[-1][2]} {words}".strip()
    return [(kind, name, " ".join(description.split())) for kind, name, description in entries]


def _value_at(values: dict, dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        node = node[part]
    return node


def _inline(value: Any) -> str:
    if isinstance(value, str):
        return code(json.dumps(value)) if value == "" else code(value)
    return code(json.dumps(value, separators=(", ", ": ")))


def helm_values(root: Path) -> str:
    text = (root / CHART_VALUES).read_text(encoding="utf-8")
    values = yaml.safe_load(text)
    out: list[str] = []
    missing = []
    for kind, name, description in _values_docs(text):
        if kind == "section":
            title, _, note = name.partition(" (")
            out += ["", f"### {title}", ""]
            if note or description:
                out += [(f"({note} " + description).strip() if note else description, ""]
            out += ["| value | default | description |", "|---|---|---|"]
            continue
        if not description:
            missing.append(name)
        out.append(f"| `{name}` | {cell(_inline(_value_at(values, name)))} | {cell(description)} |")
    if missing:
        raise MissingDescriptions(f"{CHART_VALUES}: @param without a description: {', '.join(missing)}")
    return "\n".join(out).strip()


# --- pages ---------------------------------------------------------------------------------------------------


def renderers(root: Path) -> dict[str, Callable[[list[str]], str]]:
    sys.path[:0] = [str(root / "src"), str(root)]
    from bench import render_tables  # lazy: bench/ of the tree being documented (--root)

    return {
        "settings": lambda args: settings_table(),
        "config": lambda args: config_tables(),
        "cli": lambda args: cli_reference(),
        "helm-values": lambda args: helm_values(root),
        "bench": lambda args: render_tables.table_for(args[0]),
    }


def render_page(text: str, render: dict[str, Callable[[list[str]], str]], page: str) -> str:
    def replace(match: re.Match[str]) -> str:
        kind, *args = match["name"].split()
        if kind not in render:
            raise SystemExit(f"{page}: unknown generated block {match['name']!r}")
        return f"{match['open']}{render[kind](args).rstrip()}\n{match['close']}"

    return BLOCK.sub(replace, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="repository to document (default: this one)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page is stale")
    options = parser.parse_args(argv)
    root = options.root.resolve()
    render = renderers(root)
    updated = {}
    try:
        for page in sorted((root / "docs").rglob("*.md")):
            text = page.read_text(encoding="utf-8")
            new = render_page(text, render, str(page.relative_to(root)))
            if new != text:
                updated[page] = new
    except MissingDescriptions as missing:
        print(f"docs: {missing}", file=sys.stderr)
        return 2
    stale = [str(page.relative_to(root)) for page in updated]
    if not options.check:
        for page, text in updated.items():
            page.write_text(text, encoding="utf-8")
    if options.check and stale:
        print("stale generated docs (run `make docs`): " + ", ".join(stale), file=sys.stderr)
        return 1
    for name in stale:
        print(f"wrote {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
