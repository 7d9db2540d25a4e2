"""`finetune data …`: validate, analyse, version and diff datasets."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from finetune_platform.cli.common import JsonFlag, fail, load, settings
from finetune_platform.errors import ConfigError, PlatformError

data_app = typer.Typer(help="Validate, analyse, version and diff datasets.", no_args_is_help=True)

DataFile = Annotated[Path | None, typer.Argument(help="Dataset file (CSV, TSV, JSONL, JSON or Parquet).")]
TextColumn = Annotated[
    str | None,
    typer.Option(
        "--text-column", help="Column with the text (default: the config's, a version's, or 'text')."
    ),
]
LabelColumn = Annotated[
    str | None,
    typer.Option(
        "--label-column", help="Column with the label (default: the config's, a version's, or 'label')."
    ),
]
TaskOption = Annotated[
    str | None,
    typer.Option(
        "--task",
        help="single_label (one label per row), multi_label (a JSON list or delimited labels per row) or "
        "regression (a number per row); default: the config's, or single_label.",
    ),
]
TextPairColumn = Annotated[
    str | None,
    typer.Option(
        "--text-pair-column",
        help="Column with a second text per row (sentence pairs: NLI, paraphrase, STS); default: the config's, "
        "or none.",
    ),
]
LabelDelimiter = Annotated[
    str | None,
    typer.Option(
        "--label-delimiter",
        help="multi_label: what separates a row's labels ('a,b'); default: the config's, or ','.",
    ),
]


def _tokenizer(model: str | None):
    if model is None:
        return None
    # lazy: transformers (and the catalogue), kept off the start of every finetune command
    from transformers import AutoTokenizer

    from finetune_platform.catalogue import resolve_base_model

    try:
        return AutoTokenizer.from_pretrained(resolve_base_model(model).source)
    except OSError as exc:
        raise ConfigError(f"--model: cannot load the tokenizer of {model!r} ({exc})") from None


@data_app.command("validate")
def data_validate(
    file: DataFile = None,
    validation_file: Annotated[
        Path | None,
        typer.Option("--validation-file", help="Also validate this file and the overlap with FILE."),
    ] = None,
    config_path: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Take files, columns, task, labels, model and max_length from a training config.",
        ),
    ] = None,
    text_column: TextColumn = None,
    label_column: LabelColumn = None,
    task: TaskOption = None,
    text_pair_column: TextPairColumn = None,
    label_delimiter: LabelDelimiter = None,
    label_names: Annotated[
        str | None,
        typer.Option("--label-names", help="Declared labels, comma-separated (e.g. negative,positive)."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="Tokenizer for token-length checks ('minilm', an id or a folder)."),
    ] = None,
    max_length: Annotated[
        int | None,
        typer.Option(
            "--max-length", help="Token limit for the truncation check (needs --model or --config)."
        ),
    ] = None,
    drop_invalid: Annotated[
        bool,
        typer.Option("--drop-invalid", help="Count row-level errors as dropped rows instead of failing."),
    ] = False,
    validation_split: Annotated[
        float | None,
        typer.Option(
            "--validation-split",
            help=(
                "Without --validation-file: check that this share of FILE's rows can be held out for validation "
                "(every label needs 2 rows, and a validation row each). --config sets it from "
                "data.validation_split."
            ),
        ),
    ] = None,
    root: Annotated[
        Path | None, typer.Option("--root", help="Refuse dataset paths outside this directory.")
    ] = None,
    report_path: Annotated[
        Path | None, typer.Option("--report", help="Also write the JSON report here.")
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Validate a dataset: every problem with its rows and a fix. Exit code 0 when valid, 1 when not."""
    # lazy: pandas and pyarrow, kept off the start of every finetune command
    from finetune_platform.data.loading import resolve_dataset_path
    from finetune_platform.data.validation import ValidationOptions, validate_dataset

    try:
        declared = [name.strip() for name in label_names.split(",")] if label_names else None
        if config_path is not None:
            config = load(config_path, [])
            file = file or config.data.train_file
            validation_file = validation_file or config.data.validation_file
            text_column = text_column or config.data.text_column
            label_column = label_column or config.data.label_column
            task = task or config.task.value
            text_pair_column = text_pair_column or config.data.text_pair_column
            label_delimiter = label_delimiter or config.data.label_delimiter
            declared = declared or config.data.label_names
            model = model or config.model.base_model
            max_length = max_length or config.model.max_length
            drop_invalid = drop_invalid or config.data.invalid_rows == "drop"
            validation_split = validation_split or config.data.validation_split
        if file is None:
            raise ConfigError("give a dataset FILE or --config")
        if validation_split is not None and not 0 < validation_split < 1:
            raise ConfigError(f"--validation-split {validation_split:g}: give a share above 0 and below 1")
        file = resolve_dataset_path(file, root)
        if validation_file is not None:
            validation_file = resolve_dataset_path(validation_file, root)
        options = ValidationOptions(
            text_column=text_column or "text",
            label_column=label_column or "label",
            task=task or "single_label",
            text_pair_column=text_pair_column,
            label_delimiter=label_delimiter or ",",
            label_names=declared,
            tokenizer=_tokenizer(model),
            max_length=max_length if model else None,
            drop_invalid=drop_invalid,
            validation_split=validation_split if validation_file is None else None,
        )
        report = validate_dataset(file, options, validation_file)
    except PlatformError as error:
        raise fail(error) from None
    if report_path is not None:
        report.write_json(report_path)
    typer.echo(json.dumps(report.to_json(), indent=2) if json_output else report.summary())
    if model is None and not json_output:
        typer.echo("(token lengths not checked: give --model and --max-length, or --config)")
    raise typer.Exit(code=0 if report.ok else 1)


@data_app.command("analyze")
def data_analyze(
    file: Annotated[Path, typer.Argument(help="Dataset file.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for analysis.json and the PNG plots.")] = Path(
        "analysis"
    ),
    text_column: TextColumn = None,
    label_column: LabelColumn = None,
    task: TaskOption = None,
    text_pair_column: TextPairColumn = None,
    label_delimiter: LabelDelimiter = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Tokenizer for token lengths ('none' to skip them).")
    ] = "minilm",
    max_length: Annotated[
        int | None, typer.Option("--max-length", help="Marks this limit on the plot.")
    ] = 128,
    json_output: JsonFlag = False,
) -> None:
    """Analyse a dataset: labels, length histograms, vocabulary, top tokens per class (JSON + PNG plots)."""
    # lazy: pandas and pyarrow, kept off the start of every finetune command
    from finetune_platform.data.analysis import analyze_file
    from finetune_platform.data.validation import TASKS

    try:
        if task not in (None, *TASKS):
            raise ConfigError(f"--task {task!r} is not one of {', '.join(TASKS)}")
        analysis = analyze_file(
            file,
            text_column or "text",
            label_column or "label",
            out_dir=out,
            tokenizer=_tokenizer(None if model == "none" else model),
            max_length=max_length,
            task=task or "single_label",
            text_pair_column=text_pair_column,
            label_delimiter=label_delimiter or ",",
        )
    except PlatformError as error:
        raise fail(error) from None
    if json_output:
        typer.echo(json.dumps(analysis, indent=2))
        return
    typer.echo(f"{file}: {analysis['rows']} rows, vocabulary {analysis['vocabulary_size']} words")
    for label, info in analysis["labels"].items():
        top = ", ".join(word for word, _ in analysis["top_tokens"][label][:8])
        typer.echo(f"  {label:<12} {info['rows']:>8} rows ({info['share']:.1%})  top: {top}")
    if analysis["target"]:
        target = analysis["target"]
        typer.echo(
            f"  target: {target['min']:g} to {target['max']:g}, mean {target['mean']:g}, std {target['std']:g}"
        )
    chars = analysis["char_length"]
    typer.echo(f"  characters: mean {chars['mean']}, p95 {chars['p95']}, max {chars['max']}")
    if analysis["token_length"]:
        tokens = analysis["token_length"]
        typer.echo(
            f"  tokens: mean {tokens['mean']}, p95 {tokens['p95']}, max {tokens['max']}; "
            f"{analysis['truncated_share']:.2%} over max_length {max_length}"
        )
    typer.echo(f"wrote {out / 'analysis.json'} and {', '.join(analysis['plots'])}")


def _version_index():
    """The dataset versions in the app database (an earlier release's versions.jsonl is imported once)."""
    # lazy: pandas and pyarrow, kept off the start of every finetune command
    from finetune_platform.data.versioning import VersionIndex

    return VersionIndex(settings())


@data_app.command("version")
def data_version(
    file: Annotated[Path, typer.Argument(help="Dataset file.")],
    text_column: TextColumn = None,
    label_column: LabelColumn = None,
) -> None:
    """Record a dataset version (content hash of the normalised rows) in the app database."""
    # lazy: pandas and pyarrow, kept off the start of every finetune command
    from finetune_platform.data.validation import ValidationOptions
    from finetune_platform.data.versioning import version_file

    options = ValidationOptions(text_column=text_column or "text", label_column=label_column or "label")
    try:
        version, added, _ = version_file(file, options, _version_index())
    except PlatformError as error:
        raise fail(error) from None
    state = "recorded" if added else "already recorded"
    labels = ", ".join(f"{k} {v}" for k, v in version.label_counts.items())
    typer.echo(f"{version.version} {state}: {version.file}, {version.rows} rows ({labels})")


@data_app.command("versions")
def data_versions(json_output: JsonFlag = False) -> None:
    """List recorded dataset versions, oldest first: from the command line, training runs, jobs and uploads."""
    try:
        versions = _version_index().all()
    except PlatformError as error:
        raise fail(error) from None
    if json_output:
        typer.echo(json.dumps([asdict(v) for v in versions], indent=2))
        return
    if not versions:
        typer.echo("no dataset versions recorded yet (finetune data version FILE, or train a model)")
        return
    typer.echo(f"{'version':<13} {'rows':>8} {'source':<6} {'recorded':<25} file")
    for v in versions:
        typer.echo(f"{v.version:<13} {v.rows:>8} {v.source:<6} {v.created_at:<25} {v.file}")


@data_app.command("diff")
def data_diff(
    old: Annotated[str, typer.Argument(help="Older dataset: a file or a recorded version id.")],
    new: Annotated[str, typer.Argument(help="Newer dataset: a file or a recorded version id.")],
    text_column: TextColumn = None,
    label_column: LabelColumn = None,
    json_output: JsonFlag = False,
) -> None:
    """Rows added, removed and relabelled between two datasets (rows matched by normalised text)."""
    # lazy: pandas and pyarrow, kept off the start of every finetune command
    from finetune_platform.data.versioning import diff_files, resolve_reference

    try:
        index = _version_index()
        old_path, old_version = resolve_reference(old, index)
        new_path, new_version = resolve_reference(new, index)
        columns = old_version or new_version
        result = diff_files(
            old_path,
            new_path,
            text_column or (columns.text_column if columns else "text"),
            label_column or (columns.label_column if columns else "label"),
        )
    except PlatformError as error:
        raise fail(error) from None
    typer.echo(json.dumps(result.to_json(), indent=2) if json_output else result.summary())
