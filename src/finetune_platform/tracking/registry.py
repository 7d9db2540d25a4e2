"""The model registry: MLflow registered models with Staging → Production → Archived stages.

A version's stage is kept in four places that move together: the ``stage`` tag (None, Staging, Production,
Archived: the platform's record), MLflow's own model-version stage (what ``get_latest_versions``, the MLflow
UI's Stage column and clients of the Finetune-30-days README read), the aliases ``production`` and ``staging``
(the current Production and the version most recently moved to Staging: MLflow 3's replacement for stages),
and the model card. Promoting a version to Production archives the one that held it, in MLflow too
(``archive_existing_versions``), so there is exactly one Production per name; ``reconcile`` repairs any drift.
MLflow 3 deprecates stages; its warning is silenced around our own calls only.
"""

from __future__ import annotations

import logging
import re
import threading
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from finetune_platform.errors import ConfigError, ErrorCode, NotFoundError, PlatformError
from finetune_platform.settings import Settings
from finetune_platform.tracking.client import mlflow_client
from finetune_platform.tracking.model_cards import CardStore, ModelCard, file_checksum

logger = logging.getLogger("finetune_platform.registry")

STAGE_TAG = "stage"
ADAPTER_FILE = "adapter_model.safetensors"
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # TrainConfig's model_name, at most 128
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz"})


class Stage(StrEnum):
    NONE = "None"
    STAGING = "Staging"
    PRODUCTION = "Production"
    ARCHIVED = "Archived"

    @classmethod
    def parse(cls, value: str) -> Stage:
        for stage in cls:
            if stage.value.lower() == value.strip().lower():
                return stage
        raise ConfigError(f"stage: {value!r} is not one of {', '.join(s.value for s in cls)}")


ALIASES = {Stage.PRODUCTION: "production", Stage.STAGING: "staging"}


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: int
    stage: Stage
    run_id: str | None
    source: str
    aliases: tuple[str, ...]
    created_at: str
    mlflow_stage: Stage = Stage.NONE  # MLflow's own current_stage
    stage_tagged: bool = True  # False: no stage tag (made outside the platform); ``stage`` is MLflow's


@dataclass(frozen=True)
class Transition:
    name: str
    version: int
    stage: Stage
    archived: tuple[int, ...]  # versions moved out of Production by this transition


class ModelRegistry:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = mlflow_client(settings)
        self.cards = CardStore(settings.MODEL_REGISTRY_DIR)

    # -- reading ---------------------------------------------------------------------------------
    def _info(self, mv: Any, aliases: tuple[str, ...] | None = None) -> VersionInfo:
        mlflow_stage = Stage.parse(mv.current_stage or Stage.NONE.value)
        tag = mv.tags.get(STAGE_TAG)
        stage = mlflow_stage if tag is None else Stage.parse(tag)
        created = datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat(timespec="seconds")
        found = tuple(mv.aliases or ()) if aliases is None else aliases
        return VersionInfo(
            mv.name,
            int(mv.version),
            stage,
            mv.run_id,
            mv.source,
            found,
            created,
            mlflow_stage,
            tag is not None,
        )

    def versions(self, name: str | None = None) -> list[VersionInfo]:
        if name is not None and not MODEL_NAME.match(name):
            return []  # no model can have this name: nothing user-typed reaches MLflow's filter parser
        query = f"name='{name}'" if name else None
        found = list(self.client.search_model_versions(query))
        # Version searches leave aliases out; the registered model knows which version each alias names.
        aliases: dict[tuple[str, str], list[str]] = {}
        for model_name in {mv.name for mv in found}:
            for alias, version in self.client.get_registered_model(model_name).aliases.items():
                aliases.setdefault((model_name, str(version)), []).append(alias)
        infos = [self._info(mv, tuple(sorted(aliases.get((mv.name, str(mv.version)), [])))) for mv in found]
        return sorted(infos, key=lambda v: (v.name, v.version))

    def version(self, name: str, version: int) -> VersionInfo:
        from mlflow.exceptions import MlflowException  # lazy: mlflow, only when the registry is used

        try:
            return self._info(self.client.get_model_version(name, str(version)))
        except MlflowException:
            raise NotFoundError(f"model {name!r} has no version {version}") from None

    def resolve(self, reference: str) -> VersionInfo:
        """'name' (newest), 'name@3', 'name@production' or 'name@staging'."""
        from mlflow.exceptions import MlflowException  # lazy: mlflow, only when the registry is used

        name, _, selector = reference.partition("@")
        if not MODEL_NAME.match(name):
            raise NotFoundError(f"no registered model {name[:130]!r}")
        if not selector:
            versions = self.versions(name)
            if not versions:
                raise NotFoundError(f"no registered model {name!r}")
            return versions[-1]
        if selector.isascii() and selector.isdigit() and len(selector) <= 9:
            return self.version(name, int(selector))
        if selector.lower() not in ALIASES.values():
            raise NotFoundError(
                f"model {name!r}: {selector[:40]!r} is not a version number, 'production' or 'staging'"
            )
        try:
            return self._info(self.client.get_model_version_by_alias(name, selector.lower()))
        except MlflowException:
            raise NotFoundError(f"model {name!r} has no version with alias {selector!r}") from None

    # -- writing ---------------------------------------------------------------------------------
    def register(
        self, *, name: str, run_id: str, artifact_uri: str, card: ModelCard, owner_id: int | None = None
    ) -> VersionInfo:
        """A new version from a finished run, in Staging, with its model card and, in the app database, its
        owner's claim on the name and the checksums it will be served against."""
        # lazy: sqlalchemy (db), which `finetune predict` and `serve` (inference.pool imports this) never load
        from finetune_platform.db.session import ensure_database, session_scope
        from finetune_platform.tracking.ownership import claim_name, owner_of, record_version

        ensure_database(self.settings)
        with session_scope(self.settings) as session:
            if owner_id is not None:
                claim_name(session, name, owner_id, is_admin=_is_admin(session, owner_id))
            card.owner = _username(session, owner_of(session, name))

        self._ensure_registered_model(name, card.description)
        mv = self.client.create_model_version(
            name,
            source=artifact_uri,
            run_id=run_id,
            tags={STAGE_TAG: Stage.NONE.value},
            description=card.description or None,
        )
        card.version = int(mv.version)
        card.created_at = datetime.now(UTC).isoformat(timespec="seconds")
        with session_scope(self.settings) as session:
            record_version(
                session,
                name,
                card.version,
                owner_id=owner_id,
                run_id=run_id,
                adapter_checksum=card.adapter_checksum,
                artifact_checksums=card.artifact_checksums,
            )
        self.cards.save(card)
        self.transition(name, int(mv.version), Stage.STAGING)
        return self.version(name, int(mv.version))

    def _ensure_registered_model(self, name: str, description: str | None) -> None:
        """Create the registered model unless it exists. Two workers registering the first version of one
        name at once both see it missing; the one that loses the create finds it made and goes on."""
        from mlflow.exceptions import MlflowException  # lazy: mlflow, only when the registry is used

        try:
            self.client.get_registered_model(name)
            return
        except MlflowException:
            pass
        try:
            self.client.create_registered_model(name, description=description or None)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    def version_for_run(self, name: str, run_id: str) -> VersionInfo | None:
        """The version of ``name`` registered from MLflow run ``run_id``, if there is one."""
        found = self.client.search_model_versions(
            f"name = '{_quoted(name)}' and run_id = '{_quoted(run_id)}'"
        )
        return self.version(name, int(found[0].version)) if found else None

    def transition(self, name: str, version: int, stage: Stage) -> Transition:
        """Move a version to a stage (tag, MLflow stage, aliases, card); Production archives the previous
        Production (exactly one). The result lists the versions archived, for the audit trail."""
        target = self.version(name, version)
        archived: list[int] = []
        if stage is Stage.PRODUCTION:
            archived = [
                other.version
                for other in self.versions(name)
                if other.version != version and Stage.PRODUCTION in (other.stage, other.mlflow_stage)
            ]
            # One MLflow call swaps Production in its store (archive_existing_versions); tags and cards follow.
            self._set_mlflow_stage(name, version, stage, archive_existing=True)
            for other in archived:
                self._set_stage(name, other, Stage.ARCHIVED)
        for alias_stage, alias in ALIASES.items():
            if alias in target.aliases and alias_stage is not stage:
                self.client.delete_registered_model_alias(name, alias)
        self._set_stage(name, version, stage)
        if stage in ALIASES:
            self.client.set_registered_model_alias(name, ALIASES[stage], str(version))
        logger.info(
            "model %s version %d -> %s%s",
            name,
            version,
            stage.value,
            f" (archived {', '.join(map(str, archived))})" if archived else "",
        )
        return Transition(name, version, stage, tuple(archived))

    def _set_stage(self, name: str, version: int, stage: Stage) -> None:
        """The stage of one version in MLflow, in its tag and on its card (aliases are the caller's)."""
        if self.client.get_model_version(name, str(version)).current_stage != stage.value:
            self._set_mlflow_stage(name, version, stage)
        self.client.set_model_version_tag(name, str(version), STAGE_TAG, stage.value)
        try:
            card = self.cards.get(name, version)
        except NotFoundError:
            return
        if card.stage != stage.value:
            card.stage = stage.value
            self.cards.save(card)

    def _set_mlflow_stage(
        self, name: str, version: int, stage: Stage, *, archive_existing: bool = False
    ) -> None:
        """MLflow's own stage. MLflow 3 deprecates stages with a FutureWarning on every call: silenced here,
        for this call only (the lock keeps concurrent requests from restoring each other's filter lists)."""
        with _STAGE_CALLS, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_STAGES_DEPRECATED, category=FutureWarning)
            self.client.transition_model_version_stage(
                name, str(version), stage.value, archive_existing_versions=archive_existing
            )

    def reconcile(self, name: str | None = None, *, adopt: bool = False) -> list[str]:
        """Make MLflow's stages, the aliases and the cards (of one model, or all) match the stage tags, with one
        Production per name; return one line per change. ``adopt``: also take the checksums of cards without a
        record in the app database (an admin's explicit step)."""
        changes = []
        for model_name in sorted({v.name for v in self.versions(name)}):
            changes += self._reconcile_stages(model_name)
        registered = {(v.name, v.version): v for v in self.versions(name)}
        for card in self.cards.all():
            if name is not None and card.name != name:
                continue
            info = registered.get((card.name, card.version))
            if info is None:
                self.cards.delete(card.name, card.version)
                changes.append(f"{card.key}: removed card (no such version in the registry)")
            elif card.stage != info.stage.value:
                changes.append(f"{card.key}: stage {card.stage} -> {info.stage.value}")
                card.stage = info.stage.value
                self.cards.save(card)
        if adopt:
            changes += self._adopt(name)
        carded = {(c.name, c.version) for c in self.cards.all()}
        for key, info in registered.items():
            if key not in carded:
                changes.append(
                    f"{info.name}@{info.version}: no card (register again from its run to create one)"
                )
        return changes

    def _reconcile_stages(self, name: str) -> list[str]:
        """One model's MLflow stages and aliases brought in step with its stage tags, the platform's record (a
        version without a tag, made in MLflow directly, is recorded with the stage MLflow gives it). Of several
        Production versions the one the ``production`` alias names stays (else the newest); the rest are
        archived. The ``production`` alias names the Production version; a ``staging`` alias on a version no
        longer in Staging is removed (as a transition out of Staging does)."""
        changes = []
        versions = self.versions(name)
        for info in versions:
            if not info.stage_tagged:
                self.client.set_model_version_tag(name, str(info.version), STAGE_TAG, info.stage.value)
                changes.append(f"{name}@{info.version}: stage tag set to {info.stage.value} (MLflow's stage)")
        production = [v for v in versions if v.stage is Stage.PRODUCTION]
        if len(production) > 1:
            alias = ALIASES[Stage.PRODUCTION]
            keep = next((v for v in production if alias in v.aliases), production[-1])
            for info in production:
                if info is not keep:
                    self.client.set_model_version_tag(
                        name, str(info.version), STAGE_TAG, Stage.ARCHIVED.value
                    )
                    changes.append(
                        f"{name}@{info.version}: stage Production -> Archived "
                        f"(version {keep.version} stays Production)"
                    )
        versions = self.versions(name)
        for info in versions:
            if info.mlflow_stage is not info.stage:
                self._set_mlflow_stage(name, info.version, info.stage)
                changes.append(
                    f"{name}@{info.version}: MLflow stage {info.mlflow_stage.value} -> {info.stage.value}"
                )
        holders = {alias: v for v in versions for alias in v.aliases}
        alias = ALIASES[Stage.PRODUCTION]
        current = holders.get(alias)
        wanted = next((v for v in versions if v.stage is Stage.PRODUCTION), None)
        if (current and current.version) != (wanted and wanted.version):
            if wanted is not None:
                self.client.set_registered_model_alias(name, alias, str(wanted.version))
            else:
                self.client.delete_registered_model_alias(name, alias)
            was = f"version {current.version}" if current else "no version"
            now = f"version {wanted.version}" if wanted else "removed (no version in Production)"
            changes.append(f"{name}: alias {alias} on {was} -> {now}")
        alias = ALIASES[Stage.STAGING]
        current = holders.get(alias)
        if current is not None and current.stage is not Stage.STAGING:
            self.client.delete_registered_model_alias(name, alias)
            changes.append(
                f"{name}: alias {alias} on version {current.version} -> removed (it is {current.stage.value})"
            )
        return changes

    def _adopt(self, name: str | None) -> list[str]:
        """Versions registered before the platform kept checksum records: record their cards' checksums
        (an admin's explicit step, so nothing registered behind the platform's back is adopted silently)."""
        # lazy: sqlalchemy (db), which `finetune predict` and `serve` (inference.pool imports this) never load
        from finetune_platform.db.session import ensure_database, session_scope
        from finetune_platform.tracking.ownership import checksums, record_version

        ensure_database(self.settings)
        adopted = []
        with session_scope(self.settings) as session:
            for card in self.cards.all():
                if (name is None or card.name == name) and checksums(
                    session, card.name, card.version
                ) is None:
                    record_version(
                        session,
                        card.name,
                        card.version,
                        owner_id=None,
                        run_id=card.run_id,
                        adapter_checksum=card.adapter_checksum,
                        artifact_checksums=card.artifact_checksums,
                    )
                    adopted.append(f"{card.key}: checksums recorded from its model card")
        return adopted

    # -- loading ---------------------------------------------------------------------------------
    def verified_adapter(self, reference: str, cache_dir: Path | None = None) -> tuple[Path, ModelCard]:
        """The adapter folder of a version, refusing anything but platform-written, checksum-matching safetensors.

        The source must be an artifact of an MLflow run (``runs:``, ``mlflow-artifacts:`` or a file under the
        artifact root); pickle files are refused; every file's checksum must equal the one the platform
        recorded in its own database when it registered the version (a version created or altered in MLflow
        behind the platform's back has no such record, or other files, and is refused).
        """
        # lazy: mlflow, and sqlalchemy (db), which `finetune predict` and `serve` never load
        import mlflow

        from finetune_platform.db.session import ensure_database, session_scope
        from finetune_platform.tracking.ownership import checksums

        info = self.resolve(reference)
        card = self.cards.get(info.name, info.version)
        self._check_source(info.source)
        ensure_database(self.settings)
        with session_scope(self.settings) as session:
            recorded = checksums(session, info.name, info.version)
        if recorded is None:
            raise PlatformError(
                f"{info.name}@{info.version} was not registered by this platform (no checksum record); an admin "
                "can adopt versions registered before records existed with `finetune models reconcile --adopt`",
                ErrorCode.PERMISSION_DENIED,
            )
        target = Path(cache_dir or (self.settings.FINETUNE_HOME / "models" / f"{info.name}-v{info.version}"))
        target.mkdir(parents=True, exist_ok=True)
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=info.source, dst_path=str(target), tracking_uri=self.settings.mlflow_tracking_uri
            )
        )
        files = sorted(p for p in local.rglob("*") if p.is_file())
        pickles = [p.name for p in files if p.suffix.lower() in PICKLE_SUFFIXES]
        if pickles:
            raise PlatformError(
                f"{reference}: refusing pickle files in the model artifact: {', '.join(pickles)}",
                ErrorCode.PERMISSION_DENIED,
            )
        adapter = local / ADAPTER_FILE
        if not adapter.is_file():
            raise PlatformError(f"{reference}: the artifact has no {ADAPTER_FILE}", ErrorCode.NOT_FOUND)
        checksum = file_checksum(adapter)
        if checksum != recorded.adapter:
            raise PlatformError(
                f"{reference}: adapter checksum {checksum} does not match the one recorded at registration "
                f"({recorded.adapter})",
                ErrorCode.PERMISSION_DENIED,
            )
        if recorded.artifacts:
            for path in files:
                name = path.relative_to(local).as_posix()
                if recorded.artifacts.get(name) != file_checksum(path):
                    raise PlatformError(
                        f"{reference}: {name} is not a file the platform wrote for this version (checksum differs "
                        "or it is not on the model card)",
                        ErrorCode.PERMISSION_DENIED,
                    )
        return local, card

    def _check_source(self, source: str) -> None:
        if "%" in source or ".." in source.split("/"):
            raise PlatformError(
                f"model source {source!r} contains escapes or '..'", ErrorCode.PERMISSION_DENIED
            )
        if source.startswith(("runs:/", "mlflow-artifacts:/")):
            return
        root = self.settings.mlflow_artifact_root
        if source.startswith("file://") and root.startswith("file://"):
            path = Path(unquote(urlparse(source).path)).resolve()
            if path.is_relative_to(Path(unquote(urlparse(root).path)).resolve()):
                return
        raise PlatformError(
            f"model source {source!r} is outside the artifact root {root}", ErrorCode.PERMISSION_DENIED
        )


_STAGES_DEPRECATED = r".*[Mm]odel registry stages"  # MLflow's FutureWarning on every stage call
_STAGE_CALLS = threading.Lock()


def _quoted(value: str) -> str:
    return value.replace("'", "''")


def _is_admin(session: Any, user_id: int) -> bool:
    from finetune_platform.db.models import Role, User  # lazy: sqlalchemy (db), as in register

    user = session.get(User, user_id)
    return user is not None and user.role == Role.ADMIN.value


def _username(session: Any, user_id: int | None) -> str | None:
    from finetune_platform.db.models import User  # lazy: sqlalchemy (db), as in register

    user = session.get(User, user_id) if user_id is not None else None
    return None if user is None else user.username
