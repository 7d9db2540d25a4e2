from pathlib import Path

from finetune_platform.settings import Settings
from finetune_platform.training.callbacks import EarlyStopping, TrackingCallback


def test_early_stopping_counts_evaluations_since_the_best():
    stopper = EarlyStopping("eval_accuracy", greater_is_better=True, patience=2, threshold=0.01)
    history = [
        {"loss": 1.0},
        {"eval_accuracy": 0.80},
        {"eval_accuracy": 0.805},
        {"eval_accuracy": 0.83},
        {"eval_accuracy": 0.835},
    ]
    # 0.805 and 0.835 improve by less than the threshold; 0.83 resets the count.
    assert stopper.evaluations_without_improvement(history) == 1
    assert stopper.evaluations_without_improvement([*history, {"eval_accuracy": 0.70}]) == 2


def test_early_stopping_on_loss_prefers_lower():
    stopper = EarlyStopping("eval_loss", greater_is_better=False, patience=1, threshold=0.0)
    assert stopper.evaluations_without_improvement([{"eval_loss": 0.5}, {"eval_loss": 0.4}]) == 0
    assert stopper.evaluations_without_improvement([{"eval_loss": 0.4}, {"eval_loss": 0.5}]) == 1


def test_tracking_metric_names():
    assert TrackingCallback.metric_name("loss") == "train_loss"
    assert TrackingCallback.metric_name("eval_accuracy") == "eval_accuracy"
    assert TrackingCallback.metric_name("train_runtime") == "final_train_runtime"


def test_settings_default_to_embedded_stores(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = Settings(FINETUNE_HOME=tmp_path / "home")
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
    assert settings.mlflow_artifact_root == (tmp_path / "home" / "mlartifacts").as_uri()


def test_settings_read_the_environment(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("FINETUNE_HOME", "/srv/finetune")
    settings = Settings()
    assert settings.mlflow_tracking_uri == "http://127.0.0.1:5000"
    assert Path("/srv/finetune") == settings.FINETUNE_HOME


def test_an_empty_variable_is_unset_not_an_empty_secret(monkeypatch, tmp_path):
    """`JWT_SECRET=` in a .env or compose file must not become an empty signing key."""
    from finetune_platform.settings import Settings

    monkeypatch.setenv("JWT_SECRET", "")
    monkeypatch.setenv("DATABASE_URL", "")
    monkeypatch.setenv("QUEUE_NAME", "")
    settings = Settings(FINETUNE_HOME=tmp_path)
    assert settings.JWT_SECRET is None and settings.DATABASE_URL is None
    assert settings.QUEUE_NAME == "finetune-training"
    assert settings.database_url == f"sqlite:///{(tmp_path / 'finetune.db').resolve()}"
