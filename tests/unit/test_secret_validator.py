"""The secret policy is a validator of ``Settings``: enforcing validation refuses weak secrets outside local
mode, plain construction does not (security-check must read what it reports on), and ``check_secrets`` goes
through the same validator."""

import pytest
from pydantic import ValidationError

from finetune_platform.errors import ConfigError
from finetune_platform.settings import Settings

STRONG = "9f8e7d6c5b4a39281706f5e4d3c2b1a0f1e2d3c4b5a69788a7b6c5d4e3f2a1b0"
ENFORCE = {"secrets": "enforce", "require_jwt": True}


def test_enforcing_validation_refuses_a_weak_secret_outside_local_mode():
    with pytest.raises(ValidationError, match="METRICS_TOKEN: looks like a placeholder"):
        Settings.model_validate(
            {"ENVIRONMENT": "production", "JWT_SECRET": STRONG, "METRICS_TOKEN": "x" * 40}, context=ENFORCE
        )
    with pytest.raises(ValidationError, match="JWT_SECRET is required outside local mode"):
        Settings.model_validate({"ENVIRONMENT": "staging"}, context=ENFORCE)


def test_a_process_without_jwt_starts_on_api_keys_alone():
    allowed = Settings.model_validate(
        {"ENVIRONMENT": "production", "SERVE_API_KEYS": [STRONG]},
        context={"secrets": "enforce", "require_jwt": False},
    )
    allowed.check_secrets(require_jwt=False)
    with pytest.raises(ConfigError, match="JWT_SECRET is required outside local mode"):
        allowed.check_secrets()


def test_plain_construction_and_local_mode_are_not_refused():
    weak = Settings(ENVIRONMENT="production", JWT_SECRET="short")
    assert weak.secret_problems() == [
        "JWT_SECRET: at least 32 bytes outside local mode (got 5); generate one with `openssl rand -hex 32`"
    ]
    with pytest.raises(ConfigError, match=r"^JWT_SECRET: at least 32 bytes outside local mode \(got 5\)"):
        weak.check_secrets()
    Settings.model_validate({"ENVIRONMENT": "local", "JWT_SECRET": "short"}, context=ENFORCE).check_secrets()


def test_a_copy_changed_after_construction_is_checked_as_it_is_now():
    local = Settings(ENVIRONMENT="local", METRICS_TOKEN="changeme")
    local.check_secrets()
    production = local.model_copy(update={"ENVIRONMENT": "production", "JWT_SECRET": STRONG})
    with pytest.raises(ConfigError, match="METRICS_TOKEN: at least 32 bytes"):
        production.check_secrets()
