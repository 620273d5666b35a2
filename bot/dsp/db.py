"""Engine, sessionmaker and schema, built lazily from :mod:`bot.dsp.settings`.

The schema is Alembic's (``bot/migrations``, entry points in :mod:`bot.schema`, which also knows the
gateway's tables: this module imports it only when the engine is first built, so the domain layer
does not depend on the gateway). On first use :func:`get_engine` brings the database to the newest
revision: nothing to do when it is there already (the production launcher runs ``dsp db upgrade``
before the services); a fresh SQLite file gets ``create_all`` + ``stamp head``; anything else is
migrated under a lock (PostgreSQL advisory lock, file lock beside a SQLite file).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from bot.dsp.settings import get_settings

#: Constraint and index names (Alembic's advice: SQLite batch migrations can only drop named constraints).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of every DSP table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


_lock = threading.Lock()
_engine: Engine | None = None
_sessionmaker: sessionmaker[Session] | None = None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA case_sensitive_like=ON")  # LIKE as on PostgreSQL (searches compare folded keys)
    cursor.close()


def get_engine() -> Engine:
    """Return the process-wide engine, creating it on first use and bringing the schema to head.

    SQLite connections get ``journal_mode=WAL``, ``foreign_keys=ON``, a busy timeout and a
    case-sensitive ``LIKE`` (as on PostgreSQL); the parent directory of a SQLite file is created.
    PostgreSQL connections use the time zone UTC (the domain stores naive UTC times) and are pinged
    before use (a restarted server is not an error).

    Returns:
        The engine for ``DSP_DATABASE_URL``.

    Raises:
        bot.schema.SchemaError: the database is at a revision this code does not know.
        sqlalchemy.exc.OperationalError: the database is unreachable.
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
            elif url.get_backend_name() == "postgresql":
                kwargs["pool_pre_ping"] = True
                if "options" not in url.query:
                    kwargs["connect_args"] = {"options": "-c timezone=UTC"}
            engine = create_engine(url, **kwargs)
            if url.get_backend_name() == "sqlite":
                event.listen(engine, "connect", _sqlite_pragmas)
            try:
                _ensure_schema(engine)
            except BaseException:
                engine.dispose()
                raise
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


def _ensure_schema(engine: Engine) -> None:
    from bot import schema  # the schema spans the gateway's tables too: imported late (layering)

    schema.ensure_schema(engine)


def init_db() -> None:
    """Bring the database of ``DSP_DATABASE_URL`` to the newest revision (``dsp init-db``, ``make db``).

    Runs the migrations (:func:`bot.schema.upgrade`), adopting an old ``create_all`` SQLite file.
    """
    from bot import schema

    schema.upgrade(get_settings().database_url)


def reset_engine() -> None:
    """Dispose of the engine so the next use rebuilds it from the current settings (tests)."""
    global _engine, _sessionmaker
    with _lock:
        if _engine is not None:
            _engine.dispose()
        _engine = None
        _sessionmaker = None
