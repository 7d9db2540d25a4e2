"""`finetune data …`: validate, analyse, version and diff datasets."""

from __future__ import annotations

import json
import sys
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
    typer.echo(f"{'version':<13} {'rows':>8} {'source':<6} {'parent':<13} {'recorded':<25} file")
    for v in versions:
        typer.echo(
            f"{v.version:<13} {v.rows:>8} {v.source:<6} {v.parent_version or '-':<13} {v.created_at:<25} {v.file}"
        )


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
    from finetune_platform.data.validation import ValidationOptions, validate_file
    from finetune_platform.data.versioning import diff_files, resolve_reference

    try:
        index = _version_index()
        old_path, old_version = resolve_reference(old, index)
        new_path, new_version = resolve_reference(new, index)
        columns = old_version or new_version
        text_column = text_column or (columns.text_column if columns else "text")
        label_column = label_column or (columns.label_column if columns else "label")
        result = diff_files(old_path, new_path, text_column, label_column)
        if new_version is None:  # a file: its recorded version, if any, may carry a lineage
            options = ValidationOptions(text_column=text_column, label_column=label_column)
            new_version = index.of_file(validate_file(new_path, options).content_hash, new_path)
    except PlatformError as error:
        raise fail(error) from None
    lineage = new_version.lineage if new_version is not None else None
    if json_output:
        typer.echo(json.dumps({**result.to_json(), "lineage": lineage}, indent=2))
        return
    typer.echo(result.summary())
    if lineage:
        typer.echo(_lineage_text(new_version.version, lineage))


def _lineage_text(version: str, lineage: dict) -> str:
    removed = ", ".join(f"{kind} {count}" for kind, count in lineage["removed"].items()) or "nothing"
    lines = [
        f"lineage: {version} was made by finetune data fix from version {lineage['from']} "
        f"(--drop {lineage['drop']}, audit {lineage['audit']}): removed {lineage['rows_removed']} rows ({removed})"
    ]
    lines += [f"  row {item['row']}: {item['reason']}" for item in lineage["rows"][:10]]
    if lineage["rows_removed"] > 10:
        lines.append(f"  ... and {lineage['rows_removed'] - 10} more: {lineage['lineage_file']}")
    return "\n".join(lines)


def _columns_from_config(config_path: Path | None, file: Path | None, validation_file: Path | None, **given):
    """FILE, the validation file and the column/task options, the config's data section filling what is not given."""
    if config_path is not None:
        config = load(config_path, [])
        data = config.data
        file = file or data.train_file
        validation_file = validation_file or data.validation_file
        for name, value in (("text_column", data.text_column), ("label_column", data.label_column),
                            ("task", config.task.value), ("text_pair_column", data.text_pair_column),
                            ("label_delimiter", data.label_delimiter)):  # fmt: skip
            given[name] = given[name] or value
    if file is None:
        raise ConfigError("give a dataset FILE or --config")
    return file, validation_file, given


def _validation_options(text_column, label_column, task, text_pair_column, label_delimiter):
    # lazy: pandas and pyarrow, kept off the start of every finetune command
    from finetune_platform.data.validation import TASKS, ValidationOptions

    if task not in (None, *TASKS):
        raise ConfigError(f"--task {task!r} is not one of {', '.join(TASKS)}")
    return ValidationOptions(
        text_column=text_column or "text",
        label_column=label_column or "label",
        task=task or "single_label",
        text_pair_column=text_pair_column,
        label_delimiter=label_delimiter or ",",
    )


def held_out_from_run(run: Path):
    """``data audit --from-run RUN``: the run folder's held-out logits on its validation rows, as probabilities
    by the runtimes' own ``outputs`` (the audit then ranks those rows instead of the embedding classifier's)."""
    # lazy: numpy and the runtimes' output functions, only for an audit from a run
    from finetune_platform.data.audit import load_run_predictions
    from finetune_platform.inference.softmax import outputs

    if not Path(run).is_dir():
        raise ConfigError(f"--from-run {run}: not a run folder (give results/<experiment>/<run>)")
    return load_run_predictions(Path(run), outputs)


class _AuditProgress:
    """The audit engine's (stage, fraction) callback as a progress bar on stderr."""

    def __init__(self, show: bool) -> None:
        self.bar = None
        self.show = show

    def __call__(self, stage: str, fraction: float) -> None:
        if not self.show:
            return
        if self.bar is None:
            # lazy: tqdm, kept off the start of every finetune command
            from tqdm import tqdm

            self.bar = tqdm(total=100, desc="auditing", unit="%", dynamic_ncols=True, file=sys.stderr)
        self.bar.set_description(stage)
        self.bar.update(round(100 * fraction) - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _audit_summary(document: dict, written: dict) -> str:
    summary = document["summary"]
    noise = summary["estimated_label_noise"]
    lines = [f"{role}: {info['path']}: {info['rows_audited']:,} rows audited of {info['rows_read']:,} read"
             for role, info in document["files"].items()]  # fmt: skip
    lines += [
        "likely label errors: "
        + (
            f"{summary['label_errors']:,} (estimated label noise {noise:.1%})"
            if noise is not None
            else "not audited (regression)"
        ),
        f"near-duplicate groups: {summary['near_duplicate_groups']:,} ({summary['cross_split_groups']:,} across "
        f"train and validation, {summary['conflicting_groups']:,} with conflicting labels)",
        f"label pairs confused far above chance: {summary['overlapping_label_pairs']}",
        f"outliers: {summary['outliers']:,}",
    ]
    # The flagged rows, most likely first (an audit may also list ranked rows cleanlab did not flag).
    errors = [item for item in document["label_errors"].get("rows", []) if item.get("flagged", True)][:10]
    if errors:
        lines += [
            "",
            "top label errors:",
            f"  {'file':<10} {'row':>7}  {'given':<12} {'suggested':<12} {'score':>5}  text",
        ]
        lines += [f"  {e['file']:<10} {e['row']:>7}  {str(e['label'])[:12]:<12} {str(e['suggested'])[:12]:<12} "
                  f"{e['score']:>5.3f}  {' '.join(e['text'].split())[:60]}" for e in errors]  # fmt: skip
    groups = document["near_duplicates"].get("groups", [])[:10]
    if groups:
        lines += ["", "near-duplicate groups (leaks and conflicts first):"]
        for group in groups:
            flags = [flag for flag, on in (("leak", group["cross_split"]), ("labels differ", group["conflicting"]))
                     if on]  # fmt: skip
            rows = ", ".join(f"{r['file']} row {r['row']}" for r in group["rows"][:6])
            more = f" and {group['size'] - 6} more" if group["size"] > 6 else ""
            lines.append(f"  group {group['id']}: {rows}{more}" + (f" ({', '.join(flags)})" if flags else ""))
    for pair in document["class_overlap"]:
        lines.append(f"overlap: {pair['suggestion']}")
    lines.append(f"wrote {', '.join(str(path) for path in written.values())}")
    return "\n".join(lines)


@data_app.command("audit")
def data_audit(
    file: DataFile = None,
    validation_file: Annotated[
        Path | None,
        typer.Option("--validation-file", help="Also audit this file, and the leaks between it and FILE."),
    ] = None,
    config_path: Annotated[
        Path | None,
        typer.Option("--config", help="Take the files, columns and task from a training config."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Folder for audit.json, audit.md and the PNG plots (default: ./audit-<FILE's stem>).",
        ),
    ] = None,
    text_column: TextColumn = None,
    label_column: LabelColumn = None,
    task: TaskOption = None,
    text_pair_column: TextPairColumn = None,
    label_delimiter: LabelDelimiter = None,
    folds: Annotated[
        int, typer.Option("--folds", help="k of the stratified k-fold giving out-of-fold predictions (2-20).")
    ] = 5,
    near_duplicate_cosine: Annotated[
        float,
        typer.Option(
            "--near-duplicate-cosine",
            help="Embedding cosine at or above which two rows are near-duplicates (0.5-1).",
        ),
    ] = 0.95,
    outlier_z: Annotated[
        float,
        typer.Option(
            "--outlier-z",
            help="Robust z-score of the distance to the nearest class centroid that makes an outlier.",
        ),
    ] = 5.0,
    from_run: Annotated[
        Path | None,
        typer.Option(
            "--from-run",
            help="A run folder: rank its validation rows for label errors by the run's own held-out "
            "probabilities (eval_predictions.npz) instead of the embedding classifier's.",
        ),
    ] = None,
    show_progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show the progress bar on stderr.")
    ] = True,
    json_output: JsonFlag = False,
) -> None:
    """Audit a dataset for what parses fine but costs a run: likely label errors, near-duplicates and
    train/validation leaks, confused label pairs, outliers. Exit code 0 when audited, 1 when the data cannot be
    read, 2 for a bad option."""
    # lazy: pandas, scikit-learn, cleanlab and the embedder, kept off the start of every finetune command
    from finetune_platform.data.audit import AuditOptions, audit_files

    progress = _AuditProgress(show_progress and not json_output)
    try:
        file, validation_file, columns = _columns_from_config(
            config_path, file, validation_file, text_column=text_column, label_column=label_column, task=task,
            text_pair_column=text_pair_column, label_delimiter=label_delimiter,
        )  # fmt: skip
        options = _validation_options(**columns)
        audit_options = AuditOptions(
            folds=folds,
            near_duplicate_cosine=near_duplicate_cosine,
            outlier_z=outlier_z,
            max_rows=settings().AUDIT_MAX_ROWS,
        )
        run_predictions = held_out_from_run(from_run) if from_run is not None else None
        report = audit_files(
            file, options, validation_file, audit_options, progress=progress, run_predictions=run_predictions
        )
        written = report.write(out or Path(f"audit-{Path(file).stem}"))
    except PlatformError as error:
        progress.close()
        raise fail(error) from None
    progress.close()
    document = report.to_json()
    typer.echo(json.dumps(document, indent=2) if json_output else _audit_summary(document, written))


@data_app.command("fix")
def data_fix(
    file: Annotated[Path, typer.Argument(help="The audited dataset file (never changed).")],
    audit_path: Annotated[
        Path, typer.Option("--audit", help="The audit.json of FILE (finetune data audit).")
    ],
    drop: Annotated[
        str,
        typer.Option(
            "--drop",
            help="What to remove, comma-separated: label_errors (the rows the audit flagged) or label_errors:S "
            "(ranked rows scoring at least S, 0-1), "
            "near_duplicates (all but the first row of each group; train copies of leaks), leaks (train rows of "
            "groups across train and validation), outliers[:Z] (z-score at least Z).",
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", help="The new file, in FILE's format (default: FILE's stem + '-fixed', beside it)."
        ),
    ] = None,
    role: Annotated[
        str, typer.Option("--role", help="Which of the audit's files FILE is: train or validation.")
    ] = "train",
    force: Annotated[bool, typer.Option("--force", help="Replace --output if it exists.")] = False,
    config_path: Annotated[
        Path | None, typer.Option("--config", help="Take the columns and task from a training config.")
    ] = None,
    text_column: TextColumn = None,
    label_column: LabelColumn = None,
    task: TaskOption = None,
    text_pair_column: TextPairColumn = None,
    label_delimiter: LabelDelimiter = None,
    json_output: JsonFlag = False,
) -> None:
    """Write a new file without the rows an audit names (never edits FILE), and record its dataset version with
    the lineage: the version it came from, the audit, and each removed row with why."""
    # lazy: pandas and pyarrow, kept off the start of every finetune command
    from finetune_platform.data.fix import fix_file, record_fix

    try:
        if role not in ("train", "validation"):
            raise ConfigError(f"--role {role!r} is not train or validation")
        file, _, columns = _columns_from_config(
            config_path, file, None, text_column=text_column, label_column=label_column, task=task,
            text_pair_column=text_pair_column, label_delimiter=label_delimiter,
        )  # fmt: skip
        options = _validation_options(**columns)
        result = fix_file(file, audit_path, drop, options, output=output, role=role, force=force)
        version = record_fix(result, options, _version_index())
    except PlatformError as error:
        raise fail(error) from None
    if json_output:
        typer.echo(
            json.dumps(
                {"output": str(result.output), "version": version.version, **version.lineage}, indent=2
            )
        )
        return
    typer.echo(result.summary())
    typer.echo(f"recorded dataset version {version.version} (from {version.parent_version})")
