"""`finetune predict`: classify texts with a trained adapter (a registered version or a run folder)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from finetune_platform.cli.common import fail, settings
from finetune_platform.errors import ConfigError, PlatformError

READERS = {".csv": ",", ".tsv": "\t"}


def _read_texts(path: Path, text_column: str, label_column: str):
    import pandas as pd

    suffix = path.suffix.lower()
    if not path.is_file():
        raise ConfigError(f"--input {path}: no such file")
    if suffix in READERS:
        frame = pd.read_csv(path, sep=READERS[suffix], dtype=str, keep_default_na=False)
    elif suffix in {".jsonl", ".ndjson"}:
        frame = pd.read_json(path, lines=True, dtype=False)
    elif suffix == ".json":
        frame = pd.read_json(path, dtype=False)
    elif suffix in {".parquet", ".pq"}:
        frame = pd.read_parquet(path)
    else:
        raise ConfigError(
            f"--input {path}: unknown format {suffix!r}; use .csv, .tsv, .jsonl, .json or .parquet"
        )
    if text_column not in frame.columns:
        raise ConfigError(
            f"--input {path}: no column {text_column!r} (columns: {', '.join(map(str, frame.columns))}); "
            "choose one with --text-column"
        )
    texts = ["" if value is None else str(value) for value in frame[text_column].tolist()]
    labels = frame[label_column].tolist() if label_column in frame.columns else None
    return texts, labels


def predict(
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Registered model: name, name@3 or name@production.")
    ] = None,
    run: Annotated[
        Path | None, typer.Option("--run", help="A run folder (results/<experiment>/<run-id>).")
    ] = None,
    text: Annotated[
        list[str] | None, typer.Option("--text", "-t", help="A text to classify (repeatable).")
    ] = None,
    input_file: Annotated[
        Path | None, typer.Option("--input", "-i", help="File of texts: csv, tsv, jsonl, json, parquet.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Where to write predictions (CSV).")
    ] = None,
    text_column: Annotated[str, typer.Option("--text-column", help="Column holding the text.")] = "text",
    label_column: Annotated[
        str, typer.Option("--label-column", help="If present, accuracy against this column is reported.")
    ] = "label",
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, max=4096, help="Texts per forward pass.")
    ] = 64,
) -> None:
    """Classify texts: --text for a few (JSON out), or --input FILE --output predictions.csv for many."""
    from finetune_platform.inference.predictor import Predictor

    try:
        if (model is None) == (run is None):
            raise ConfigError("give exactly one of --model NAME[@VERSION|@STAGE] or --run RUN_FOLDER")
        if bool(text) == (input_file is not None):
            raise ConfigError("give either --text (repeatable) or --input FILE with --output FILE")
        if input_file is not None and output is None:
            raise ConfigError("--input needs --output (a .csv path for the predictions)")
        predictor = Predictor.from_run(run) if run is not None else Predictor.from_registry(settings(), model)
        if text:
            rows = predictor.predict(list(text), batch_size)
            typer.echo(json.dumps([prediction.__dict__ for prediction in rows], indent=2, default=str))
            return
        texts, labels = _read_texts(input_file, text_column, label_column)
        _predict_file(predictor, texts, labels, output, batch_size)
    except PlatformError as error:
        raise fail(error) from None


def _predict_file(predictor, texts: list[str], labels, output: Path, batch_size: int) -> None:
    """Every input row gets an output row (an empty text gets an error instead of a label); written atomically."""
    import csv
    import os
    import tempfile

    from tqdm import tqdm

    from finetune_platform.data.loading import normalise_label

    valid = [i for i, value in enumerate(texts) if value.strip()]
    results: dict[int, object] = {}
    chunk = batch_size * 8
    with tqdm(total=len(valid), desc="predicting", unit="text", dynamic_ncols=True) as bar:
        for start in range(0, len(valid), chunk):
            part = valid[start : start + chunk]
            for i, prediction in zip(
                part, predictor.predict([texts[i] for i in part], batch_size), strict=True
            ):
                results[i] = prediction
            bar.update(len(part))
    output.parent.mkdir(parents=True, exist_ok=True)
    names = predictor.info.labels
    with tempfile.NamedTemporaryFile(
        "w",
        dir=output.parent,
        prefix=f".{output.name}.",
        suffix=".tmp",
        delete=False,
        newline="",
        encoding="utf-8",
    ) as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["row", "label", "label_name", "probability", "truncated", *[f"p_{n}" for n in names], "error"]
        )
        for i in range(len(texts)):
            found = results.get(i)
            if found is None:
                writer.writerow([i + 1, "", "", "", "", *[""] * len(names), "empty text"])
            else:
                probabilities = [found.probabilities[n] for n in names]
                writer.writerow(
                    [
                        i + 1,
                        found.label,
                        found.label_name,
                        found.probability,
                        found.truncated,
                        *probabilities,
                        "",
                    ]
                )
    os.replace(handle.name, output)
    skipped = len(texts) - len(valid)
    truncated = sum(1 for p in results.values() if p.truncated)
    typer.echo(
        f"wrote {len(texts)} rows to {output} ({len(valid)} predicted, {skipped} empty, {truncated} truncated "
        f"at {predictor.info.max_length} tokens)"
    )
    if labels is not None and valid:
        correct = sum(
            1
            for i in valid
            if str(normalise_label(labels[i])) in {str(results[i].label), results[i].label_name}
        )
        typer.echo(f"accuracy against the {len(valid)} labelled rows: {correct / len(valid):.4f}")


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
) -> None:
    """Serve predictions over HTTP (POST /predict, /predict/batch; GET /models, /health, /metrics)."""
    import uvicorn

    from finetune_platform.inference.server import create_serve_app

    app = create_serve_app(settings(), model)
    try:
        app.state.pool.load(
            app.state.pool.key_for(model)
        )  # fail now, with the reason, if nothing can be served
    except PlatformError as error:
        raise fail(error) from None
    uvicorn.run(app, host=host, port=port, log_level="warning")
