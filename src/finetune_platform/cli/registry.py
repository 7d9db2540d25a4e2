"""`finetune experiments …` and `finetune models …`: the tracking store and the model registry."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from finetune_platform.cli.common import (
    JsonFlag,
    audit,
    fail,
    fmt,
    migrate_database,
    open_database,
    settings,
)
from finetune_platform.errors import ConfigError, PlatformError

experiments_app = typer.Typer(help="Experiments and runs in the tracking store.", no_args_is_help=True)
models_app = typer.Typer(help="The model registry: versions, stages, cards, search.", no_args_is_help=True)


@experiments_app.command("list")
def experiments_list(json_output: JsonFlag = False) -> None:
    """Experiments in the tracking store with their run counts and best accuracy."""
    # lazy: pydantic-settings (mlflow on use), kept off the start of every finetune command
    from finetune_platform.tracking.experiments import ExperimentStore

    experiments = ExperimentStore(settings()).experiments()
    if json_output:
        typer.echo(json.dumps(experiments, indent=2))
        return
    if not experiments:
        typer.echo("no experiments yet (finetune train CONFIG)")
        return
    typer.echo(f"{'experiment':<24} {'runs':>5} {'best acc':>9}  last run")
    for e in experiments:
        typer.echo(f"{e['name']:<24} {e['runs']:>5} {fmt(e['best_accuracy']):>9}  {e['last_run'] or ''}")


@experiments_app.command("show")
def experiments_show(
    experiment: Annotated[str, typer.Argument(help="Experiment name.")], json_output: JsonFlag = False
) -> None:
    """Runs of one experiment, newest first, with final metrics and dataset version."""
    # lazy: pydantic-settings (mlflow on use), kept off the start of every finetune command
    from finetune_platform.tracking.experiments import ExperimentStore

    try:
        runs = ExperimentStore(settings()).runs(experiment)
    except PlatformError as error:
        raise fail(error) from None
    if json_output:
        typer.echo(json.dumps([asdict(r) for r in runs], indent=2))
        return
    typer.echo(f"{'run id':<34} {'name':<24} {'status':<9} {'accuracy':>9} {'macro F1':>9}  dataset")
    for r in runs:
        typer.echo(
            f"{r.run_id:<34} {r.run_name:<24} {r.status:<9} {fmt(r.metrics.get('final_accuracy')):>9} "
            f"{fmt(r.metrics.get('final_macro_f1')):>9}  {r.dataset_version or ''}"
        )


@experiments_app.command("compare")
def experiments_compare(
    run_ids: Annotated[list[str], typer.Argument(help="Two or more MLflow run ids.")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "--plot",
            help="Where to write the loss curves PNG (a file, or an existing folder to hold compare_loss.png). "
            "Default: <results>/comparisons/<run ids>/compare_loss.png beside the run folders, never the "
            "working directory.",
        ),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Runs side by side: final metrics, the config fields that differ, and loss curves as a PNG."""
    # lazy: pydantic-settings (mlflow on use), hashlib (plots), kept off the start of every finetune command
    from finetune_platform.tracking.experiments import ExperimentStore
    from finetune_platform.tracking.plots import COMPARE_PLOT, comparison_plot_path, loss_curves_png

    try:
        store = ExperimentStore(settings())
        comparison = store.compare(run_ids)
    except PlatformError as error:
        raise fail(error) from None
    if out is None:
        folders = [
            store.client.get_run(r.run_id).data.tags.get("finetune.run_folder") for r in comparison.runs
        ]
        out = comparison_plot_path(run_ids, folders, settings().FINETUNE_HOME)
    elif out.is_dir():
        out = out / COMPARE_PLOT
    comparison.plot = str(loss_curves_png(comparison.loss_curves, out, "Training loss by run"))
    if json_output:
        document = asdict(comparison)
        document.pop("loss_curves")
        typer.echo(json.dumps(document, indent=2))
        return
    short = [r.run_id[:8] for r in comparison.runs]
    typer.echo(f"{'metric':<34} " + " ".join(f"{s:>10}" for s in short))
    for name, values in comparison.metrics.items():
        if name.startswith("final_"):
            typer.echo(f"{name:<34} " + " ".join(f"{fmt(values[r.run_id]):>10}" for r in comparison.runs))
    typer.echo("\nconfig differences:")
    for name, values in comparison.differing_params.items():
        typer.echo(f"  {name}: " + ", ".join(f"{r.run_id[:8]}={values[r.run_id]}" for r in comparison.runs))
    if not comparison.differing_params:
        typer.echo("  (none)")
    typer.echo(f"\nloss curves: {comparison.plot}")


def _registry():
    # lazy: numpy and mlflow, kept off the start of every finetune command
    from finetune_platform.tracking.registry import ModelRegistry

    return ModelRegistry(settings())


@models_app.command("list")
def models_list(
    name: Annotated[str | None, typer.Option("--name", help="Only this model.")] = None,
    json_output: JsonFlag = False,
) -> None:
    """Registered model versions with stage, accuracy, base model and language."""
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
        accuracy = fmt(card.metrics.get("accuracy")) if card else "(no card)"
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
        raise fail(error) from None
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
        raise fail(error) from None
    typer.echo(json.dumps(card.to_json(), indent=2))


@models_app.command("transition")
def models_transition(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version number.")],
    stage: Annotated[str, typer.Argument(help="Staging, Production, Archived or None.")],
) -> None:
    """Move a version to a stage; promoting to Production archives the previous Production version. The
    move is written to the audit log (action model.transition, with the versions it archived)."""
    # lazy: numpy and mlflow, kept off the start of every finetune command
    from finetune_platform.tracking.registry import Stage

    try:
        target = Stage.parse(stage)
        migrate_database()  # the audit entry has somewhere to go before anything moves
        result = _registry().transition(name, version, target)
        with open_database() as session:
            audit(
                session,
                "model.transition",
                target=f"model:{name}@{version}",
                stage=result.stage.value,
                archived=list(result.archived),
            )
    except PlatformError as error:
        raise fail(error) from None
    typer.echo(f"{name} version {version} -> {result.stage.value}")
    for archived in result.archived:
        typer.echo(f"{name} version {archived} -> Archived (was Production)")


@models_app.command("reconcile")
def models_reconcile(
    name: Annotated[str | None, typer.Option("--name", help="Only this model's cards.")] = None,
    adopt: Annotated[
        bool,
        typer.Option(
            "--adopt",
            help="Also record, as the checksums to serve against, the model cards of versions that have no "
            "record in the platform database (versions registered before records existed). Only when you trust "
            "every card in MODEL_REGISTRY_DIR.",
        ),
    ] = False,
) -> None:
    """Bring each version's four records of its stage into step (the stage tag wins): MLflow's own stage, the
    production/staging aliases and the model card; print what changed. Run once after upgrading."""
    changes = _registry().reconcile(name, adopt=adopt)
    typer.echo(
        "\n".join(changes) if changes else "stages, aliases and cards match the registry: nothing to change"
    )


def _card_filter(base_model, language, task, stage, tags, metric):
    # lazy: numpy, kept off the start of every finetune command
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
    # lazy: numpy, kept off the start of every finetune command
    from finetune_platform.tracking.search import search

    try:
        found = search(_registry().cards, _card_filter(base_model, language, task, stage, tag, metric))
    except PlatformError as error:
        raise fail(error) from None
    if json_output:
        typer.echo(json.dumps([c.public() for c in found], indent=2))
        return
    for card in found:
        typer.echo(
            f"{card.key:<28} {card.stage:<11} acc {fmt(card.metrics.get('accuracy'))}  {card.base_model}  "
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
    top: Annotated[int, typer.Option("--top", min=1, help="How many to return.")] = 5,
    base_model: BaseModelOpt = None,
    language: LanguageOpt = None,
    task: TaskOpt = None,
    stage: StageOpt = None,
    tag: TagOpt = None,
    metric: MetricOpt = None,
    json_output: JsonFlag = False,
) -> None:
    """Models ranked by embedding similarity to a query, another model's card, or a vector."""

    # lazy: numpy, kept off the start of every finetune command
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
            try:
                vector = json.loads(vector_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    f"--vector {vector_file}: cannot read a JSON list of numbers ({exc})"
                ) from None
            ranked = recommend(store, vector, top, card_filter)
    except PlatformError as error:
        raise fail(error) from None
    if json_output:
        typer.echo(json.dumps([{"score": r.score, **r.card.public()} for r in ranked], indent=2))
        return
    for rank, r in enumerate(ranked, start=1):
        typer.echo(f"{rank}. {r.card.key:<28} score {r.score:.4f}  {r.card.description or r.card.task}")
    if not ranked:
        typer.echo("no model cards match")


@models_app.command("export-embedder")
def models_export_embedder(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder to write model.onnx and tokenizer.json to.")
    ],
) -> None:
    """Export the recommender's sentence embedder (MiniLM) to ONNX, for services without PyTorch.

    Set FINETUNE_EMBEDDER_DIR to the folder where the API runs (the API image does this at build time).
    """
    # lazy: numpy (torch to export), kept off the start of every finetune command
    from finetune_platform.tracking.embeddings import EMBEDDER_DIR_VARIABLE, export_embedder

    written = export_embedder(output)
    size = sum(path.stat().st_size for path in written.iterdir()) / 1e6
    typer.echo(f"wrote {written} ({size:.0f} MB): set {EMBEDDER_DIR_VARIABLE}={written.resolve()}")
