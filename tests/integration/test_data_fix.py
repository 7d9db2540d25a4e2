"""`finetune data fix`: the new file in each format keeps every column and every kept row as written (rows
numbered as the loader numbers them), refusals (in place, an existing output, a changed file), and the lineage
it records in the app database (SQLite and PostgreSQL, migration 0011) that `data diff` and `data versions` show."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import inspect, select, text
from typer.testing import CliRunner

from finetune_platform.cli import app as cli
from finetune_platform.data.fix import audited_options
from finetune_platform.data.loading import iter_chunks
from finetune_platform.data.validation import ValidationOptions, validate_file
from finetune_platform.db import session as db
from finetune_platform.db.models import DatasetVersionRecord
from finetune_platform.settings import Settings, get_settings
from tests.conftest import sentiment_rows, write_csv

CSV = (
    b'text,label,id\r\n"first, with comma",1,a\r\n\r\n"second\r\nspans two lines",0,b\r\nthird,1,c\r\n'
    b'fourth,0,d\r\n"fifth ""quoted""",1,e\r\n'
)
CSV_KEPT = b'text,label,id\r\n"first, with comma",1,a\r\n\r\nthird,1,c\r\n"fifth ""quoted""",1,e\r\n'
TSV = b'text\tlabel\tid\nfirst "quote\t1\ta\nsecond\t0\tb\nthird\t1\tc\nfourth\t0\td\nfifth\t1\te\n'
TSV_KEPT = b'text\tlabel\tid\nfirst "quote\t1\ta\nthird\t1\tc\nfifth\t1\te\n'
JSONL = (
    b'{"text": "first", "label": 1, "id": "a"}\n\nnot json\n[1, 2]\n{"text": "second", "label": 0, "id": "b"}\n'
    b'{"text": "third", "label": 1, "id": "c", "extra": {"nested": true}}\n{"text": "fourth", "label": 0, '
    b'"id": "d"}\n{"text": "fifth", "label": 1, "id": "e"}'
)
JSONL_KEPT = (
    b'{"text": "first", "label": 1, "id": "a"}\n\nnot json\n[1, 2]\n'
    b'{"text": "third", "label": 1, "id": "c", "extra": {"nested": true}}\n{"text": "fifth", "label": 1, "id": "e"}'
)
RECORDS = [{"text": t, "label": i % 2, "id": c} for i, (t, c) in enumerate(zip(
    ["first", "second", "third", "fourth", "fifth"], "abcde", strict=True))]  # fmt: skip
DROPPED = {2, 4}  # the second and fourth data rows


def write_source(path: Path) -> Path:
    kind = path.suffix
    if kind == ".csv":
        path.write_bytes(CSV)
    elif kind == ".tsv":
        path.write_bytes(TSV)
    elif kind == ".jsonl":
        path.write_bytes(JSONL)
    elif kind == ".json":  # the {"data": [...]} shape, a member beside it, and a record that is no object
        path.write_text(json.dumps({"meta": "kept", "data": [RECORDS[0], 7, *RECORDS[1:]]}), encoding="utf-8")
    else:
        pd.DataFrame(RECORDS).to_parquet(path)
    return path


def make_audit(source: Path, rows: set[int], out: Path, role: str = "train", options=None) -> Path:
    """An audit.json of ``source``'s current content naming ``rows`` as label errors (what data audit writes,
    reduced to what data fix reads)."""
    options = options or ValidationOptions()
    content_hash = validate_file(source, audited_options(options), role=role).content_hash
    listed = [{"file": role, "row": row, "text": "t", "label": "0", "suggested": "1", "score": 0.95}
              for row in sorted(rows)]  # fmt: skip
    document = {
        "audit_version": 1,
        "task": "single_label",
        "files": {
            role: {"path": str(source), "content_hash": content_hash, "rows_read": 5, "rows_audited": 5}
        },
        "summary": {},
        "label_errors": {"count": len(listed), "listed": len(listed), "estimated_noise": 0.4, "rows": listed},
        "near_duplicates": {"groups": []},
        "outliers": {"rows": []},
    }
    out.write_text(json.dumps(document), encoding="utf-8")
    return out


def loaded(path: Path) -> list[tuple[int, str]]:
    return [(int(r), str(t)) for chunk in iter_chunks(path, "text", "label")
            for r, t in zip(chunk.frame["row"], chunk.frame["text"], strict=True)]  # fmt: skip


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FINETUNE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_ENABLED", "false")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    get_settings.cache_clear()
    yield tmp_path / "home"
    get_settings.cache_clear()


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json", ".parquet"])
def test_fix_writes_the_kept_rows_in_the_source_format(home, tmp_path, suffix):
    source = write_source(tmp_path / f"train{suffix}")
    before = loaded(source)
    second = "second\r\nspans two lines" if suffix == ".csv" else "second"
    assert [text for row, text in before if row in DROPPED] == [second, "fourth"]  # the loader's numbering
    original = source.read_bytes()
    audit = make_audit(source, DROPPED, tmp_path / "audit.json")
    result = CliRunner().invoke(
        cli, ["data", "fix", str(source), "--audit", str(audit), "--drop", "label_errors"]
    )
    assert result.exit_code == 0, result.output
    fixed = tmp_path / f"train-fixed{suffix}"  # the default name
    assert f"wrote {fixed}: 3 of 5 rows (2 removed;" in result.output
    assert "  label_error            2" in result.output
    assert source.read_bytes() == original  # never edited
    assert [text for _, text in loaded(fixed)] == [text for row, text in before if row not in DROPPED]
    if suffix == ".csv":
        assert fixed.read_bytes() == CSV_KEPT
    elif suffix == ".tsv":
        assert fixed.read_bytes() == TSV_KEPT
    elif suffix == ".jsonl":
        assert fixed.read_bytes() == JSONL_KEPT
    elif suffix == ".json":
        assert json.loads(fixed.read_text()) == {
            "meta": "kept",
            "data": [RECORDS[0], 7, RECORDS[2], RECORDS[4]],
        }
    else:
        kept = pd.read_parquet(fixed)
        assert kept.to_dict("records") == [RECORDS[0], RECORDS[2], RECORDS[4]]
    lineage = json.loads((tmp_path / f"train-fixed{suffix}.lineage.json").read_text())
    assert [item["row"] for item in lineage["rows"]] == sorted(DROPPED)
    assert lineage["removed"] == {"label_error": 2} and lineage["rows_capped"] is False


def test_fix_refuses_in_place_an_existing_output_and_a_changed_file(home, tmp_path):
    source = write_source(tmp_path / "train.csv")
    audit = make_audit(source, DROPPED, tmp_path / "audit.json")
    runner = CliRunner()
    fix = ["data", "fix", str(source), "--audit", str(audit), "--drop", "label_errors:0.9"]
    result = runner.invoke(cli, [*fix, "--output", str(source)])
    assert result.exit_code == 2
    assert f"error: --output {source} is FILE itself: data fix never edits a file in place" in result.output
    result = runner.invoke(cli, [*fix, "--output", str(source), "--force"])  # --force never allows it
    assert result.exit_code == 2 and source.read_bytes() == CSV
    result = runner.invoke(cli, [*fix, "--output", str(tmp_path / "fixed.jsonl")])
    assert result.exit_code == 2
    assert (
        "error: --output " in result.output
        and "write the fixed file in FILE's format (.csv)" in result.output
    )
    result = runner.invoke(cli, [*fix, "--output", str(tmp_path / "nowhere" / "fixed.csv")])
    assert result.exit_code == 2
    assert (
        f"error: --output {tmp_path / 'nowhere' / 'fixed.csv'}: the folder {tmp_path / 'nowhere'} does not exist"
        in (result.output)
    )
    assert runner.invoke(cli, fix).exit_code == 0
    result = runner.invoke(cli, fix)
    assert result.exit_code == 2
    assert (
        f"error: --output {tmp_path / 'train-fixed.csv'} exists: pass --force to replace it" in result.output
    )
    assert runner.invoke(cli, [*fix, "--force"]).exit_code == 0
    result = runner.invoke(cli, [*fix, "--role", "validation", "--output", str(tmp_path / "v.csv")])
    assert result.exit_code == 2
    assert f"error: --role validation: {audit} audited no validation file (its files: train)" in result.output
    result = runner.invoke(cli, [*fix[:-1], "label_errors:2", "--output", str(tmp_path / "v.csv")])
    assert (
        result.exit_code == 2
        and "error: --drop: 'label_errors:2': the score must be from 0 to 1" in result.output
    )
    result = runner.invoke(cli, [*fix, "--text-column", "review", "--output", str(tmp_path / "w.csv")])
    assert result.exit_code == 1  # other columns than the audit's: said so, not "changed"
    assert (
        f"error: {source}: cannot be read with these columns ({source}: missing column(s) 'review'"
        in result.output
    )
    assert "give the columns and task the audit used" in result.output

    source.write_bytes(CSV + b"sixth,0,f\r\n")  # changed since the audit
    result = runner.invoke(cli, [*fix, "--output", str(tmp_path / "after.csv")])
    assert result.exit_code == 1
    assert f"error: {source} has changed since the audit {audit} (content " in result.output
    assert "audit it again with finetune data audit" in result.output
    assert not (tmp_path / "after.csv").exists()


@pytest.fixture
def db_cli(db_settings, tmp_path, monkeypatch) -> Settings:
    monkeypatch.setenv("FINETUNE_HOME", str(db_settings.FINETUNE_HOME))
    monkeypatch.setenv("MLFLOW_ENABLED", "false")
    if db_settings.DATABASE_URL:
        monkeypatch.setenv("DATABASE_URL", db_settings.DATABASE_URL)
    else:
        monkeypatch.delenv("DATABASE_URL", raising=False)
    get_settings.cache_clear()
    yield db_settings
    get_settings.cache_clear()


def test_fix_records_the_lineage_that_diff_and_versions_show(db_cli, tmp_path):
    source = write_csv(
        tmp_path / "train.csv", [(f"{t} {i}", y) for i, (t, y) in enumerate(sentiment_rows(30, 1))]
    )
    drop = set(range(1, 31, 2))  # 15 rows
    audit = make_audit(source, drop, tmp_path / "audit.json")
    runner = CliRunner()
    result = runner.invoke(cli, ["data", "fix", str(source), "--audit", str(audit), "--drop", "label_errors"])
    assert result.exit_code == 0, result.output
    with db.session_scope(db_cli) as session:
        rows = session.scalars(select(DatasetVersionRecord).order_by(DatasetVersionRecord.id)).all()
        parent, made = [(r.version, r.file, r.parent_version, r.lineage, r.rows) for r in rows]
    fixed = tmp_path / "train-fixed.csv"
    assert (parent[1], parent[2], parent[3]) == (str(source.resolve()), None, None)
    assert (made[1], made[2], made[4]) == (str(fixed.resolve()), parent[0], 15)
    lineage = made[3]
    assert lineage["from"] == parent[0] and lineage["drop"] == "label_errors"
    assert lineage["audit"] == str(audit.resolve()) and lineage["removed"] == {"label_error": 15}
    assert lineage["rows"][0] == {"row": 1, "reason": "label_error: given '0', suggested '1', score 0.950"}
    assert len(lineage["rows"]) == 15 and lineage["rows_capped"] is False
    assert f"recorded dataset version {made[0]} (from {parent[0]})" in result.output

    result = runner.invoke(cli, ["data", "diff", str(source), str(fixed)])
    assert result.exit_code == 0, result.output
    assert "removed    15" in result.output
    assert (
        f"lineage: {made[0]} was made by finetune data fix from version {parent[0]} (--drop label_errors, audit "
        f"{audit.resolve()}): removed 15 rows (label_error 15)"
    ) in result.output
    assert f"  ... and 5 more: {fixed.resolve()}.lineage.json" in result.output
    result = runner.invoke(cli, ["data", "diff", parent[0], made[0], "--json"])
    assert json.loads(result.output)["lineage"] == lineage
    result = runner.invoke(cli, ["data", "versions"])
    assert any(line.startswith(made[0]) and f" {parent[0]} " in line for line in result.output.splitlines())


def test_lineage_rows_are_capped_in_the_database_not_in_the_file(home, tmp_path, monkeypatch):
    monkeypatch.setattr("finetune_platform.data.fix.MAX_LINEAGE_ROWS", 4)
    source = write_csv(
        tmp_path / "train.csv", [(f"{t} {i}", y) for i, (t, y) in enumerate(sentiment_rows(20, 1))]
    )
    audit = make_audit(source, set(range(1, 11)), tmp_path / "audit.json")
    result = CliRunner().invoke(
        cli, ["data", "fix", str(source), "--audit", str(audit), "--drop", "label_errors", "--json"]
    )
    assert result.exit_code == 0, result.output
    recorded = json.loads(result.output)
    assert (recorded["rows_removed"], recorded["rows_listed"], recorded["rows_capped"]) == (10, 4, True)
    full = json.loads((tmp_path / "train-fixed.csv.lineage.json").read_text())
    assert (len(full["rows"]), full["rows_capped"]) == (10, False)


def test_migration_0011_adds_and_removes_the_lineage_columns(db_settings):
    assert db.upgrade(db_settings, "0010") == "0010"
    engine = db.engine_for(db_settings.database_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO dataset_versions (version, content_hash, file, format, rows, label_counts, text_column, "
                "label_column, source, created_at) VALUES ('aaaaaaaaaaaa', :hash, '/d.csv', 'csv', 2, '{}', 'text', "
                "'label', 'cli', CURRENT_TIMESTAMP)"
            ),
            {"hash": "a" * 64},
        )
    assert db.upgrade(db_settings) == db.head_revision() == "0011"
    with engine.connect() as connection:
        assert connection.execute(text("SELECT parent_version, lineage FROM dataset_versions")).all() == [
            (None, None)
        ]
    assert db.downgrade(db_settings, "0010") == "0010"
    columns = {column["name"] for column in inspect(engine).get_columns("dataset_versions")}
    assert not columns & {"parent_version", "lineage"} and "source" in columns
    with engine.connect() as connection:
        assert connection.execute(text("SELECT file FROM dataset_versions")).all() == [("/d.csv",)]
