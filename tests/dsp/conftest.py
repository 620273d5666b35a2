"""Fixtures of the DSP domain-layer tests: a fresh database per test (SQLite, or PostgreSQL), a fake clock.

Backends (``--dsp-db``, see tests/conftest.py): by default every test runs on a fresh SQLite file and
the modules of ``POSTGRES_MODULES`` (accounts, one-time codes, access, documents, assistants,
helpdesk, audit, vault) run a second time on PostgreSQL (test ids ``[...-postgresql]``).
A parametrized test runs on PostgreSQL with its first parameter set only. ``--dsp-db=postgresql`` runs
every DSP test (all parameter sets) on PostgreSQL only, ``--dsp-db=sqlite`` none.

PostgreSQL: a throw-away server started for the session by ``bot.infra.postgres.ensure_postgres``
(Debian's binaries, a free loopback port, a random password; the cluster is deleted at the end), or
the server of ``DSP_TEST_POSTGRES_URL`` if set (its database is emptied: use a scratch one). Its
database is migrated once with the real migrations (``bot.schema.upgrade``); before each test every
table is emptied and the id sequences restarted (one transaction; the audit table's DELETE guard is
lifted inside it only). The test database commits asynchronously (see ``dsp_postgres``). Without
PostgreSQL binaries or URL, the PostgreSQL variants are skipped.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from dsp_helpers import Client, FakeClock

from bot.dsp import clock
from bot.dsp.db import reset_engine
from bot.dsp.settings import get_settings
from tests.support import free_port

_ENV = (
    "DSP_SECRET_KEY",
    "DSP_VAULT_TTL_SECONDS",
    "DSP_OTP_TTL_SECONDS",
    "DSP_RESET_TTL_SECONDS",
    "DSP_SESSION_IDLE_SECONDS",
    "DSP_PUBLIC_URL",
    "SMTP_HOST",
    "DSP_UPLOAD_MAX_MB",
    "DSP_DOCUMENT_QUOTA_MB",
    "DSP_DICOM_MAX_MB",
)

#: Modules that also run on PostgreSQL by default (the ones whose queries and constraints matter).
POSTGRES_MODULES = frozenset({
    "test_dsp_access", "test_dsp_activation", "test_dsp_assistants", "test_dsp_audit", "test_dsp_documents",
    "test_dsp_login", "test_dsp_reset", "test_dsp_vault", "test_helpdesk", "test_idempotency",
})


#: Tests that run ``dsp`` in a subprocess on a SQLite file of their own: a PostgreSQL variant would repeat them.
SQLITE_ONLY_TESTS = frozenset({
    "test_cli_designate_assistant", "test_cli_issue_letter_and_outbox",
    "test_cli_lists_the_demo_patients_and_seeding_makes_them_real",
})


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "dsp_backend" not in metafunc.fixturenames:
        return
    mode = metafunc.config.getoption("--dsp-db", default="auto")
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if mode == "auto" and module in POSTGRES_MODULES and metafunc.function.__name__ not in SQLITE_ONLY_TESTS:
        metafunc.parametrize("dsp_backend", ["sqlite", "postgresql"], indirect=True, scope="module")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In ``auto`` mode, a parametrized test runs on PostgreSQL with its first parameter set only.

    The other sets vary the data (file formats, intents), not what the database does; the SQLite run
    keeps them all. Saves about a third of the PostgreSQL variants' time.
    """
    if config.getoption("--dsp-db", default="auto") != "auto":
        return
    seen: set[tuple[str, str]] = set()
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or callspec.params.get("dsp_backend") != "postgresql" or len(callspec.params) == 1:
            kept.append(item)
            continue
        key = (item.path.name, item.originalname)
        (dropped if key in seen else kept).append(item)
        seen.add(key)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="module")
def dsp_backend(request: pytest.FixtureRequest) -> str:
    """``sqlite`` or ``postgresql``: the database of this module's tests."""
    default = "postgresql" if request.config.getoption("--dsp-db", default="auto") == "postgresql" else "sqlite"
    return str(getattr(request, "param", default))


@dataclass
class PostgresDatabase:
    """The PostgreSQL database of the test session: its URL (with the password: never print it) and a reset."""

    url: str = field(repr=False)
    tables: list[str] = field(default_factory=list)

    def reset(self) -> None:
        """Empty every table and restart the id sequences, in one transaction (about 20 ms).

        ``DELETE`` rather than ``TRUNCATE``: a TRUNCATE of every table swaps their files, which with
        fsync on costs about a second per test. The audit table's DELETE guard is lifted inside the
        transaction only.
        """
        import psycopg
        from sqlalchemy import MetaData

        from bot import schema
        from bot.infra.postgres import connect_kwargs

        if not self.tables:  # children first
            merged = MetaData()
            for metadata in schema.target_metadata():
                for table in metadata.tables.values():
                    table.to_metadata(merged)
            self.tables = [table.name for table in reversed(merged.sorted_tables)]
        with psycopg.connect(**connect_kwargs(self.url)) as connection:
            connection.execute("SET LOCAL lock_timeout = '10s'")  # a test that leaked a session fails, never hangs
            connection.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update_delete")
            for name in self.tables:
                connection.execute(f'DELETE FROM "{name}"')
            connection.execute("ALTER TABLE audit_events ENABLE TRIGGER audit_events_no_update_delete")
            connection.execute("SELECT setval(oid::regclass, 1, false) FROM pg_class "
                                "WHERE relkind = 'S' AND relnamespace = 'public'::regnamespace")


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server for the session: yields a URL whose user may create databases.

    ``DSP_TEST_POSTGRES_URL`` if set (a server that is up, or on loopback one started from Debian's
    binaries), else a fresh cluster on a free loopback port, deleted at the end.
    """
    from bot.infra.postgres import ensure_postgres, find_bin_dir

    url = os.environ.get("DSP_TEST_POSTGRES_URL", "").strip()
    if not url:
        if find_bin_dir() is None:
            pytest.skip("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin): make prod-deps")
        url = f"postgresql+psycopg://mydsp:{secrets.token_urlsafe(18)}@127.0.0.1:{free_port()}/mydsp_test"
    server = ensure_postgres(url, tmp_path_factory.mktemp("postgres"))
    try:
        yield url
    finally:
        if server is not None:
            server.destroy()


@pytest.fixture(scope="session")
def dsp_postgres(postgres_server: str) -> PostgresDatabase:
    """The session's DSP database on PostgreSQL, migrated to head by the real migrations (asynchronous commit)."""
    import psycopg
    from psycopg import sql

    from bot import schema
    from bot.infra.postgres import connect_kwargs

    # This throw-away database only: a commit returns before its WAL reaches the disk (the server keeps
    # fsync on, and ensure_postgres's clusters keep synchronous_commit on). Commits stay atomic, ordered
    # and immediately visible to other sessions — all the tests look at — and it saves ~30 % of the
    # PostgreSQL variants' time (measured: 294 s instead of 426 s for the 179 tests on a loaded machine).
    settings = connect_kwargs(postgres_server)
    with psycopg.connect(**settings, autocommit=True) as connection, \
            contextlib.suppress(psycopg.errors.InsufficientPrivilege):  # DSP_TEST_POSTGRES_URL: not the owner
        connection.execute(sql.SQL("ALTER DATABASE {} SET synchronous_commit = off").format(
            sql.Identifier(settings["dbname"])))
    schema.upgrade(postgres_server)
    return PostgresDatabase(postgres_server)


@pytest.fixture(autouse=True)
def dsp_env(tmp_path, monkeypatch, dsp_backend, request):
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DSP_STATE_DIR", str(tmp_path))
    if dsp_backend == "postgresql":
        database: PostgresDatabase = request.getfixturevalue("dsp_postgres")
        database.reset()
        monkeypatch.setenv("DSP_DATABASE_URL", database.url)
    else:
        monkeypatch.setenv("DSP_DATABASE_URL", f"sqlite:///{tmp_path / 'dsp.sqlite3'}")
    get_settings.cache_clear()
    reset_engine()
    yield tmp_path
    reset_engine()
    get_settings.cache_clear()


@pytest.fixture
def fake_clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(clock, "now", fake)
    return fake


@pytest.fixture
def client() -> Client:
    return Client()
