"""The `finetune` command line. Heavy libraries load only inside the commands that need them."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from finetune_platform import __version__
from finetune_platform.errors import ConfigError, PlatformError

app = typer.Typer(
    name="finetune",
    help="LoRA fine-tuning platform: validate data, train, track, register, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect and validate training configs.", no_args_is_help=True)
runs_app = typer.Typer(help="List run folders and read their logs.", no_args_is_help=True)
data_app = typer.Typer(help="Validate, analyse, version and diff datasets.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(runs_app, name="runs")
experiments_app = typer.Typer(help="Experiments and runs in the tracking store.", no_args_is_help=True)
models_app = typer.Typer(help="The model registry: versions, stages, cards, search.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(experiments_app, name="experiments")
app.add_typer(models_app, name="models")

ConfigPath = Annotated[Path, typer.Argument(help="Training config YAML, e.g. configs/quickstart.yaml.")]
Overrides = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-s", help="Override a config field: --set training.learning_rate=1e-3 (repeatable)."
    ),
]
OutputDir = Annotated[Path, typer.Option("--output-dir", help="Root of the run folders.")]


class _ConsoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("finetune_platform.training.progress")


class _TqdmSafeHandler(logging.Handler):
    """Writes log lines above a live progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def _configure_console_logging() -> None:
    from finetune_platform.settings import get_settings

    root = logging.getLogger("finetune_platform")
    if any(getattr(h, "_finetune_console", False) for h in root.handlers):
        return
    handler = _TqdmSafeHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_ConsoleFilter())
    handler._finetune_console = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(get_settings().LOG_LEVEL.upper())


def _fail(error: PlatformError) -> typer.Exit:
    typer.secho(f"error: {error.message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2 if isinstance(error, ConfigError) else 1)


def _load(config_path: Path, overrides: list[str] | None):
    from finetune_platform.training.config import load_config

    return load_config(config_path, overrides or [])


@app.command()
def train(
    config_path: ConfigPath,
    overrides: Overrides = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the newest unfinished run of this experiment from its newest complete checkpoint.",
        ),
    ] = False,
    run_id: Annotated[
        str | None,
        typer.Option("--run-id", help="With --resume: the run to continue. Without: the new run's id."),
    ] = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show the live progress bar.")
    ] = True,
    json_output: Annotated[bool, typer.Option("--json", help="Print the final metrics as JSON.")] = False,
) -> None:
    """Train a LoRA adapter from a config: validate, train, evaluate, save the run folder, log to MLflow."""
    _configure_console_logging()
    if resume and overrides:
        typer.secho(
            "warning: --set is ignored with --resume: a run continues with its own config.yaml",
            fg=typer.colors.YELLOW,
            err=True,
        )
        overrides = []
    try:
        config = _load(config_path, overrides)
        from finetune_platform.training.runner import run_training

        result = run_training(config, resume=resume, run_id=run_id, show_progress=progress)
    except PlatformError as error:
        raise _fail(error) from None
    evaluation = result.metrics["eval"]
    if json_output:
        typer.echo(
            json.dumps(
                {"run_folder": str(result.run.root), "mlflow_run_id": result.mlflow_run_id, **result.metrics},
                indent=2,
            )
        )
        return
    train_metrics = result.metrics["train"]
    typer.echo("")
    typer.secho(f"run {result.run.run_id} succeeded in {result.wall_seconds:.1f}s", fg=typer.colors.GREEN)
    typer.echo(f"  accuracy         {evaluation['accuracy']:.4f}")
    typer.echo(f"  macro F1         {evaluation['macro_f1']:.4f}")
    typer.echo(f"  samples/s        {train_metrics['samples_per_second'] or 0:.1f}")
    typer.echo(f"  final adapter    {result.metrics['final_checkpoint'] or 'last step'}")
    typer.echo(f"  run folder       {result.run.root}")
    if result.mlflow_run_id:
        typer.echo(f"  mlflow run       {result.mlflow_run_id}")


@config_app.command("validate")
def config_validate(config_path: ConfigPath, overrides: Overrides = None) -> None:
    """Check a config (fields, types, ranges, cross-field rules) without loading data or models."""
    try:
        _load(config_path, overrides)
    except PlatformError as error:
        raise _fail(error) from None
    typer.secho(f"{config_path}: valid", fg=typer.colors.GREEN)


@config_app.command("show")
def config_show(config_path: ConfigPath, overrides: Overrides = None) -> None:
    """Print the fully resolved config (defaults filled in, overrides applied) as YAML."""
    import yaml

    try:
        config = _load(config_path, overrides)
    except PlatformError as error:
        raise _fail(error) from None
    typer.echo(yaml.safe_dump(config.to_yaml_dict(), sort_keys=False, allow_unicode=True), nl=False)


@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON Schema of training configs: every field, its default, constraints and help."""
    from finetune_platform.training.config import TrainConfig

    typer.echo(json.dumps(TrainConfig.model_json_schema(), indent=2))


@runs_app.command("list")
def runs_list(
    experiment: Annotated[str | None, typer.Option(help="Only this experiment.")] = None,
    output_dir: OutputDir = Path("results"),
) -> None:
    """List run folders, newest last, with status and final accuracy."""
    pattern = f"{experiment}/*/config.yaml" if experiment else "*/*/config.yaml"
    rows = []
    for config_file in sorted(output_dir.glob(pattern), key=lambda p: p.stat().st_mtime):
        folder = config_file.parent
        state = json.loads((folder / "run.json").read_text()) if (folder / "run.json").is_file() else {}
        accuracy = ""
        if (folder / "metrics.json").is_file():
            accuracy = f"{json.loads((folder / 'metrics.json').read_text())['eval']['accuracy']:.4f}"
        rows.append((folder.parent.name, folder.name, state.get("status", "?"), accuracy, str(folder)))
    if not rows:
        typer.echo(f"no runs under {output_dir}")
        return
    typer.echo(f"{'experiment':<20} {'run':<24} {'status':<12} {'accuracy':<9} folder")
    for row in rows:
        typer.echo(f"{row[0]:<20} {row[1]:<24} {row[2]:<12} {row[3]:<9} {row[4]}")


@runs_app.command("logs")
def runs_logs(
    run_id: Annotated[str | None, typer.Argument(help="Run id; default: the newest run.")] = None,
    experiment: Annotated[str | None, typer.Option(help="Experiment of the run.")] = None,
    output_dir: OutputDir = Path("results"),
    lines: Annotated[int, typer.Option("--lines", "-n", help="Show the last N lines (0 = all).")] = 0,
) -> None:
    """Print a run's logs.txt (the newest run's by default)."""
    from finetune_platform.training.run_folder import RunFolder, latest_run

    if run_id:
        matches = list(output_dir.glob(f"{experiment or '*'}/{run_id}/logs.txt"))
        folder = RunFolder(matches[0].parent) if matches else None
    else:
        folder = latest_run(output_dir, experiment)
    if folder is None or not folder.logs_path.is_file():
        raise _fail(PlatformError(f"no run logs found under {output_dir}"))
    text = folder.logs_path.read_text(encoding="utf-8").splitlines()
    typer.echo("\n".join(text[-lines:] if lines else text))


DataFile = Annotated[Path | None, typer.Argument(help="Dataset file (CSV, TSV, JSONL, JSON or Parquet).")]
TextColumn = Annotated[
    str | None, typer.Option("--text-column", help="Column with the text [default: text].")
]
LabelColumn = Annotated[
    str | None, typer.Option("--label-column", help="Column with the label [default: label].")
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of the readable summary.")]


def _tokenizer(model: str | None):
    if model is None:
        return None
    from transformers import AutoTokenizer

    from finetune_platform.training.models import resolve_base_model

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
            "--config", help="Take files, columns, labels, model and max_length from a training config."
        ),
    ] = None,
    text_column: TextColumn = None,
    label_column: LabelColumn = None,
    label_names: Annotated[
        str | None,
        typer.Option("--label-names", help="Declared labels, comma-separated (e.g. negative,positive)."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="Tokenizer for token-length checks ('minilm', an id or a folder)."),
    ] = None,
    max_length: Annotated[
        int | None, typer.Option("--max-length", help="Token limit for the truncation check.")
    ] = None,
    drop_invalid: Annotated[
        bool,
        typer.Option("--drop-invalid", help="Count row-level errors as dropped rows instead of failing."),
    ] = False,
    root: Annotated[
        Path | None, typer.Option("--root", help="Refuse dataset paths outside this directory.")
    ] = None,
    report_path: Annotated[
        Path | None, typer.Option("--report", help="Also write the JSON report here.")
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Validate a dataset: every problem with its rows and a fix. Exit code 0 when valid, 1 when not."""
    from finetune_platform.data.loading import resolve_dataset_path
    from finetune_platform.data.validation import ValidationOptions, validate_dataset

    try:
        declared = [name.strip() for name in label_names.split(",")] if label_names else None
        if config_path is not None:
            config = _load(config_path, [])
            file = file or config.data.train_file
            validation_file = validation_file or config.data.validation_file
            text_column = text_column or config.data.text_column
            label_column = label_column or config.data.label_column
            declared = declared or config.data.label_names
            model = model or config.model.base_model
            max_length = max_length or config.model.max_length
            drop_invalid = drop_invalid or config.data.invalid_rows == "drop"
        if file is None:
            raise ConfigError("give a dataset FILE or --config")
        file = resolve_dataset_path(file, root)
        if validation_file is not None:
            validation_file = resolve_dataset_path(validation_file, root)
        options = ValidationOptions(
            text_column=text_column or "text",
            label_column=label_column or "label",
            label_names=declared,
            tokenizer=_tokenizer(model),
            max_length=max_length if model else None,
            drop_invalid=drop_invalid,
        )
        report = validate_dataset(file, options, validation_file)
    except PlatformError as error:
        raise _fail(error) from None
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
    model: Annotated[str | None, typer.Option("--model", help="Tokenizer for token lengths.")] = "minilm",
    max_length: Annotated[
        int | None, typer.Option("--max-length", help="Marks this limit on the plot.")
    ] = 128,
    json_output: JsonFlag = False,
) -> None:
    """Analyse a dataset: labels, length histograms, vocabulary, top tokens per class (JSON + PNG plots)."""
    from finetune_platform.data.analysis import analyze_file

    try:
        analysis = analyze_file(
            file,
            text_column or "text",
            label_column or "label",
            out_dir=out,
            tokenizer=_tokenizer(model),
            max_length=max_length,
        )
    except PlatformError as error:
        raise _fail(error) from None
    if json_output:
        typer.echo(json.dumps(analysis, indent=2))
        return
    typer.echo(f"{file}: {analysis['rows']} rows, vocabulary {analysis['vocabulary_size']} words")
    for label, info in analysis["labels"].items():
        top = ", ".join(word for word, _ in analysis["top_tokens"][label][:8])
        typer.echo(f"  {label:<12} {info['rows']:>8} rows ({info['share']:.1%})  top: {top}")
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
    from finetune_platform.data.versioning import VersionIndex
    from finetune_platform.settings import get_settings

    return VersionIndex(get_settings().FINETUNE_HOME)


@data_app.command("version")
def data_version(
    file: Annotated[Path, typer.Argument(help="Dataset file.")],
    text_column: TextColumn = None,
    label_column: LabelColumn = None,
) -> None:
    """Record a dataset version (content hash of the normalised rows) in the version index."""
    from finetune_platform.data.validation import ValidationOptions
    from finetune_platform.data.versioning import version_file

    options = ValidationOptions(text_column=text_column or "text", label_column=label_column or "label")
    try:
        version, added, _ = version_file(file, options, _version_index())
    except PlatformError as error:
        raise _fail(error) from None
    state = "recorded" if added else "already recorded"
    labels = ", ".join(f"{k} {v}" for k, v in version.label_counts.items())
    typer.echo(f"{version.version} {state}: {version.file}, {version.rows} rows ({labels})")


@data_app.command("versions")
def data_versions(json_output: JsonFlag = False) -> None:
    """List recorded dataset versions, oldest first."""
    from dataclasses import asdict

    versions = _version_index().all()
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
        raise _fail(error) from None
    typer.echo(json.dumps(result.to_json(), indent=2) if json_output else result.summary())


def _settings():
    from finetune_platform.settings import get_settings

    return get_settings()


def _fmt(value: float | None) -> str:
    return "" if value is None or value != value else f"{value:.4f}"


@experiments_app.command("list")
def experiments_list(json_output: JsonFlag = False) -> None:
    """Experiments in the tracking store with their run counts and best accuracy."""
    from finetune_platform.tracking.experiments import ExperimentStore

    experiments = ExperimentStore(_settings()).experiments()
    if json_output:
        typer.echo(json.dumps(experiments, indent=2))
        return
    if not experiments:
        typer.echo("no experiments yet (finetune train CONFIG)")
        return
    typer.echo(f"{'experiment':<24} {'runs':>5} {'best acc':>9}  last run")
    for e in experiments:
        typer.echo(f"{e['name']:<24} {e['runs']:>5} {_fmt(e['best_accuracy']):>9}  {e['last_run'] or ''}")


@experiments_app.command("show")
def experiments_show(
    experiment: Annotated[str, typer.Argument(help="Experiment name.")], json_output: JsonFlag = False
) -> None:
    """Runs of one experiment, newest first, with final metrics and dataset version."""
    from dataclasses import asdict

    from finetune_platform.tracking.experiments import ExperimentStore

    try:
        runs = ExperimentStore(_settings()).runs(experiment)
    except PlatformError as error:
        raise _fail(error) from None
    if json_output:
        typer.echo(json.dumps([asdict(r) for r in runs], indent=2))
        return
    typer.echo(f"{'run id':<34} {'name':<24} {'status':<9} {'accuracy':>9} {'macro F1':>9}  dataset")
    for r in runs:
        typer.echo(
            f"{r.run_id:<34} {r.run_name:<24} {r.status:<9} {_fmt(r.metrics.get('final_accuracy')):>9} "
            f"{_fmt(r.metrics.get('final_macro_f1')):>9}  {r.dataset_version or ''}"
        )


@experiments_app.command("compare")
def experiments_compare(
    run_ids: Annotated[list[str], typer.Argument(help="Two or more MLflow run ids.")],
    plot: Annotated[Path, typer.Option("--plot", help="Where to write the loss curves PNG.")] = Path(
        "compare_loss.png"
    ),
    json_output: JsonFlag = False,
) -> None:
    """Runs side by side: final metrics, the config fields that differ, and loss curves as a PNG."""
    from dataclasses import asdict

    from finetune_platform.tracking.experiments import ExperimentStore

    try:
        comparison = ExperimentStore(_settings()).compare(run_ids, plot)
    except PlatformError as error:
        raise _fail(error) from None
    if json_output:
        document = asdict(comparison)
        document.pop("loss_curves")
        typer.echo(json.dumps(document, indent=2))
        return
    short = [r.run_id[:8] for r in comparison.runs]
    typer.echo(f"{'metric':<34} " + " ".join(f"{s:>10}" for s in short))
    for name, values in comparison.metrics.items():
        if name.startswith("final_"):
            typer.echo(f"{name:<34} " + " ".join(f"{_fmt(values[r.run_id]):>10}" for r in comparison.runs))
    typer.echo("\nconfig differences:")
    for name, values in comparison.differing_params.items():
        typer.echo(f"  {name}: " + ", ".join(f"{r.run_id[:8]}={values[r.run_id]}" for r in comparison.runs))
    if not comparison.differing_params:
        typer.echo("  (none)")
    typer.echo(f"\nloss curves: {comparison.plot}")


def _registry():
    from finetune_platform.tracking.registry import ModelRegistry

    return ModelRegistry(_settings())


@models_app.command("list")
def models_list(
    name: Annotated[str | None, typer.Option("--name", help="Only this model.")] = None,
    json_output: JsonFlag = False,
) -> None:
    """Registered model versions with stage, accuracy, base model and language."""
    from dataclasses import asdict

    registry = _registry()
    versions = registry.versions(name)
    cards = {(c.name, c.version): c for c in registry.cards.all()}
    if json_output:
        typer.echo(json.dumps([asdict(v) for v in versions], indent=2))
        return
    if not versions:
        typer.echo("no registered models yet (train with registry.enabled: true)")
        return
    typer.echo(
        f"{'model':<24} {'ver':>4} {'stage':<11} {'accuracy':>9}  {'base model':<14} {'language':<10} aliases"
    )
    for v in versions:
        card = cards.get((v.name, v.version))
        accuracy = _fmt(card.metrics.get("accuracy")) if card else "(no card)"
        base = card.base_model if card else ""
        language = card.language if card else ""
        typer.echo(
            f"{v.name:<24} {v.version:>4} {v.stage.value:<11} {accuracy:>9}  {base:<14} {language:<10} "
            f"{','.join(v.aliases)}"
        )


@models_app.command("show")
def models_show(
    reference: Annotated[str, typer.Argument(help="NAME, NAME@VERSION or NAME@production.")],
) -> None:
    """One model version: registry entry and model card (without the embedding)."""
    registry = _registry()
    try:
        info = registry.resolve(reference)
        card = registry.cards.get(info.name, info.version).public()
    except PlatformError as error:
        raise _fail(error) from None
    document = {
        "registry": {
            "name": info.name,
            "version": info.version,
            "stage": info.stage.value,
            "aliases": list(info.aliases),
            "source": info.source,
            "run_id": info.run_id,
        },
        "card": card,
    }
    typer.echo(json.dumps(document, indent=2))


@models_app.command("card")
def models_card(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version number.")],
) -> None:
    """Print a version's model card JSON, embedding included."""
    try:
        card = _registry().cards.get(name, version)
    except PlatformError as error:
        raise _fail(error) from None
    typer.echo(json.dumps(card.to_json(), indent=2))


@models_app.command("transition")
def models_transition(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version number.")],
    stage: Annotated[str, typer.Argument(help="Staging, Production, Archived or None.")],
) -> None:
    """Move a version to a stage; promoting to Production archives the previous Production version."""
    from finetune_platform.tracking.registry import Stage

    try:
        result = _registry().transition(name, version, Stage.parse(stage))
    except PlatformError as error:
        raise _fail(error) from None
    typer.echo(f"{name} version {version} -> {result.stage.value}")
    for archived in result.archived:
        typer.echo(f"{name} version {archived} -> Archived (was Production)")


@models_app.command("reconcile")
def models_reconcile(
    name: Annotated[str | None, typer.Option("--name", help="Only this model's cards.")] = None,
) -> None:
    """Make every model card's stage match the registry; print what changed."""
    changes = _registry().reconcile(name)
    typer.echo("\n".join(changes) if changes else "cards match the registry: nothing to change")


def _card_filter(base_model, language, task, stage, tags, metric):
    from finetune_platform.tracking.search import CardFilter, Threshold

    return CardFilter(
        base_model=base_model,
        language=language,
        task=task,
        stage=stage,
        tags=list(tags or []),
        thresholds=[Threshold.parse(m) for m in metric or []],
    )


BaseModelOpt = Annotated[str | None, typer.Option("--base-model", help="Only cards of this base model.")]
LanguageOpt = Annotated[str | None, typer.Option("--language", help="Only this language (e.g. English).")]
TaskOpt = Annotated[str | None, typer.Option("--task", help="Only this task.")]
StageOpt = Annotated[str | None, typer.Option("--stage", help="Only this stage.")]
TagOpt = Annotated[list[str] | None, typer.Option("--tag", help="Required tag (repeatable).")]
MetricOpt = Annotated[
    list[str] | None, typer.Option("--metric", help="Threshold like accuracy>=0.9 (repeatable).")
]


@models_app.command("search")
def models_search(
    base_model: BaseModelOpt = None,
    language: LanguageOpt = None,
    task: TaskOpt = None,
    stage: StageOpt = None,
    tag: TagOpt = None,
    metric: MetricOpt = None,
    json_output: JsonFlag = False,
) -> None:
    """Model cards matching every given filter."""
    from finetune_platform.tracking.search import search

    try:
        found = search(_registry().cards, _card_filter(base_model, language, task, stage, tag, metric))
    except PlatformError as error:
        raise _fail(error) from None
    if json_output:
        typer.echo(json.dumps([c.public() for c in found], indent=2))
        return
    for card in found:
        typer.echo(
            f"{card.key:<28} {card.stage:<11} acc {_fmt(card.metrics.get('accuracy'))}  {card.base_model}  "
            f"{card.language}  tags: {', '.join(card.tags)}"
        )
    typer.echo(f"{len(found)} model(s)")


@models_app.command("recommend")
def models_recommend(
    query: Annotated[
        str | None, typer.Argument(help="What you need, in words: 'small fast English sentiment'.")
    ] = None,
    like: Annotated[str | None, typer.Option("--like", help="Models similar to NAME@VERSION.")] = None,
    vector_file: Annotated[
        Path | None, typer.Option("--vector", help="JSON file with a 384-number vector.")
    ] = None,
    top: Annotated[int, typer.Option("--top", help="How many to return.")] = 5,
    base_model: BaseModelOpt = None,
    language: LanguageOpt = None,
    task: TaskOpt = None,
    stage: StageOpt = None,
    tag: TagOpt = None,
    metric: MetricOpt = None,
    json_output: JsonFlag = False,
) -> None:
    """Models ranked by embedding similarity to a query, another model's card, or a vector."""
    import numpy as np

    from finetune_platform.tracking.search import recommend, recommend_for_query, recommend_like

    try:
        store = _registry().cards
        card_filter = _card_filter(base_model, language, task, stage, tag, metric)
        if sum(x is not None for x in (query, like, vector_file)) != 1:
            raise ConfigError("give exactly one of QUERY, --like NAME@VERSION or --vector FILE")
        if query is not None:
            ranked = recommend_for_query(store, query, top, card_filter)
        elif like is not None:
            name, _, number = like.partition("@")
            if not number.isdigit():
                raise ConfigError(f"--like {like!r}: expected NAME@VERSION")
            ranked = recommend_like(store, name, int(number), top, card_filter)
        else:
            ranked = recommend(store, np.asarray(json.loads(vector_file.read_text())), top, card_filter)
    except PlatformError as error:
        raise _fail(error) from None
    if json_output:
        typer.echo(json.dumps([{"score": r.score, **r.card.public()} for r in ranked], indent=2))
        return
    for rank, r in enumerate(ranked, start=1):
        typer.echo(f"{rank}. {r.card.key:<28} score {r.score:.4f}  {r.card.description or r.card.task}")
    if not ranked:
        typer.echo("no model cards match")


@app.command()
def version() -> None:
    """Print the platform version."""
    typer.echo(f"finetune-platform {__version__}")


if __name__ == "__main__":  # pragma: no cover
    app()
