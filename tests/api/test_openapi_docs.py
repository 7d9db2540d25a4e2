"""The OpenAPI document describes every operation fully: a summary and a description, a typed body for its success
status (never a free-form object), the error statuses it can answer with the shared error body, and an example for
every request body. Walked over the app's own document, so a new route that skips any of it fails here."""

from __future__ import annotations

from typing import Any

import pytest

ERROR_BODY = "#/components/schemas/ErrorOut"


@pytest.fixture(scope="module")
def document(tmp_path_factory) -> dict[str, Any]:
    from finetune_platform.api.app import create_app
    from finetune_platform.settings import Settings

    root = tmp_path_factory.mktemp("openapi")
    return create_app(Settings(FINETUNE_HOME=root, MLFLOW_ENABLED=False)).openapi()


def operations(document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{method.upper()} {path}", operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


def resolved(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def typed(document: dict[str, Any], schema: dict[str, Any]) -> bool:
    """A named model, a list of them, one of several such, or a plain value: never an object of anything."""
    if "$ref" in schema:
        return True
    if "anyOf" in schema:
        return all(typed(document, option) for option in schema["anyOf"])
    if schema.get("type") == "array":
        return typed(document, schema.get("items", {}))
    return schema.get("type") in {"string", "integer", "number", "boolean"}


def problems_of(document: dict[str, Any], label: str, operation: dict[str, Any]) -> list[str]:
    problems = []
    for key in ("summary", "description"):
        if not operation.get(key, "").strip():
            problems.append(f"{label}: no {key}")
    statuses = sorted(operation["responses"], key=str)
    success = [status for status in statuses if status.startswith("2")]
    if not success:
        problems.append(f"{label}: no success status")
    for status in success:
        content = operation["responses"][status].get("content", {})
        if status == "204":
            if content:
                problems.append(f"{label}: 204 with a body")
            continue
        if not content:
            problems.append(f"{label}: {status} has no body schema")
        for media, described in content.items():
            if not typed(document, described.get("schema", {})):
                problems.append(
                    f"{label}: {status} {media} is not a response model: {described.get('schema')}"
                )
    errors = [status for status in statuses if status.startswith("4")]
    if not errors:
        problems.append(f"{label}: no error status documented")
    for status in errors:
        schema = (
            operation["responses"][status].get("content", {}).get("application/json", {}).get("schema", {})
        )
        if schema.get("$ref") != ERROR_BODY:
            problems.append(f"{label}: {status} does not answer the shared error body: {schema}")
        if not operation["responses"][status].get("description", "").strip():
            problems.append(f"{label}: {status} has no description")
    body = operation.get("requestBody")
    if body is not None:
        for media, described in body.get("content", {}).items():
            schema = resolved(document, described.get("schema", {}))
            if not ({"example", "examples"} & (set(described) | set(schema))):
                problems.append(f"{label}: the {media} request body has no example")
    return problems


def test_every_operation_is_documented_fully(document):
    found = operations(document)
    assert len(found) == 48
    problems = [problem for label, operation in found for problem in problems_of(document, label, operation)]
    assert problems == []


def test_every_request_body_example_is_valid_for_its_model(document):
    """The examples are requests a client could send: each validates against the model it illustrates."""
    from finetune_platform.services.schemas import experiments, jobs, registry, sweeps, users

    models = {
        model.__name__: model
        for module in (users, jobs, experiments, registry, sweeps)
        for model in vars(module).values()
        if isinstance(model, type) and model.__module__ == module.__name__ and hasattr(model, "model_fields")
    }
    checked = 0
    for _, operation in operations(document):
        for described in operation.get("requestBody", {}).get("content", {}).values():
            reference = described.get("schema", {}).get("$ref", "")
            if reference.rsplit("/", 1)[-1] not in models:  # the login form and the upload: examples inline
                continue
            model = models[reference.rsplit("/", 1)[1]]
            for example in model.model_json_schema().get("examples", []):
                model.model_validate(example)
                checked += 1
    assert checked >= 13


def test_the_walk_finds_what_it_looks_for(document):
    """A copy of one operation with its description, error statuses and example taken away fails each check."""
    operation = dict(document["paths"]["/users"]["post"])
    operation["description"] = ""
    operation["responses"] = {"201": operation["responses"]["201"]}
    operation["requestBody"] = {"content": {"application/json": {"schema": {"type": "object"}}}}
    assert problems_of(document, "POST /users", operation) == [
        "POST /users: no description",
        "POST /users: no error status documented",
        "POST /users: the application/json request body has no example",
    ]
    free_form = {"responses": {"200": {"content": {"application/json": {"schema": {"type": "object"}}}}}}
    assert problems_of(document, "GET /x", {"summary": "x", "description": "x", **free_form})[0] == (
        "GET /x: 200 application/json is not a response model: {'type': 'object'}"
    )
