"""The model registry on real trained tiny models: registration, stages, cards, reconcile, search, recommend."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from finetune_platform.errors import ConfigError, ErrorCode, NotFoundError, PlatformError
from finetune_platform.settings import Settings
from finetune_platform.tracking.model_cards import file_checksum
from finetune_platform.tracking.registry import ModelRegistry, Stage
from finetune_platform.tracking.search import CardFilter, Threshold, recommend, recommend_for_query, search
from finetune_platform.training.config import config_from_dict
from finetune_platform.training.runner import run_training
from tests.conftest import UNGATED, chinese_rows, sentiment_rows, tiny_config_dict, write_csv

pytestmark = pytest.mark.slow

MODELS = {
    "sentiment-en": (
        "English movie review sentiment classifier, small and fast",
        ["sentiment", "english", "small"],
    ),
    "topic-news": ("News article topic classifier for sports, politics and business", ["topic", "news"]),
    "spam-filter": ("Email spam detector that flags junk and phishing messages", ["spam", "email"]),
    "sentiment-zh": ("Chinese product review sentiment classifier", ["sentiment", "chinese"]),
}


@pytest.fixture(scope="module")
def registry_env(tmp_path_factory, platform_home, tiny_model_factory):
    """Four registered models (one run each) in the session's MLflow store, cards in a folder of their own."""
    root = tmp_path_factory.mktemp("registry")
    settings = Settings(FINETUNE_HOME=platform_home, MODEL_REGISTRY_DIR=root / "cards")
    results = {}
    for name, (description, tags) in MODELS.items():
        chinese = name.endswith("zh")
        rows, validation = (
            (chinese_rows(40, 1), chinese_rows(10, 2))
            if chinese
            else (sentiment_rows(40, 1), sentiment_rows(10, 2))
        )
        train_file = write_csv(root / name / "train.csv", rows)
        validation_file = write_csv(root / name / "val.csv", validation)
        model = tiny_model_factory("bert-chinese" if chinese else "bert")
        raw = tiny_config_dict(
            model, train_file, validation_file, root / "results", max_steps=4, eval_steps=2
        )
        raw["experiment"] = f"reg-{name}"
        # a few steps on a random model: these tests are about the registry, not about learning
        raw["registry"] = {"model_name": name, "description": description, "tags": tags, **UNGATED}
        results[name] = run_training(config_from_dict(raw), settings=settings, show_progress=False)
    return settings, results, root


def test_each_run_registers_a_staging_version_with_its_card(registry_env):
    settings, results, _ = registry_env
    registry = ModelRegistry(settings)
    for name, result in results.items():
        (info,) = registry.versions(name)
        assert (info.version, info.stage, info.aliases) == (1, Stage.STAGING, ("staging",))
        assert info.run_id == result.mlflow_run_id
        assert result.metrics["model"] == {"name": name, "version": 1, "stage": "Staging"}
        card = registry.cards.get(name, 1)
        assert card.stage == "Staging" and card.run_id == result.mlflow_run_id
        assert card.description == MODELS[name][0] and card.tags == MODELS[name][1]
        assert card.adapter_checksum == file_checksum(result.run.artifacts_dir / "adapter_model.safetensors")
        assert card.dataset_version == result.metrics["dataset"]["train_version"]
        assert card.metrics["accuracy"] == pytest.approx(result.metrics["eval"]["accuracy"])
        assert len(card.embedding) == 384 and np.linalg.norm(card.embedding) == pytest.approx(1.0, abs=1e-4)
    assert registry.cards.get("sentiment-zh", 1).language == "Chinese"
    assert (results["spam-filter"].run.root / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_production_is_unique_and_archives_the_previous_one(registry_env, tiny_bert, tmp_path):
    settings, _, root = registry_env
    registry = ModelRegistry(settings)
    raw = tiny_config_dict(
        tiny_bert,
        root / "sentiment-en" / "train.csv",
        root / "sentiment-en" / "val.csv",
        tmp_path / "r",
        max_steps=4,
        eval_steps=2,
    )
    raw["experiment"] = "reg-sentiment-en"
    raw["registry"] = {"model_name": "sentiment-en", "description": MODELS["sentiment-en"][0], **UNGATED}
    run_training(config_from_dict(raw), settings=settings, show_progress=False)
    assert [(v.version, v.stage, v.aliases) for v in registry.versions("sentiment-en")] == [
        (1, Stage.STAGING, ()),
        (2, Stage.STAGING, ("staging",)),
    ]  # both are in Staging; the staging alias names the newest

    assert registry.transition("sentiment-en", 1, Stage.PRODUCTION).archived == ()
    result = registry.transition("sentiment-en", 2, Stage.PRODUCTION)
    assert result.archived == (1,)
    stages = [(v.version, v.stage, v.aliases) for v in registry.versions("sentiment-en")]
    assert stages == [(1, Stage.ARCHIVED, ()), (2, Stage.PRODUCTION, ("production",))]
    assert registry.resolve("sentiment-en@production").version == 2
    assert [registry.cards.get("sentiment-en", v).stage for v in (1, 2)] == ["Archived", "Production"]
    registry.transition("sentiment-en", 2, Stage.ARCHIVED)
    with pytest.raises(NotFoundError, match="model 'sentiment-en' has no version with alias 'production'"):
        registry.resolve("sentiment-en@production")
    with pytest.raises(ConfigError, match="stage: 'Live' is not one of None, Staging, Production, Archived"):
        Stage.parse("Live")
    with pytest.raises(NotFoundError, match="model 'sentiment-en' has no version 9"):
        registry.transition("sentiment-en", 9, Stage.PRODUCTION)


def test_reconcile_repairs_drift_and_says_what_changed(registry_env):
    settings, _, _ = registry_env
    registry = ModelRegistry(settings)
    card_file = registry.cards.path("topic-news", 1)
    document = json.loads(card_file.read_text())
    document["stage"] = "Production"
    card_file.write_text(json.dumps(document))
    orphan = registry.cards.path("topic-news", 7)
    shutil.copy(card_file, orphan)
    orphan.write_text(orphan.read_text().replace('"version": 1', '"version": 7'))
    changes = registry.reconcile("topic-news")
    assert changes == [
        "topic-news@1: stage Production -> Staging",
        "topic-news@7: removed card (no such version in the registry)",
    ]
    assert not orphan.exists() and registry.cards.get("topic-news", 1).stage == "Staging"
    assert registry.reconcile("topic-news") == []


def test_search_filters(registry_env):
    settings, _, _ = registry_env
    cards = ModelRegistry(settings).cards
    names = lambda found: sorted({c.name for c in found})  # noqa: E731
    assert names(search(cards, CardFilter(language="chinese"))) == ["sentiment-zh"]
    assert names(search(cards, CardFilter(tags=["sentiment"]))) == ["sentiment-en", "sentiment-zh"]
    assert names(search(cards, CardFilter(tags=["sentiment", "english"]))) == ["sentiment-en"]
    assert len(search(cards, CardFilter(thresholds=[Threshold.parse("accuracy>=0")]))) >= 4
    assert search(cards, CardFilter(thresholds=[Threshold.parse("accuracy > 1.5")])) == []
    assert names(search(cards, CardFilter(task="text-classification", base_model="nope"))) == []
    with pytest.raises(ConfigError, match="metric threshold 'accuracy is high'"):
        Threshold.parse("accuracy is high")


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("small fast English sentiment model", "sentiment-en"),
        ("detect junk email", "spam-filter"),
        ("classify news articles by topic", "topic-news"),
        ("Chinese sentiment for product reviews", "sentiment-zh"),
    ],
)
def test_recommend_ranks_the_matching_card_first(registry_env, query, expected):
    settings, _, _ = registry_env
    ranked = recommend_for_query(ModelRegistry(settings).cards, query, top_k=3)
    assert ranked[0].card.name == expected
    assert ranked[0].score > ranked[1].score


def test_recommend_from_a_vector_and_from_a_card(registry_env):
    settings, _, _ = registry_env
    cards = ModelRegistry(settings).cards
    card = cards.get("spam-filter", 1)
    ranked = recommend(cards, np.asarray(card.embedding), top_k=2)
    assert ranked[0].card.key == "spam-filter@1" and ranked[0].score == pytest.approx(1.0, abs=1e-3)
    assert "spam-filter@1" not in [
        r.card.key for r in recommend(cards, np.asarray(card.embedding), exclude=card.key)
    ]
    with pytest.raises(ConfigError, match="vector: expected 384 numbers, got 3"):
        recommend(cards, np.ones(3))


def test_loading_accepts_only_matching_platform_safetensors(registry_env, tmp_path):
    settings, results, _ = registry_env
    registry = ModelRegistry(settings)
    folder, card = registry.verified_adapter("spam-filter@1", cache_dir=tmp_path / "ok")
    assert (folder / "adapter_model.safetensors").is_file() and card.name == "spam-filter"

    stored = next(
        Path(settings.mlflow_artifact_root.removeprefix("file://")).rglob(
            f"{results['spam-filter'].mlflow_run_id}/artifacts/artifacts/adapter_model.safetensors"
        )
    )
    original = stored.read_bytes()
    try:
        stored.write_bytes(original[:-8] + b"tampered")
        with pytest.raises(
            PlatformError, match=r"adapter checksum sha256:.* does not match the one recorded at registration"
        ):
            registry.verified_adapter("spam-filter@1", cache_dir=tmp_path / "tampered")
    finally:
        stored.write_bytes(original)
    pickle = stored.with_name("pytorch_model.bin")
    pickle.write_bytes(b"not really a pickle")
    try:
        with pytest.raises(
            PlatformError, match=r"refusing pickle files in the model artifact: pytorch_model\.bin"
        ):
            registry.verified_adapter("spam-filter@1", cache_dir=tmp_path / "pickle")
    finally:
        pickle.unlink()
    extra = stored.with_name("notes.txt")
    extra.write_text("not written by the platform")
    try:
        with pytest.raises(
            PlatformError, match=r"notes\.txt is not a file the platform wrote for this version"
        ):
            registry.verified_adapter("spam-filter@1", cache_dir=tmp_path / "extra")
    finally:
        extra.unlink()
    sneaky = f"{settings.mlflow_artifact_root}/%2e%2e/%2e%2e/evil"
    with pytest.raises(PlatformError, match=r"contains escapes or '\.\.'"):
        registry._check_source(sneaky)
    version = registry.client.create_model_version("spam-filter", source="file:///etc", run_id=None)
    registry.cards.save(
        registry.cards.get("spam-filter", 1).__class__(
            **{**registry.cards.get("spam-filter", 1).to_json(), "version": int(version.version)}
        )
    )
    try:
        with pytest.raises(PlatformError, match="model source 'file:///etc' is outside the artifact root"):
            registry.verified_adapter(f"spam-filter@{version.version}", cache_dir=tmp_path / "outside")
    finally:
        registry.cards.delete("spam-filter", int(version.version))


def test_a_version_made_in_mlflow_behind_the_platform_is_never_served(registry_env, tmp_path):
    """The attack: someone who reaches the tracking server registers their own artifact under a platform
    model (a real run's artifacts, a card copied beside it) and points the production alias at it. The
    checksums the platform serves against live in its database, so the version is refused."""
    settings, _, _ = registry_env
    registry = ModelRegistry(settings)
    genuine = registry.version("spam-filter", 1)
    forged = registry.client.create_model_version("spam-filter", source=genuine.source, run_id=genuine.run_id)
    card = registry.cards.get("spam-filter", 1)
    registry.cards.save(card.__class__(**{**card.to_json(), "version": int(forged.version)}))
    registry.client.set_registered_model_alias("spam-filter", "production", forged.version)
    try:
        with pytest.raises(PlatformError) as refused:
            registry.verified_adapter("spam-filter@production", cache_dir=tmp_path / "forged")
        assert refused.value.code is ErrorCode.PERMISSION_DENIED
        # A routine reconcile never adopts a version; it takes the production alias off one not in Production.
        assert (
            f"spam-filter: alias production on version {forged.version} -> removed (no version in "
            "Production)" in registry.reconcile("spam-filter")
        )
        registry.client.set_registered_model_alias("spam-filter", "production", forged.version)
        with pytest.raises(PlatformError, match="was not registered by this platform"):
            registry.verified_adapter("spam-filter@production", cache_dir=tmp_path / "forged-2")
        adopted = registry.reconcile("spam-filter", adopt=True)  # only the admin's explicit step does
        assert f"spam-filter@{forged.version}: checksums recorded from its model card" in adopted
        assert str(refused.value) == (
            f"spam-filter@{forged.version} was not registered by this platform (no checksum record); an admin "
            "can adopt versions registered before records existed with `finetune models reconcile --adopt`"
        )
    finally:
        registry.client.delete_registered_model_alias("spam-filter", "production")
        registry.cards.delete("spam-filter", int(forged.version))
        registry.client.delete_model_version("spam-filter", forged.version)
        from finetune_platform.db.models import ModelVersionRecord
        from finetune_platform.db.session import session_scope

        with session_scope(settings) as session:
            record = session.get(ModelVersionRecord, ("spam-filter", int(forged.version)))
            if record is not None:
                session.delete(record)


def test_registry_over_a_real_mlflow_server(mlflow_server, tiny_bert, sentiment_data, tmp_path):
    url, _ = mlflow_server
    settings = Settings(
        FINETUNE_HOME=tmp_path / "home", MLFLOW_TRACKING_URI=url, MODEL_REGISTRY_DIR=tmp_path / "cards"
    )
    train_file, validation_file = sentiment_data
    for _ in range(2):
        raw = tiny_config_dict(
            tiny_bert, train_file, validation_file, tmp_path / "r", max_steps=4, eval_steps=2
        )
        raw["registry"] = {"model_name": "served-model", **UNGATED}
        run_training(config_from_dict(raw), settings=settings, show_progress=False)
    registry = ModelRegistry(settings)
    assert_stages_in_step(registry, "served-model", {1: "Staging", 2: "Staging"}, {"staging": 2})
    assert registry.transition("served-model", 1, Stage.PRODUCTION).archived == ()
    assert_stages_in_step(
        registry, "served-model", {1: "Production", 2: "Staging"}, {"production": 1, "staging": 2}
    )
    assert registry.transition("served-model", 2, Stage.PRODUCTION).archived == (1,)
    assert [(v.version, v.stage.value) for v in registry.versions("served-model")] == [
        (1, "Archived"),
        (2, "Production"),
    ]
    assert_stages_in_step(registry, "served-model", {1: "Archived", 2: "Production"}, {"production": 2})
    folder, card = registry.verified_adapter("served-model@production", cache_dir=tmp_path / "download")
    assert card.version == 2 and (folder / "adapter_model.safetensors").is_file()
    break_by_hand_and_reconcile(registry, "served-model")


def test_models_and_experiments_cli(registry_env, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from finetune_platform.cli import app
    from finetune_platform.settings import get_settings

    settings, results, _ = registry_env
    monkeypatch.setenv("FINETUNE_HOME", str(settings.FINETUNE_HOME))
    monkeypatch.setenv("MODEL_REGISTRY_DIR", str(settings.MODEL_REGISTRY_DIR))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        listed = runner.invoke(app, ["models", "list", "--name", "topic-news"])
        assert listed.exit_code == 0 and "topic-news" in listed.output and "Staging" in listed.output
        moved = runner.invoke(app, ["models", "transition", "topic-news", "1", "production"])
        assert moved.output.strip() == "topic-news version 1 -> Production"
        shown = json.loads(runner.invoke(app, ["models", "show", "topic-news@production"]).output)
        assert shown["registry"]["aliases"] == ["production"] and "embedding" not in shown["card"]
        assert (
            len(json.loads(runner.invoke(app, ["models", "card", "topic-news", "1"]).output)["embedding"])
            == 384
        )
        found = json.loads(runner.invoke(app, ["models", "search", "--tag", "spam", "--json"]).output)
        assert [card["name"] for card in found] == ["spam-filter"]
        ranked = runner.invoke(app, ["models", "recommend", "junk mail filter", "--top", "1"])
        assert ranked.output.startswith("1. spam-filter@1")
        bad = runner.invoke(app, ["models", "transition", "topic-news", "1", "Live"])
        assert bad.exit_code == 2 and "stage: 'Live' is not one of" in bad.output
        assert "reg-spam-filter" in runner.invoke(app, ["experiments", "list"]).output
        shown_runs = runner.invoke(app, ["experiments", "show", "reg-spam-filter"])
        assert results["spam-filter"].mlflow_run_id in shown_runs.output
        run_ids = [results["spam-filter"].mlflow_run_id, results["topic-news"].mlflow_run_id]
        compared = runner.invoke(
            app, ["experiments", "compare", *run_ids, "--plot", str(tmp_path / "loss.png")]
        )
        assert compared.exit_code == 0, compared.output
        assert "registry.model_name" in compared.output and "final_accuracy" in compared.output
        assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
        one = runner.invoke(app, ["experiments", "compare", run_ids[0]])
        assert one.exit_code == 1 and "compare needs two or more run ids" in one.output
    finally:
        get_settings.cache_clear()


def assert_stages_in_step(
    registry: ModelRegistry, name: str, stages: dict[int, str], aliases: dict[str, int]
):
    """MLflow's own stage, the stage tag, the card and MLflow's stage queries agree on ``stages``; the registered
    model's aliases are exactly ``aliases``. MLflow still warns about stages outside our own calls."""
    client = registry.client
    for version, stage in stages.items():
        mv = client.get_model_version(name, str(version))
        assert (mv.current_stage, mv.tags["stage"], registry.cards.get(name, version).stage) == (stage,) * 3
    for stage in ("Staging", "Production", "Archived"):
        with pytest.warns(FutureWarning, match="Model registry stages will be removed"):
            latest = client.get_latest_versions(name, stages=[stage])
        newest = max((v for v, s in stages.items() if s == stage), default=None)
        assert [(int(mv.version), mv.current_stage) for mv in latest] == ([(newest, stage)] if newest else [])
    assert {alias: int(v) for alias, v in client.get_registered_model(name).aliases.items()} == aliases


def break_by_hand_and_reconcile(registry: ModelRegistry, name: str) -> None:
    """Someone moves MLflow's stages, drops the production alias and edits a card behind the platform's back
    (v1 Archived and v2 Production in the platform's record); reconcile puts all four back."""
    client = registry.client
    with pytest.warns(FutureWarning):
        client.transition_model_version_stage(name, "2", "None")
        client.transition_model_version_stage(name, "1", "Production")
    client.delete_registered_model_alias(name, "production")
    card = registry.cards.get(name, 1)
    card.stage = "Staging"
    registry.cards.save(card)
    assert registry.reconcile(name) == [
        f"{name}@1: MLflow stage Production -> Archived",
        f"{name}@2: MLflow stage None -> Production",
        f"{name}: alias production on no version -> version 2",
        f"{name}@1: stage Staging -> Archived",
    ]
    assert_stages_in_step(registry, name, {1: "Archived", 2: "Production"}, {"production": 2})
    assert registry.reconcile(name) == []


def test_stages_are_mlflows_own_and_the_api_audit_lists_what_was_archived(registry_env, tmp_path):
    """Staging -> Production -> a second Production on the local SQLite store: MLflow's own stage, its stage
    queries, the aliases, the tags and the cards move together; the API's audit entry names the archived
    version; reconcile repairs drift in all four. Versions reuse a trained run's adapter (no training)."""
    import dataclasses
    import warnings

    from fastapi.testclient import TestClient

    from finetune_platform.api.app import create_app
    from finetune_platform.db.session import session_scope
    from finetune_platform.services.users import create_user, token_subject

    settings, results, _ = registry_env
    trained = ModelRegistry(settings)
    card, source = trained.cards.get("sentiment-zh", 1), trained.version("sentiment-zh", 1).source
    settings = settings.model_copy(
        update={"MODEL_REGISTRY_DIR": tmp_path / "cards"}
    )  # search tests' cards apart
    registry = ModelRegistry(settings)

    def register() -> int:
        copy = dataclasses.replace(card, name="stage-flow", tags=list(card.tags))
        run_id = results["sentiment-zh"].mlflow_run_id
        return registry.register(name="stage-flow", run_id=run_id, artifact_uri=source, card=copy).version

    assert register() == 1
    assert_stages_in_step(registry, "stage-flow", {1: "Staging"}, {"staging": 1})

    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert registry.transition("stage-flow", 1, Stage.PRODUCTION).archived == ()
    assert [w for w in caught if issubclass(w.category, FutureWarning)] == []  # silenced in our call...
    assert warnings.filters == filters  # ...and only there: no filter left behind
    assert_stages_in_step(registry, "stage-flow", {1: "Production"}, {"production": 1})

    assert register() == 2
    assert_stages_in_step(
        registry, "stage-flow", {1: "Production", 2: "Staging"}, {"production": 1, "staging": 2}
    )

    app = create_app(settings)
    with session_scope(settings) as session:
        admin = create_user(session, "stage-admin", "long enough", "admin")
        token = app.state.tokens.issue(token_subject(session, admin.id))[0]
    client = TestClient(app, headers={"Authorization": f"Bearer {token}"})
    moved = client.post(
        "/models/transition", json={"name": "stage-flow", "version": 2, "stage": "Production"}
    )
    assert moved.status_code == 200, moved.text
    assert moved.json() == {"name": "stage-flow", "version": 2, "stage": "Production", "archived": [1]}
    (entry,) = client.get("/audit/logs", params={"target": "model:stage-flow@2"}).json()["data"]
    assert (entry["action"], entry["actor_id"]) == ("model.transition", admin.id)
    assert entry["detail"] == {"stage": "Production", "archived": [1]}
    assert_stages_in_step(registry, "stage-flow", {1: "Archived", 2: "Production"}, {"production": 2})
    assert [(v.version, v.stage, v.mlflow_stage) for v in registry.versions("stage-flow")] == [
        (1, Stage.ARCHIVED, Stage.ARCHIVED),
        (2, Stage.PRODUCTION, Stage.PRODUCTION),
    ]

    break_by_hand_and_reconcile(registry, "stage-flow")


def test_two_registrations_racing_for_a_new_name_both_succeed(registry_env, tmp_path):
    """Two workers register the first version of one new name at once: both look the name up, both find
    it missing, both create it. The interleaving is forced on the real store: a second client creates
    the model between this registry's lookup and its create. Before the fix the loser failed the job
    with "Registered Model (name=...) already exists"."""
    import dataclasses

    from mlflow import MlflowClient

    settings, results, _ = registry_env
    trained = ModelRegistry(settings)
    card, source = trained.cards.get("topic-news", 1), trained.version("topic-news", 1).source
    registry = ModelRegistry(settings.model_copy(update={"MODEL_REGISTRY_DIR": tmp_path / "cards"}))
    other_worker = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    lookup = registry.client.get_registered_model

    def lookup_then_lose_the_race(name):
        try:
            return lookup(name)
        finally:
            registry.client.get_registered_model = lookup  # once
            other_worker.create_registered_model(name)  # the other worker's create lands in between

    registry.client.get_registered_model = lookup_then_lose_the_race
    run_id = results["topic-news"].mlflow_run_id
    copy = dataclasses.replace(card, name="raced", tags=list(card.tags))
    info = registry.register(name="raced", run_id=run_id, artifact_uri=source, card=copy)
    assert (info.version, info.stage) == (1, Stage.STAGING)
    assert [v.version for v in ModelRegistry(settings).versions("raced")] == [1]
