"""The schema of the application database — DSP domain tables and gateway tables — and its Alembic migrations.

One database holds both (``DSP_DATABASE_URL``): the domain layer's ``Base.metadata``
(:mod:`bot.dsp.orm`) and the gateway's ``GatewayBase.metadata`` (:mod:`bot.gateway.store`). This module
sits above both so that the domain layer imports nothing of the gateway: :mod:`bot.dsp.db` calls it
lazily, the ``dsp db`` commands and ``bot/migrations/env.py`` directly.

Entry points:

- :func:`upgrade` / :func:`current` / :func:`downgrade` — ``dsp db upgrade``, ``dsp db current``, the
  production launcher (before it starts the services) and the tests.
- :func:`ensure_schema` — what :func:`bot.dsp.db.get_engine` does on first use: nothing when the
  database is at the head revision; otherwise it migrates under the migration lock. A *fresh, empty
  SQLite* file (every test's database) takes a fast path: a page copy (SQLite backup API) of a
  template that the real migrations made once per process — the same schema by construction, about
  3 ms instead of ~100-350 ms for ``upgrade head`` (``create_all`` + ``stamp`` is ~50 ms).
  PostgreSQL always migrates.
- An embedded SQLite file made by the old ``create_all`` (tables, no ``alembic_version``) is
  *adopted*: revision 0001 runs in adopt mode (creates what is missing, adds the nullable columns a
  newer model declared and, on SQLite, rebuilds each table as 0001 declares it, rows kept), then the
  later revisions run.

Concurrency: :func:`migration_lock` serialises migrations — ``pg_advisory_lock`` on PostgreSQL (two
processes starting at once: the second waits, then finds the database at head), an exclusive
``flock`` on ``<file>.migrate-lock`` beside a SQLite file.

Adding a revision: see ``bot/migrations/README.md``.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import importlib
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

#: The Alembic script directory (``env.py``, ``versions/``).
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: The revision an old ``create_all`` database is brought to, then stamped with.
BASELINE_REVISION = "0001"
#: Key of the PostgreSQL advisory lock held while migrating ("mydsp" in ASCII).
ADVISORY_LOCK_KEY = 0x6D79647370
#: Modules that declare tables of this database, imported before the metadata is used. A module
#: that declares a new table on ``Base`` or ``GatewayBase`` is added here.
MODEL_MODULES = ("bot.dsp.orm", "bot.gateway.store", "bot.gateway.replies")
_LOCK_DEPTH = "mydsp_migration_lock_depth"


class SchemaError(RuntimeError):
    """The database's revision is unknown to this code (newer code migrated it), or a migration cannot run."""


def target_metadata() -> list[MetaData]:
    """Return the metadata of every table of the database: ``[Base.metadata, GatewayBase.metadata]``."""
    for module in MODEL_MODULES:
        importlib.import_module(module)
    from bot.dsp.db import Base
    from bot.gateway.store import GatewayBase

    return [Base.metadata, GatewayBase.metadata]


def database_url(url: str | None = None) -> str:
    """Return `url`, or ``DSP_DATABASE_URL`` from the domain settings when None."""
    if url:
        return url
    from bot.dsp.settings import get_settings

    return get_settings().database_url


def alembic_config(url: str | None = None, connection: Connection | None = None, **attributes: Any) -> Any:
    """Build the Alembic ``Config`` of the migrations (no ini file needed).

    Args:
        url: database URL (default ``DSP_DATABASE_URL``) when no `connection` is given; passed to
            ``env.py`` in ``config.attributes`` (never written to a file or a log).
        connection: an open connection for ``env.py`` to use instead of making its own.
        **attributes: more ``config.attributes`` (``adopt_legacy=True`` for revision 0001).
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    else:
        config.attributes["url"] = database_url(url)
    config.attributes.update(attributes)
    return config


@functools.lru_cache(maxsize=1)
def heads() -> tuple[str, ...]:
    """Return the head revision(s) of the migration scripts (one, unless two branches were merged badly)."""
    from alembic.script import ScriptDirectory

    return tuple(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads())


def head() -> str:
    """Return the single head revision.

    Raises:
        SchemaError: the scripts have several heads (two revisions with the same ``down_revision``:
            fix with ``alembic merge heads`` or by re-parenting one).
    """
    found = heads()
    if len(found) != 1:
        raise SchemaError(f"the migrations have {len(found)} heads: {', '.join(found)}")
    return found[0]


def _sqlite_lock_path(connection: Connection) -> Path | None:
    url = connection.engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    if url.database.startswith("file:"):
        return None
    return Path(url.database).with_name(Path(url.database).name + ".migrate-lock")


@contextlib.contextmanager
def migration_lock(connection: Connection) -> Iterator[None]:
    """Hold the migration lock of the connection's database (re-entrant on the same connection).

    PostgreSQL: ``pg_advisory_lock(ADVISORY_LOCK_KEY)`` (session level, so it spans the migration's
    own transactions). SQLite file: an exclusive ``flock`` on ``<file>.migrate-lock``. Other
    databases (in-memory SQLite): nothing. Leaves no transaction open on `connection`.
    """
    depth = connection.info.get(_LOCK_DEPTH, 0)
    if depth:
        connection.info[_LOCK_DEPTH] = depth + 1
        try:
            yield
        finally:
            connection.info[_LOCK_DEPTH] = depth
        return
    dialect = connection.dialect.name
    handle = None
    if dialect == "postgresql":
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
        connection.commit()
    else:
        path = _sqlite_lock_path(connection)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = path.open("a")
            fcntl.flock(handle, fcntl.LOCK_EX)
    connection.info[_LOCK_DEPTH] = 1
    try:
        yield
    finally:
        connection.info.pop(_LOCK_DEPTH, None)
        if dialect == "postgresql":
            with contextlib.suppress(Exception):
                connection.rollback()
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY})
                connection.commit()
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


def _current_heads(connection: Connection) -> tuple[str, ...]:
    from alembic.runtime.migration import MigrationContext

    found = tuple(MigrationContext.configure(connection).get_current_heads())
    connection.commit()
    return found


def _application_tables(connection: Connection) -> set[str]:
    names = set(inspect(connection).get_table_names())
    connection.commit()
    return names - {"alembic_version"}


def _state(connection: Connection) -> str:
    """``"versioned"`` (has a revision), ``"empty"`` (no table at all) or ``"legacy"`` (tables, no revision)."""
    if _current_heads(connection):
        return "versioned"
    return "legacy" if _application_tables(connection) else "empty"


def _check_known(connection: Connection) -> None:
    unknown = [rev for rev in _current_heads(connection) if rev not in _known_revisions()]
    if unknown:
        raise SchemaError(f"the database is at revision {', '.join(unknown)}, which this code does not know "
                          "(it was migrated by a newer version): update the code")


@functools.lru_cache(maxsize=1)
def _known_revisions() -> frozenset[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return frozenset(rev.revision for rev in script.walk_revisions())


@functools.lru_cache(maxsize=1)
def _sqlite_template() -> Path:
    """A SQLite file made by the real migrations (``upgrade head``), once per process, removed at exit."""
    directory = Path(tempfile.mkdtemp(prefix="mydsp-schema-"))
    atexit.register(shutil.rmtree, directory, True)
    path = directory / "head.sqlite3"
    upgrade(f"sqlite:///{path}")
    return path


def _copy_sqlite_template(connection: Connection) -> None:
    """Fill an empty SQLite database with the head schema: a page copy of the template (SQLite backup API)."""
    connection.commit()
    target = connection.connection.dbapi_connection
    source = sqlite3.connect(_sqlite_template())
    try:
        source.backup(target)  # type: ignore[arg-type]
    finally:
        source.close()


def _migrate(connection: Connection, revision: str = "head", *, fast_fresh_sqlite: bool = False) -> None:
    """Bring the connection's database to `revision` under the migration lock (adopting a legacy one)."""
    from alembic import command

    with migration_lock(connection):
        state = _state(connection)
        if state == "versioned":
            _check_known(connection)
        elif state == "legacy":
            command.upgrade(alembic_config(connection=connection, adopt_legacy=True), BASELINE_REVISION)
        elif fast_fresh_sqlite and revision == "head" and connection.dialect.name == "sqlite":
            _copy_sqlite_template(connection)
            return
        command.upgrade(alembic_config(connection=connection), revision)


def _engine(url: str | None) -> Engine:
    resolved = make_url(database_url(url))
    if resolved.get_backend_name() == "sqlite" and resolved.database and resolved.database != ":memory:":
        Path(resolved.database).parent.mkdir(parents=True, exist_ok=True)
    return create_engine(resolved, poolclass=NullPool)


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Migrate the database to `revision` (default: head) — what ``dsp db upgrade`` runs.

    Safe to run from several processes at once (:func:`migration_lock`); an old ``create_all``
    database is adopted first (see the module docstring). Always the real migrations, no fast path.

    Args:
        url: SQLAlchemy URL (default ``DSP_DATABASE_URL``).
        revision: target revision (``head``, ``0001``, ...).

    Raises:
        SchemaError: the database is at a revision this code does not know.
        sqlalchemy.exc.SQLAlchemyError: the database is unreachable or a migration failed.
        RuntimeError: an old SQLite file lacks a NOT NULL column that cannot be added (``make clean-state``).
    """
    engine = _engine(url)
    try:
        with engine.connect() as connection:
            _migrate(connection, revision)
    finally:
        engine.dispose()


def downgrade(url: str | None, revision: str) -> None:
    """Migrate the database down to `revision` (``base`` drops every table; tests and developers only)."""
    from alembic import command

    engine = _engine(url)
    try:
        with engine.connect() as connection, migration_lock(connection):
            command.downgrade(alembic_config(connection=connection), revision)
    finally:
        engine.dispose()


def current(url: str | None = None) -> str | None:
    """Return the database's revision (``"0001"``), None when it has none (empty or pre-migrations file).

    Several heads (branches) are joined with commas.
    """
    engine = _engine(url)
    try:
        with engine.connect() as connection:
            found = _current_heads(connection)
    finally:
        engine.dispose()
    return ",".join(found) if found else None


def ensure_schema(engine: Engine) -> None:
    """Bring `engine`'s database to head if it is not (``get_engine``'s first use); cheap when it is.

    A fresh empty SQLite database gets a copy of the per-process template that ``upgrade head`` made
    (fast, same schema); anything else runs the migrations under :func:`migration_lock`.

    Raises:
        SchemaError: the database is at a revision this code does not know (newer code migrated it).
    """
    with engine.connect() as connection:
        if _current_heads(connection) == (head(),):
            return
        _migrate(connection, "head", fast_fresh_sqlite=True)
