"""Alembic on both databases: round trips, no drift from the models, the head check."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from monitor.errors import DatabaseUnavailableError, SchemaMismatchError
from monitor.store import migrate
from monitor.store.models import Base

ROOT = Path(__file__).resolve().parents[3]
TABLES = {
    "streams",
    "samples",
    "embeddings",
    "raw_content",
    "inbox",
    "inbox_failures",
    "late_references",
    "windows",
    "risk_transitions",
    "reference_sets",
    "estimator_artifacts",
}


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def test_upgrade_downgrade_upgrade_round_trip(engine: Engine) -> None:
    assert migrate.current_revision(engine) is None
    migrate.upgrade(engine)
    assert _tables(engine) == TABLES
    assert migrate.current_revision(engine) == migrate.head_revision()
    migrate.downgrade(engine, "base")
    assert _tables(engine) == set()
    assert migrate.current_revision(engine) is None
    migrate.upgrade(engine)
    assert _tables(engine) == TABLES
    assert migrate.require_head(engine) == migrate.head_revision()


def test_autogenerate_finds_no_difference_between_models_and_migrations(
    migrated: Engine,
) -> None:
    with migrated.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        assert compare_metadata(context, Base.metadata) == []


def test_empty_database_is_refused_with_the_fixing_command(engine: Engine) -> None:
    with pytest.raises(SchemaMismatchError, match=r"empty.*mllm-monitor db upgrade") as info:
        migrate.require_head(engine)
    assert info.value.current is None and info.value.expected == migrate.head_revision()


def test_older_revision_is_refused_with_the_fixing_command(engine: Engine, tmp_path: Path) -> None:
    # The code of "tomorrow": today's migrations plus one more revision.
    newer = tmp_path / "migrations"
    shutil.copytree(
        migrate.default_script_location(),
        newer,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    today = migrate.head_revision()
    (newer / "versions" / "9999_add_note.py").write_text(
        '"""Add a note column."""\n'
        "import sqlalchemy as sa\n"
        "from alembic import op\n\n"
        f'revision = "9999"\ndown_revision = "{today}"\nbranch_labels = None\n'
        "depends_on = None\n\n\n"
        "def upgrade() -> None:\n"
        '    with op.batch_alter_table("streams") as batch:\n'
        '        batch.add_column(sa.Column("note", sa.Text(), nullable=True))\n\n\n'
        "def downgrade() -> None:\n"
        '    with op.batch_alter_table("streams") as batch:\n'
        '        batch.drop_column("note")\n'
    )
    migrate.upgrade(engine)  # today's head
    with pytest.raises(
        SchemaMismatchError, match=rf"revision {today}.*needs 9999.*db upgrade"
    ) as info:
        migrate.require_head(engine, newer)
    assert (info.value.current, info.value.expected) == (today, "9999")
    migrate.upgrade(engine, script_location=newer)
    assert migrate.require_head(engine, newer) == "9999"
    # Today's code meets the database of tomorrow: refused, and not told to "upgrade".
    with pytest.raises(SchemaMismatchError, match="unknown to this version") as info:
        migrate.require_head(engine)
    assert info.value.current == "9999"
    migrate.downgrade(engine, today, newer)  # batch mode on SQLite keeps the data
    assert migrate.require_head(engine) == today


def test_downgrading_an_empty_database_is_an_error(engine: Engine) -> None:
    with pytest.raises(SchemaMismatchError, match="nothing to downgrade"):
        migrate.downgrade(engine, "base")


def test_alembic_command_line_reads_the_url_from_the_settings(db_url: str, engine: Engine) -> None:
    env = {**os.environ, "MLLM_MONITOR_DATABASE__URL": db_url, "PYTHONPATH": str(ROOT)}
    env.pop("MLLM_MONITOR_CONFIG", None)
    alembic = [sys.executable, "-m", "alembic", "-c", str(ROOT / "migrations" / "alembic.ini")]
    done = subprocess.run(
        [*alembic, "upgrade", "head"], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert migrate.current_revision(engine) == migrate.head_revision()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM samples")).scalar_one() == 0


def test_unreachable_server_is_one_clear_error() -> None:
    from monitor.store.engine import create_db_engine

    engine = create_db_engine("postgresql+psycopg://u:secret@127.0.0.1:1/x")
    with pytest.raises(DatabaseUnavailableError) as info:
        migrate.current_revision(engine)
    message = str(info.value)
    assert "\n" not in message and "secret" not in message and "u:***@127.0.0.1:1" in message
