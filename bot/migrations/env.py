"""Alembic environment: the application database (DSP domain + gateway tables), SQLite or PostgreSQL.

The connection comes from ``config.attributes["connection"]`` (``bot.schema``), else the URL from
``config.attributes["url"]``, ``-x db=URL`` on the ``alembic`` command line, or ``DSP_DATABASE_URL``.
Migrations run under ``bot.schema.migration_lock`` (PostgreSQL advisory lock, SQLite file lock), so
two processes upgrading at once are safe. SQLite uses batch mode (``render_as_batch``: table copies for
the ALTERs it lacks), with foreign keys off during the migration as Alembic's batch mode requires.
"""

from __future__ import annotations

import logging
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, create_engine
from sqlalchemy.pool import NullPool

from bot import schema

config = context.config
if config.config_file_name is not None and config.get_section("loggers") is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)
log = logging.getLogger("alembic.env")


def _url() -> str:
    return str(config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("db")
               or schema.database_url())


def _include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """Leave out SQLite's own tables from comparisons."""
    return not (type_ == "table" and name is not None and name.startswith("sqlite_"))


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=schema.target_metadata(),
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_object=_include_object,
    )


def _run(connection: Connection) -> None:
    with schema.migration_lock(connection):
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:  # a no-op inside a transaction: migration_lock left none open
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        try:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
            if connection.in_transaction():
                connection.commit()
        finally:
            if sqlite:
                if connection.in_transaction():
                    connection.rollback()
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")


def run_migrations_offline() -> None:
    """Emit the SQL instead of running it (``alembic upgrade head --sql``)."""
    context.configure(url=_url(), target_metadata=schema.target_metadata(), literal_binds=True,
                      render_as_batch=_url().startswith("sqlite"), dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on the given connection, or on a connection of their own."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(_url(), poolclass=NullPool)
    try:
        with engine.connect() as own:
            _run(own)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
