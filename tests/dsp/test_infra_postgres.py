"""bot.infra.postgres: the server at the URL, else a local cluster from Debian's binaries (no password leaks)."""

from __future__ import annotations

import logging
import secrets

import psycopg
import pytest
from sqlalchemy.engine import make_url

from bot.infra.postgres import cluster_dir_for, create_database, ensure_postgres, find_bin_dir, reachable
from tests.support import free_port


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.mark.skipif(find_bin_dir() is None, reason="no PostgreSQL server binaries")
def test_a_local_cluster_starts_restarts_with_its_data_and_never_logs_the_password(tmp_path, caplog):
    password = "pw-" + secrets.token_urlsafe(12)
    url = f"postgresql+psycopg://mydsp:{password}@127.0.0.1:{free_port()}/mydsp_one"
    caplog.set_level(logging.DEBUG)
    assert not reachable(url)
    server = ensure_postgres(url, tmp_path / "pg", ["mydsp_one_rasa"])
    try:
        assert server is not None and reachable(url) and password not in repr(server)
        assert server.cluster_dir == cluster_dir_for(tmp_path / "pg")
        with psycopg.connect(_dsn(url)) as connection:
            connection.execute("CREATE TABLE kept (value text)")
            connection.execute("INSERT INTO kept VALUES ('still here')")
            assert connection.execute("SHOW fsync").fetchone() == ("on",)
            assert connection.execute("SHOW synchronous_commit").fetchone() == ("on",)
            assert connection.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        with psycopg.connect(_dsn(url).replace("/mydsp_one", "/mydsp_one_rasa")):
            pass
        assert ensure_postgres(url, tmp_path / "pg") is None  # already up: nothing started
        server.stop()
        assert not reachable(url)
        again = ensure_postgres(url, tmp_path / "pg")
        assert again is not None
        with psycopg.connect(_dsn(url)) as connection:
            assert connection.execute("SELECT value FROM kept").fetchall() == [("still here",)]
    finally:
        server.destroy()
    assert not cluster_dir_for(tmp_path / "pg").exists()
    assert password not in caplog.text


def test_wrong_credentials_and_unreachable_servers_are_named_without_the_password(postgres_server, tmp_path):
    wrong = "wrong-" + secrets.token_urlsafe(8)
    parts = make_url(postgres_server)
    bad = parts.set(password=wrong).render_as_string(hide_password=False)
    assert not reachable(bad)
    with pytest.raises(RuntimeError, match=f"{parts.host}:{parts.port}") as refused:
        ensure_postgres(bad, tmp_path / "other")
    assert wrong not in str(refused.value) and parts.password not in str(refused.value)
    far = f"postgresql+psycopg://mydsp:{wrong}@192.0.2.10:5432/mydsp?connect_timeout=1"
    with pytest.raises(RuntimeError, match="192.0.2.10:5432") as unreachable:
        ensure_postgres(far, tmp_path / "far")
    assert wrong not in str(unreachable.value)


def test_create_database_is_idempotent(postgres_server):
    name = "extra_" + secrets.token_hex(4)
    assert create_database(postgres_server, name) is True
    assert create_database(postgres_server, name) is False
    with pytest.raises(ValueError):
        create_database(postgres_server, "bad name; drop")
