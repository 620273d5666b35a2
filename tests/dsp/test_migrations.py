"""The Alembic migrations (bot/migrations, bot/schema.py) on SQLite and PostgreSQL.

- ``upgrade head`` gives exactly the models' schema (Alembic's compare_metadata finds no difference),
  with the append-only protection of the audit table; downgrade to base then upgrade again works;
- the fast path of a fresh SQLite file (copy of a template the migrations made) is the same schema;
- an embedded SQLite file made by the old ``create_all`` is adopted (stamped) and keeps its data;
- concurrent upgrades from several processes all succeed (PostgreSQL advisory lock, SQLite file lock).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DatabaseError, IntegrityError
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.elements import conv

from bot import schema
from bot.dsp.db import get_engine, reset_engine
from bot.dsp.settings import get_settings
from bot.infra.postgres import create_database

REPO = Path(__file__).resolve().parents[2]


def _diff(url: str) -> list:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, schema.target_metadata())
    finally:
        engine.dispose()


def _triggers(url: str) -> set[str]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                query = "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_events'"
            else:
                query = ("SELECT tgname FROM pg_trigger WHERE tgrelid = 'audit_events'::regclass "
                         "AND NOT tgisinternal")
            return {row[0] for row in connection.execute(text(query))}
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


SQLITE_TRIGGERS = {"audit_events_no_update", "audit_events_no_delete"}
POSTGRES_TRIGGERS = {"audit_events_no_update_delete", "audit_events_no_truncate"}


@pytest.fixture
def pg_url(postgres_server: str) -> str:
    """A new, empty database on the session's PostgreSQL."""
    name = "mig_" + uuid.uuid4().hex[:12]
    create_database(postgres_server, name)
    return make_url(postgres_server).set(database=name).render_as_string(hide_password=False)


def _model_tables() -> set[str]:
    return {name for metadata in schema.target_metadata() for name in metadata.tables}


def test_one_head():
    assert schema.heads() == (schema.head(),)


def test_upgrade_head_on_sqlite_is_the_models_schema(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    schema.upgrade(url)
    assert schema.current(url) == schema.head()
    assert _diff(url) == []
    assert _tables(url) == _model_tables() | {"alembic_version"}
    assert _triggers(url) == SQLITE_TRIGGERS


def test_upgrade_head_on_postgresql_is_the_models_schema(pg_url):
    schema.upgrade(pg_url)
    assert schema.current(pg_url) == schema.head()
    assert _diff(pg_url) == []
    assert _tables(pg_url) == _model_tables() | {"alembic_version"}
    assert _triggers(pg_url) == POSTGRES_TRIGGERS


def _sqlite_schema(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as connection:
        return sorted(connection.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))


def test_the_fast_path_of_a_fresh_sqlite_file_is_the_migrated_schema(dsp_env, tmp_path, monkeypatch):
    fast = tmp_path / "fast.sqlite3"
    monkeypatch.setenv("DSP_DATABASE_URL", f"sqlite:///{fast}")
    get_settings.cache_clear()
    reset_engine()
    get_engine()
    reset_engine()
    migrated = tmp_path / "migrated.sqlite3"
    schema.upgrade(f"sqlite:///{migrated}")
    assert _sqlite_schema(fast) == _sqlite_schema(migrated)
    assert schema.current(f"sqlite:///{fast}") == schema.head()
    assert _diff(f"sqlite:///{fast}") == []
    with sqlite3.connect(fast) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_downgrade_to_base_then_upgrade_again(backend, tmp_path, request):
    url = f"sqlite:///{tmp_path / 'down.sqlite3'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    schema.upgrade(url)
    schema.downgrade(url, "base")
    assert schema.current(url) is None
    assert _tables(url) <= {"alembic_version"}
    schema.upgrade(url)
    assert schema.current(url) == schema.head()
    assert _diff(url) == []
    assert _triggers(url) == (SQLITE_TRIGGERS if backend == "sqlite" else POSTGRES_TRIGGERS)


def _baseline_tables() -> set[str]:
    """The tables of revision 0001: what the code before migrations created (later tables did not exist)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(schema.alembic_config("sqlite://"))
    return set(script.get_revision(schema.BASELINE_REVISION).module.TABLES)


def _old_metadata() -> MetaData:
    """The baseline tables as the code before migrations declared them: no naming convention (unnamed
    primary keys, unique constraints and foreign keys; explicitly named constraints and indexes kept)."""
    baseline = _baseline_tables()
    old = MetaData()
    for metadata in schema.target_metadata():
        for name, table in metadata.tables.items():
            if name in baseline:
                table.to_metadata(old)
    for table in old.tables.values():
        for constraint in table.constraints:
            if isinstance(constraint.name, conv):
                constraint.name = None
    return old


def test_an_old_create_all_sqlite_file_is_stamped_and_keeps_its_data(dsp_env, tmp_path, monkeypatch):
    path = tmp_path / "old.sqlite3"
    old = create_engine(f"sqlite:///{path}", poolclass=NullPool)
    _old_metadata().create_all(old)  # what the old start-up did: create_all, no alembic_version
    with old.begin() as connection:
        connection.execute(text("INSERT INTO patients (matricule, given_name, family_name, birth_date, created_at) "
                                "VALUES ('1985041200158', 'Ana', 'Old', '1985-04-12', '2025-01-01 10:00:00')"))
        connection.execute(text("INSERT INTO audit_events (at, actor, action, outcome) "
                                "VALUES ('2025-01-01 10:00:00', 'cli', 'demo.seed', 'ok')"))
        # an older version: no agent_sessions table, no audit_events.object column, no index on audit_events.at
        connection.execute(text("DROP TABLE agent_sessions"))
        connection.execute(text("DROP INDEX ix_audit_events_at"))
    with old.begin() as connection:
        connection.execute(text("ALTER TABLE audit_events DROP COLUMN object"))
    old.dispose()
    monkeypatch.setenv("DSP_DATABASE_URL", f"sqlite:///{path}")
    get_settings.cache_clear()
    reset_engine()
    engine = get_engine()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT family_name FROM patients")).scalars().all() == ["Old"]
        assert connection.execute(text("SELECT actor, action, object FROM audit_events")).all() == [
            ("cli", "demo.seed", None)]
    reset_engine()
    assert schema.current(f"sqlite:///{path}") == schema.head()
    assert _diff(f"sqlite:///{path}") == []
    assert _triggers(f"sqlite:///{path}") == SQLITE_TRIGGERS


def test_an_older_sqlite_file_gets_the_new_nullable_columns(dsp_env, tmp_path, monkeypatch):
    path = tmp_path / "older.sqlite3"
    with sqlite3.connect(path) as old:
        old.execute("CREATE TABLE audit_events (id INTEGER PRIMARY KEY, at DATETIME NOT NULL, "
                    "actor VARCHAR(64) NOT NULL, on_behalf_of VARCHAR(64), patient_id INTEGER, "
                    "action VARCHAR(64) NOT NULL, outcome VARCHAR(64) NOT NULL, detail TEXT)")
        old.execute("INSERT INTO audit_events (at, actor, action, outcome) "
                    "VALUES ('2025-01-01 10:00:00', 'cli', 'demo.seed', 'ok')")
    monkeypatch.setenv("DSP_DATABASE_URL", f"sqlite:///{path}")
    get_settings.cache_clear()
    reset_engine()
    get_engine()
    reset_engine()
    with sqlite3.connect(path) as upgraded:
        columns = {row[1] for row in upgraded.execute("PRAGMA table_info(audit_events)")}
        kept = upgraded.execute("SELECT actor, action, object FROM audit_events").fetchall()
        version = upgraded.execute("SELECT version_num FROM alembic_version").fetchall()
    assert {"actor_patient_id", "object"} <= columns
    assert kept == [("cli", "demo.seed", None)]
    assert version == [(schema.head(),)]
    assert _diff(f"sqlite:///{path}") == []
    assert _triggers(f"sqlite:///{path}") == SQLITE_TRIGGERS


def test_a_missing_not_null_column_stops_the_adoption(tmp_path):
    path = tmp_path / "broken.sqlite3"
    with sqlite3.connect(path) as old:
        old.execute("CREATE TABLE audit_events (id INTEGER PRIMARY KEY, at DATETIME, actor VARCHAR(64) NOT NULL)")
    with pytest.raises(RuntimeError, match="NOT NULL"):
        schema.upgrade(f"sqlite:///{path}")


def test_a_database_from_newer_code_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'newer.sqlite3'}"
    schema.upgrade(url)
    with sqlite3.connect(tmp_path / "newer.sqlite3") as connection:
        connection.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(schema.SchemaError, match="9999"):
        schema.upgrade(url)


def test_the_audit_table_refuses_update_delete_truncate_on_postgresql(pg_url):
    schema.upgrade(pg_url)
    engine = create_engine(pg_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO audit_events (at, actor, action, outcome) "
                                    "VALUES (now(), 'test', 'x', 'ok')"))
        for statement in ("UPDATE audit_events SET outcome = 'changed'", "DELETE FROM audit_events",
                          "TRUNCATE audit_events"):
            with engine.connect() as connection, pytest.raises(IntegrityError, match="append-only"):
                connection.execute(text(statement))
        with engine.connect() as connection:
            assert connection.execute(text("SELECT outcome FROM audit_events")).scalars().all() == ["ok"]
    finally:
        engine.dispose()


def test_the_audit_table_refuses_update_and_delete_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    schema.upgrade(url)
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO audit_events (at, actor, action, outcome) "
                                    "VALUES ('2026-01-01', 'test', 'x', 'ok')"))
        for statement in ("UPDATE audit_events SET outcome = 'changed'", "DELETE FROM audit_events"):
            with engine.connect() as connection, pytest.raises(DatabaseError, match="append-only"):
                connection.execute(text(statement))
    finally:
        engine.dispose()


_UPGRADE = "import sys\nfrom bot import schema\nschema.upgrade(sys.argv[1])\nprint(schema.current(sys.argv[1]))\n"
_ENGINE = ("import os, sys\nos.environ['DSP_DATABASE_URL'] = sys.argv[1]\nfrom bot.dsp.db import get_engine\n"
           "from sqlalchemy import text\nwith get_engine().connect() as c:\n"
           "    print(c.execute(text('SELECT version_num FROM alembic_version')).scalar())\n")


def _at_once(script: str, url: str, count: int) -> list[subprocess.CompletedProcess]:
    processes = [subprocess.Popen([sys.executable, "-c", script, url], cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(count)]
    done = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return done


def test_concurrent_upgrades_on_postgresql_all_succeed(pg_url):
    results = _at_once(_UPGRADE, pg_url, 3)
    for result in results:
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip() == schema.head()
    assert _diff(pg_url) == []
    pg_password = make_url(pg_url).password
    assert all(pg_password not in result.stdout + result.stderr for result in results)


def test_concurrent_first_starts_on_a_fresh_sqlite_file_all_succeed(tmp_path):
    url = f"sqlite:///{tmp_path / 'race.sqlite3'}"
    for result in _at_once(_ENGINE, url, 3):
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip() == schema.head()
    assert _diff(url) == []


def test_dsp_db_upgrade_and_current(pg_url, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DSP_STATE_DIR": str(tmp_path), "DSP_DATABASE_URL": pg_url}
    dsp = [sys.executable, "-m", "bot.dsp.cli"]
    before = subprocess.run([*dsp, "db", "current"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert before.returncode == 0, before.stderr
    assert json.loads(before.stdout) == {"revision": None, "head": schema.head()}
    done = subprocess.run([*dsp, "db", "upgrade"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"revision": schema.head()}
    again = subprocess.run([*dsp, "init-db"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    password = make_url(pg_url).password
    assert password not in before.stdout + before.stderr + done.stdout + done.stderr + again.stderr
