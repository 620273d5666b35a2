"""Engine, sessionmaker and schema creation, built lazily from :mod:`bot.dsp.settings`."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from bot.dsp.settings import get_settings


class Base(DeclarativeBase):
    """Declarative base of every DSP table."""


_lock = threading.Lock()
_engine: Engine | None = None
_sessionmaker: sessionmaker[Session] | None = None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def get_engine() -> Engine:
    """Return the process-wide engine, creating it (and the tables) on first use.

    SQLite connections get ``journal_mode=WAL`` and ``foreign_keys=ON``; the parent directory of
    a SQLite file is created. Tables and the audit triggers are created if missing.

    Returns:
        The engine for ``DSP_DATABASE_URL``.
    """
    global _engine
    with _lock:
        if _engine is None:
            url = make_url(get_settings().database_url)
            kwargs: dict[str, Any] = {}
            if url.get_backend_name() == "sqlite":
                if url.database and url.database != ":memory:":
                    Path(url.database).parent.mkdir(parents=True, exist_ok=True)
                kwargs["connect_args"] = {"check_same_thread": False}
            engine = create_engine(url, **kwargs)
            if url.get_backend_name() == "sqlite":
                event.listen(engine, "connect", _sqlite_pragmas)
            _create_all(engine)
            _engine = engine
        return _engine


def get_sessionmaker() -> sessionmaker[Session]:
    """Return the process-wide sessionmaker (``expire_on_commit=False``)."""
    global _sessionmaker
    engine = get_engine()
    with _lock:
        if _sessionmaker is None:
            _sessionmaker = sessionmaker(bind=engine, expire_on_commit=False)
        return _sessionmaker


def _create_all(engine: Engine) -> None:
    from bot.dsp import orm  # noqa: F401  (registers the tables)

    Base.metadata.create_all(engine)
    if engine.dialect.name == "sqlite":
        _add_new_columns(engine)


def _add_new_columns(engine: Engine) -> None:
    """Add the nullable columns a newer version declares to an embedded SQLite file made by an older one.

    Only for the embedded default (a demo file in ``var/`` must survive an update); a column that
    is not nullable cannot be added this way and raises. Production schemas change through
    migrations, not here.

    Raises:
        RuntimeError: a new column is NOT NULL (the file must be recreated: ``make clean-state``).
    """
    present = inspect(engine)
    with engine.begin() as connection:
        for table in Base.metadata.sorted_tables:
            if not present.has_table(table.name):
                continue
            existing = {column["name"] for column in present.get_columns(table.name)}
            for column in table.columns:
                if column.name in existing:
                    continue
                if not column.nullable:
                    raise RuntimeError(f"{table.name}.{column.name} is new and NOT NULL: recreate the database "
                                       "(make clean-state)")
                kind = column.type.compile(dialect=engine.dialect)
                connection.execute(text(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}'))


def init_db() -> None:
    """Create every table and the append-only triggers of ``audit_events`` if missing."""
    _create_all(get_engine())


def reset_engine() -> None:
    """Dispose of the engine so the next use rebuilds it from the current settings (tests)."""
    global _engine, _sessionmaker
    with _lock:
        if _engine is not None:
            _engine.dispose()
        _engine = None
        _sessionmaker = None
