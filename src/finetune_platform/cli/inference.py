"""`finetune predict`: classify texts with a trained adapter (a registered version or a run folder)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from finetune_platform.cli.common import fail, settings
from finetune_platform.data.formats import SUFFIXES_TEXT
from finetune_platform.errors import ConfigError, NotFoundError, PlatformError

RuntimeOption = Annotated[
    str,
    typer.Option(
        "--runtime",
        help="onnx (ONNX Runtime, same outputs, fastest exact choice on CPU), onnx-int8 (int8 base weights: "
        "faster, check accuracy) or torch (PyTorch; used for GPUs and LoRA variants ONNX cannot express).",
    ),
]


def predict(
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Registered model: name, name@3 or name@production.")
    ] = None,
    run: Annotated[
        Path | None,
        typer.Option(
            "--run",
            help="A run folder (results/<experiment>/<run-id>); one without a final adapter (interrupted) "
            "predicts with its best complete checkpoint.",
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            help="One complete checkpoint of a run folder: <run folder>/artifacts/checkpoints/checkpoint-N.",
        ),
    ] = None,
    text: Annotated[
        list[str] | None, typer.Option("--text", "-t", help="A text to classify (repeatable).")
    ] = None,
    text_pair: Annotated[
        list[str] | None,
        typer.Option(
            "--text-pair",
            help="The second text of each --text, in the same order, for a model trained on text pairs "
            "(repeatable: one per --text; required by such a model, refused by a model of one text).",
        ),
    ] = None,
    input_file: Annotated[
        Path | None, typer.Option("--input", "-i", help=f"File of texts: {SUFFIXES_TEXT}.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Where to write predictions (CSV).")
    ] = None,
    text_column: Annotated[str, typer.Option("--text-column", help="Column holding the text.")] = "text",
    text_pair_column: Annotated[
        str | None,
        typer.Option(
            "--text-pair-column",
            help="Column holding the second text of each row, for a model trained on text pairs (required by "
            "such a model, refused by a model of one text).",
        ),
    ] = None,
    label_column: Annotated[
        str,
        typer.Option(
            "--label-column",
            help="If present, the predictions are scored against this column: accuracy (single-label), subset "
            "accuracy (multi-label: a JSON list or ','-separated labels) or RMSE (regression).",
        ),
    ] = "label",
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, max=4096, help="Texts per forward pass.")
    ] = 64,
    runtime: RuntimeOption = "onnx",
) -> None:
    """Classify texts: --text for a few (JSON out), or --input FILE --output predictions.csv for many.

    JSON as POST /predict answers: `label` (the class id), `probability`, `latency_ms`, `base_model`,
    `language`, then `label_name`, `probabilities`, `truncated`, `model`, `version` (a multi-label model's adds
    `task` and `labels`, a regression model's `task` and `value`).
    A CSV has a `label` column (the class id) and a `label_name` column; a multi-label model's `labels` (those
    above their thresholds, ','-joined) and `probabilities` (JSON); a regression model's `value`."""
    # lazy: tqdm and the inference stack (torch, onnxruntime), kept off the start of every finetune command
    from tqdm import tqdm

    from finetune_platform.inference.batch import check_pair_input, predict_file, read_rows
    from finetune_platform.inference.pool import open_one
    from finetune_platform.inference.predictor import (
        answer,
        source_from_checkpoint,
        source_from_registry,
        source_from_run,
    )
    from finetune_platform.inference.runtimes import checked_choice

    try:
        if [model, run, checkpoint].count(None) != 2:
            raise ConfigError(
                "give exactly one of --model NAME[@VERSION|@STAGE], --run RUN_FOLDER or --checkpoint CHECKPOINT"
            )
        if bool(text) == (input_file is not None):
            raise ConfigError("give either --text (repeatable) or --input FILE with --output FILE")
        if input_file is not None and output is None:
            raise ConfigError("--input needs --output (a .csv path for the predictions)")
        if text_pair and len(text_pair) != len(text or []):
            raise ConfigError(
                f"--text-pair: {len(text_pair)} given for {len(text or [])} --text; give one per --text"
            )
        if text_pair_column is not None and input_file is None:
            raise ConfigError("--text-pair-column goes with --input; with --text, give --text-pair")
        checked_choice(runtime, "--runtime")
        config = settings()
        if model is not None:
            source = source_from_registry(config, model)
        else:
            source = source_from_run(run) if run is not None else source_from_checkpoint(checkpoint)
            say_checkpoint(source, run)
        predictor = open_one(config, source, runtime, setting="--runtime")
        if text:
            check_pair_input(predictor, bool(text_pair), "--text-pair")
            started = time.perf_counter()
            rows = predictor.predict(list(text), batch_size, list(text_pair) if text_pair else None)
            latency = round((time.perf_counter() - started) * 1000, 2)  # all the texts, classified together
            answers = [answer(prediction, predictor.info, latency) for prediction in rows]
            typer.echo(json.dumps(answers, indent=2))
            return
        check_pair_input(predictor, text_pair_column is not None, "--text-pair-column")
        inputs = read_rows(input_file, text_column, label_column, text_pair_column)
        with tqdm(total=len(inputs.texts), desc="predicting", unit="text", dynamic_ncols=True) as bar:
            summary = predict_file(
                predictor, inputs.texts, inputs.labels, output, batch_size,
                lambda done, _: bar.update(done - bar.n), inputs.pairs, "--text-pair-column",
            )  # fmt: skip
        typer.echo(summary.describe(output))
    except PlatformError as error:
        raise fail(error) from None


def say_checkpoint(source: Any, run: Path | None) -> None:
    """On stderr: the checkpoint that predicts, where it is not a run's final adapter."""
    used = source.checkpoint
    if used is None:
        return
    score = f", {used.metric_name or 'metric'} {used.metric:.4f}" if used.metric is not None else ""
    what = f"{used.path.name} (step {used.step}{score})"
    if run is None:
        typer.echo(f"predicting with {what} of run {used.path.parents[2]}", err=True)
    else:
        role = source.checkpoint_role
        typer.echo(
            f"{run}: no final adapter; predicting with its {role} complete checkpoint, {what}", err=True
        )


def serve(
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Default model: name, name@3 or name@production (default: the Production model, else the newest).",
        ),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8080,
    runtime: Annotated[
        str | None,
        typer.Option(
            "--runtime",
            help="onnx (default), onnx-int8 or torch; overrides SERVE_RUNTIME (see finetune predict --help).",
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            help="auto (CUDA when present), cpu, cuda or mps; overrides SERVE_DEVICE. A GPU serves bf16 PyTorch.",
        ),
    ] = None,
    run: Annotated[
        Path | None,
        typer.Option(
            "--run",
            help="Serve this run folder's adapter as the default model, without the registry.",
            exists=True,
            file_okay=False,
        ),
    ] = None,
    experiment: Annotated[
        str | None,
        typer.Option(
            "--experiment",
            "-e",
            help="Serve the newest successful run of this experiment: its registered version, else its run "
            "folder (`make serve exp=NAME`).",
        ),
    ] = None,
) -> None:
    """Serve predictions over HTTP (POST /predict, /predict/batch; GET /models, /health, /metrics)."""
    # lazy: uvicorn, FastAPI and the inference stack, kept off the start of every finetune command
    import uvicorn

    from finetune_platform.inference.runtimes import checked_choice
    from finetune_platform.serve.app import create_serve_app, freeze_heap

    config = settings()
    if runtime is not None:
        try:
            checked_choice(runtime, "--runtime")
        except PlatformError as error:
            raise fail(error) from None
        config = config.model_copy(update={"SERVE_RUNTIME": runtime})
    if device is not None:
        if device not in ("auto", "cpu", "cuda", "mps"):
            raise fail(ConfigError(f"--device {device!r}: choose auto, cpu, cuda or mps"))
        config = config.model_copy(update={"SERVE_DEVICE": device})
    if run is not None and model is not None:
        raise fail(ConfigError("give --model or --run, not both"))
    if experiment is not None and (model is not None or run is not None):
        raise fail(ConfigError("give --experiment alone, without --model or --run"))
    try:
        if experiment is not None:
            model, run = experiment_default(config, experiment)
            typer.echo(f"experiment {experiment!r}: serving {model or run}", err=True)
        app = create_serve_app(config, model, run_folder=run)
    except PlatformError as error:
        raise fail(error) from None
    try:
        app.state.pool.load(
            app.state.pool.key_for(model)
        )  # fail now, with the reason, if it cannot be served
    except NotFoundError as error:
        if model is not None or run is not None:
            raise fail(error) from None
        # A fresh deployment has no model yet: serve anyway (the first registered one is picked up).
        typer.secho(f"warning: {error}; /predict answers 404 until a model is registered", err=True)
    except PlatformError as error:
        raise fail(error) from None
    freeze_heap()
    uvicorn.run(app, host=host, port=port, log_level="warning", **config.proxy_options())


def experiment_default(config: Any, experiment: str) -> tuple[str | None, Path | None]:
    """(model reference, run folder) for `serve --experiment`: the newest successful run's registered version
    (name@version), else that run's folder when it is on this machine."""
    # lazy: mlflow, kept off the start of every finetune command
    from finetune_platform.tracking.experiments import ExperimentStore
    from finetune_platform.tracking.registry import ModelRegistry

    if not config.MLFLOW_ENABLED:
        raise ConfigError(
            f"--experiment {experiment!r} looks runs up in the tracking store, and MLFLOW_ENABLED is false: "
            "serve a run folder with --run results/<experiment>/<run-id>"
        )
    newest, folder = ExperimentStore(config).newest_successful_run(experiment)
    registered = [v for v in ModelRegistry(config).versions() if v.run_id == newest.run_id]
    if registered:
        return f"{registered[0].name}@{registered[0].version}", None
    if folder and (Path(folder) / "config.yaml").is_file():
        return None, Path(folder)
    raise NotFoundError(
        f"experiment {experiment!r}: its newest successful run {newest.run_name} ({newest.run_id}) registered "
        f"no model, and its run folder {folder or '(not recorded)'} is not on this machine"
    )
