"""A PostgreSQL for the production layout: the one at the URL, else a local cluster from Debian's binaries.

``ensure_postgres(url, data_dir)`` first tries the server the SQLAlchemy URL names
(``postgresql+psycopg://mydsp:PW@127.0.0.1:5433/mydsp``) with the URL's credentials: when it
answers, it only makes sure the URL's database (and the extra ones, e.g. ``mydsp_rasa`` for Rasa's
tracker store) exist. When nothing answers and the host is loopback, it starts a cluster of its
own with the newest ``/usr/lib/postgresql/<version>/bin`` (Debian's ``postgresql`` package; ``make
prod-deps``):

- ``initdb`` once (UTF8, locale ``C.UTF-8``: code-point ordering like SQLite's, Unicode
  ``lower()``), peer-less ``trust`` on the unix socket — which lives in the cluster directory
  (mode 0700), so only its owner (and root) can reach it — and ``scram-sha-256`` over TCP;
- it listens on the URL's loopback address and port only; ``fsync`` and ``synchronous_commit``
  stay on (production-like: a commit the app saw survives a crash), time zone UTC;
- the URL's role is created (``LOGIN CREATEDB``) or its password set to the URL's, as a SCRAM
  verifier computed client-side, so the clear password never reaches the server or its log;
  the databases are created, owned by that role;
- a cluster directory that already exists is just started again (its data kept).

PostgreSQL refuses to run as root. When this process is root, ``initdb`` and ``pg_ctl`` run as the
``postgres`` system user (``runuser -u postgres --``), and the cluster cannot live in ``data_dir``
(a pytest temporary directory is ``0700 root``): it lives in
``/var/lib/postgresql/mydsp/<12 hex of sha256(resolved data_dir)>`` — owned by ``postgres``,
stable for a given ``data_dir`` so that a restart finds its data — and ``data_dir/cluster-location``
says where. As a normal user, the cluster is ``data_dir`` itself.

The password is never printed, logged, or put in an exception message.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Where Debian's ``postgresql-<version>`` packages put the server binaries.
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
#: Where the clusters live when this process is root (owned by the ``postgres`` system user).
ROOT_CLUSTERS_DIR = Path("/var/lib/postgresql/mydsp")
#: System user that runs the server when this process is root.
SYSTEM_USER = "postgres"
#: Bootstrap superuser of a local cluster (reached only through the cluster's unix socket).
SUPERUSER = "postgres"
#: Settings file rewritten at each start, included from ``postgresql.conf``.
CONF_NAME = "mydsp.conf"
#: Longest unix socket path (``sun_path`` is 108 bytes with the terminating NUL).
_MAX_SOCKET_PATH = 107
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$")
_NO_DATABASE = re.compile(r'database ".*" does not exist')


@dataclass
class _Target:
    """The parts of a PostgreSQL SQLAlchemy URL that matter here (``repr`` hides the password)."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str
    query: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        """``host:port``, for messages."""
        return f"{self.host}:{self.port}"

    def connect_kwargs(self, database: str | None = None) -> dict[str, Any]:
        """Keyword arguments of ``psycopg.connect`` for this server (optionally another database)."""
        return {"connect_timeout": 5, **self.query, "host": self.host, "port": self.port, "user": self.user,
                "password": self.password, "dbname": database or self.database}


def _target(url: str) -> _Target:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError("not a PostgreSQL URL")
    if not parsed.host or not parsed.username or not parsed.database:
        raise ValueError("the PostgreSQL URL needs a host, a user and a database")
    query = {key: value if isinstance(value, str) else value[-1] for key, value in parsed.query.items()}
    return _Target(parsed.host, parsed.port or 5432, parsed.username, parsed.password or "", parsed.database, query)


def connect_kwargs(url: str, database: str | None = None) -> dict[str, Any]:
    """Return the ``psycopg.connect`` keyword arguments for a PostgreSQL SQLAlchemy URL.

    Args:
        url: ``postgresql[+driver]://user:password@host:port/database[?libpq options]``.
        database: another database of the same server (default: the URL's).

    Returns:
        ``host``, ``port``, ``user``, ``password`` (never log this dict), ``dbname``, ``connect_timeout``
        (5 s unless the URL sets it) and the URL's query options.

    Raises:
        ValueError: not a PostgreSQL URL, or no host, user or database.
    """
    return _target(url).connect_kwargs(database)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _login(target: _Target) -> str:
    """Log in with the URL's credentials, on the URL's database or else the ``postgres`` maintenance one.

    Returns:
        ``"ok"``; ``"refused"`` when a PostgreSQL server answered but refused (password, role, pg_hba);
        ``"down"`` when nothing PostgreSQL answered (connection refused, timeout, not PostgreSQL).
    """
    import psycopg

    for database in (target.database, "postgres"):
        try:
            with psycopg.connect(**target.connect_kwargs(database)):
                return "ok"
        except psycopg.OperationalError as error:
            message = str(error)
            if _NO_DATABASE.search(message):
                continue
            return "refused" if "FATAL:" in message else "down"
    return "refused"


def reachable(url: str) -> bool:
    """Return True when a PostgreSQL server at the URL's host and port accepts the URL's credentials.

    The URL's database need not exist yet (the login is retried on the ``postgres`` maintenance
    database). Never raises for a server that is down or refuses; a malformed URL raises ``ValueError``.
    """
    target = _target(url)
    return _login(target) == "ok"


def _check_identifier(name: str) -> str:
    if not _IDENTIFIER.match(name):
        raise ValueError("database and role names must be plain identifiers (letters, digits, _ $ -; 63 at most)")
    return name


def create_database(url: str, name: str) -> bool:
    """Create database `name` on the server of `url` (as the URL's user, who becomes its owner) if missing.

    Args:
        url: SQLAlchemy URL of a reachable server; its user needs ``CREATEDB`` (the role made by
            :func:`ensure_postgres` has it) unless the database exists.
        name: database name (a plain identifier).

    Returns:
        True if it was created, False if it already existed (also when another process created it
        at the same moment).

    Raises:
        ValueError: `name` is not a plain identifier, or the URL is not a PostgreSQL one.
        psycopg.Error: the server refused (no right to create databases, unreachable...).
    """
    import psycopg
    from psycopg import sql

    target = _target(url)
    _check_identifier(name)
    maintenance = "postgres" if name != "postgres" else "template1"
    with psycopg.connect(**target.connect_kwargs(maintenance), autocommit=True) as connection:
        if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return False
        try:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase:
            return False
        except psycopg.errors.UniqueViolation:  # concurrent CREATE DATABASE of the same name
            return False
    return True


def find_bin_dir() -> Path | None:
    """Return the newest ``/usr/lib/postgresql/<version>/bin`` holding ``initdb`` and ``pg_ctl``, or None."""
    candidates = []
    for path in Path("/").glob(DEBIAN_BIN_GLOB.lstrip("/")):
        if (path / "initdb").exists() and (path / "pg_ctl").exists():
            version = path.parent.name
            key = tuple(int(part) for part in version.split(".") if part.isdigit())
            candidates.append((key, path))
    return max(candidates)[1] if candidates else None


def cluster_dir_for(data_dir: Path) -> Path:
    """Return where the cluster of `data_dir` lives: `data_dir` itself, or (as root) a ``postgres``-owned directory.

    As root: ``/var/lib/postgresql/mydsp/<12 hex of sha256 of the resolved data_dir>`` (stable).
    """
    if os.geteuid() != 0:
        return data_dir
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    return ROOT_CLUSTERS_DIR / digest


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", SYSTEM_USER, "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str], cwd: Path, what: str, timeout_s: float = 120) -> None:
    done = subprocess.run(_as_server_user(command), cwd=cwd, capture_output=True, text=True, timeout=timeout_s,
                          env={**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"PostgreSQL {what} failed (exit {done.returncode}): " + " | ".join(tail))


def _prepare_root_dirs(cluster: Path) -> None:
    """Create the ``postgres``-owned parent of a cluster when running as root."""
    user = pwd.getpwnam(SYSTEM_USER)
    ROOT_CLUSTERS_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chown(ROOT_CLUSTERS_DIR, user.pw_uid, user.pw_gid)
    os.chmod(ROOT_CLUSTERS_DIR, 0o700)
    if not cluster.exists():
        cluster.mkdir(mode=0o700)
        os.chown(cluster, user.pw_uid, user.pw_gid)


@dataclass
class LocalPostgres:
    """A PostgreSQL cluster started by :func:`ensure_postgres` (``repr`` hides the URL, which holds the password).

    Attributes:
        url: the SQLAlchemy URL it serves (the one given to :func:`ensure_postgres`).
        cluster_dir: the cluster's data directory (``PGDATA``), which also holds its unix socket
            (unless the path is too long for one) and ``server.log``.
        bin_dir: the PostgreSQL binaries used.
        socket_dir: directory of the unix socket (where the bootstrap superuser connects).
        port: TCP port on loopback.
    """

    url: str = field(repr=False)
    cluster_dir: Path
    bin_dir: Path
    socket_dir: Path
    port: int

    def stop(self) -> None:
        """Stop the server (``pg_ctl stop -m fast``: running transactions are rolled back); no-op if stopped."""
        if not (self.cluster_dir / "postmaster.pid").exists():
            return
        with contextlib.suppress(RuntimeError):
            _run([str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.cluster_dir), "-m", "fast", "-w", "-t", "60"],
                 self.cluster_dir.parent, "stop")

    def destroy(self) -> None:
        """Stop the server and delete its cluster directory (tests; the data is gone)."""
        self.stop()
        shutil.rmtree(self.cluster_dir, ignore_errors=True)
        if self.socket_dir != self.cluster_dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)


def _socket_dir(cluster: Path) -> Path:
    if len(str(cluster)) + len("/.s.PGSQL.65535") <= _MAX_SOCKET_PATH:
        return cluster
    # A deep data_dir (non-root only: the root layout is short): a private short directory instead, the
    # same one at each start (named after the cluster), unless someone else made it or opened it up.
    digest = hashlib.sha256(str(cluster.resolve()).encode()).hexdigest()[:12]
    short = Path(tempfile.gettempdir()) / f"mydsp-pg-{digest}"
    try:
        short.mkdir(mode=0o700)
    except FileExistsError:
        info = short.lstat()
        if not short.is_dir() or short.is_symlink() or info.st_uid != os.geteuid() or info.st_mode & 0o077:
            short = Path(tempfile.mkdtemp(prefix="mydsp-pg-"))
    return short


def _write_conf(cluster: Path, target: _Target, socket_dir: Path) -> None:
    listen = "127.0.0.1" if target.host == "localhost" else target.host
    lines = [
        "# Written by bot/infra/postgres.py at each start: edits are lost.",
        f"listen_addresses = '{listen}'",
        f"port = {target.port}",
        f"unix_socket_directories = '{socket_dir}'",
        "unix_socket_permissions = 0700",
        "password_encryption = 'scram-sha-256'",
        "timezone = 'UTC'",
        "log_timezone = 'UTC'",
        # Production-like durability: a commit the application saw survives a crash.
        "fsync = on",
        "synchronous_commit = on",
        "full_page_writes = on",
        # Two action servers, the gateway's workers, two Rasa instances and the tests' pools.
        "max_connections = 200",
    ]
    path = cluster / CONF_NAME
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if os.geteuid() == 0:
        user = pwd.getpwnam(SYSTEM_USER)
        os.chown(path, user.pw_uid, user.pw_gid)
    os.chmod(path, 0o600)
    main_conf = cluster / "postgresql.conf"
    text = main_conf.read_text(encoding="utf-8")
    include = f"include_if_exists = '{CONF_NAME}'"
    if include not in text:
        main_conf.write_text(text.rstrip("\n") + f"\n\n# MyDSP Assistant (bot/infra/postgres.py)\n{include}\n",
                             encoding="utf-8")


def _initdb(bin_dir: Path, cluster: Path) -> None:
    command = [str(bin_dir / "initdb"), "-D", str(cluster), "-U", SUPERUSER, "--encoding=UTF8",
               "--locale=C.UTF-8", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions"]
    _run(command, cluster.parent, "initdb", timeout_s=300)


def _running(bin_dir: Path, cluster: Path) -> bool:
    done = subprocess.run(_as_server_user([str(bin_dir / "pg_ctl"), "status", "-D", str(cluster)]),
                          cwd=cluster.parent, capture_output=True, text=True, timeout=30, check=False)
    return done.returncode == 0


def _provision(socket_dir: Path, target: _Target, databases: Iterable[str]) -> None:
    """As the bootstrap superuser (unix socket): the URL's role with the URL's password, and the databases."""
    import psycopg
    from psycopg import sql

    _check_identifier(target.user)
    with psycopg.connect(host=str(socket_dir), port=target.port, user=SUPERUSER, dbname="postgres",
                         autocommit=True) as connection:
        verifier = connection.pgconn.encrypt_password(target.password.encode(), target.user.encode(),
                                                      b"scram-sha-256").decode()
        exists = connection.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (target.user,)).fetchone()
        statement = "ALTER ROLE {} WITH LOGIN PASSWORD {}" if exists else "CREATE ROLE {} LOGIN CREATEDB PASSWORD {}"
        connection.execute(sql.SQL(statement).format(sql.Identifier(target.user), sql.Literal(verifier)))
        for name in dict.fromkeys(databases):
            _check_identifier(name)
            if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                continue
            connection.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name),
                                                                               sql.Identifier(target.user)))


def _wait_ready(target: _Target, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _login(target) == "ok":
            return
        time.sleep(0.1)
    raise RuntimeError(f"PostgreSQL at {target.where} did not accept the URL's credentials in {timeout_s:.0f} s")


def _own_running_cluster(target: _Target, data_dir: Path) -> LocalPostgres | None:
    """The cluster of `data_dir` if it is running on the URL's port (reachable through its socket), else None."""
    bin_dir = find_bin_dir()
    cluster = cluster_dir_for(data_dir)
    if bin_dir is None or not (cluster / "PG_VERSION").exists() or not _running(bin_dir, cluster):
        return None
    try:  # postmaster.pid: pid, data dir, start time, port, socket directory, listen address, ...
        lines = (cluster / "postmaster.pid").read_text(encoding="utf-8").splitlines()
        port, socket_dir = int(lines[3]), Path(lines[4])
    except (OSError, IndexError, ValueError):
        return None
    if port != target.port or not (socket_dir / f".s.PGSQL.{port}").exists():
        return None
    return LocalPostgres("", cluster, bin_dir, socket_dir, port)


def ensure_postgres(url: str, data_dir: Path, extra_databases: Iterable[str] = (), *,
                    timeout_s: float = 60) -> LocalPostgres | None:
    """Make the PostgreSQL of `url` available, starting a local cluster if nothing answers on loopback.

    Args:
        url: SQLAlchemy URL, e.g. ``postgresql+psycopg://mydsp:PW@127.0.0.1:5433/mydsp``.
        data_dir: where a local cluster lives (as root: only the key of its ``postgres``-owned
            directory, see the module docstring; ``data_dir/cluster-location`` names it).
        extra_databases: more databases to create on the same server (e.g. ``["mydsp_rasa"]``).
        timeout_s: how long to wait for a started server to accept the URL's credentials.

    Returns:
        None when a server already answered with the URL's credentials (the databases were made
        sure of); otherwise the :class:`LocalPostgres` started, to ``stop()`` at the end.

    Raises:
        ValueError: not a PostgreSQL URL, or no host/user/database, or a name is not a plain identifier,
            or no password when a local cluster is needed.
        RuntimeError: a server answers at host:port but refuses the URL's credentials; a non-loopback
            server is unreachable; no PostgreSQL binaries; initdb/pg_ctl failed. Messages name
            ``host:port``, never the password.
    """
    target = _target(url)
    databases = [target.database, *extra_databases]
    for name in databases:
        _check_identifier(name)
    status = _login(target)
    if status == "ok":
        for name in databases:
            create_database(url, name)
        return None
    if status == "refused":
        own = _own_running_cluster(target, Path(data_dir))
        if own is None:
            raise RuntimeError(f"a PostgreSQL server answers at {target.where} but refuses the URL's user or password")
        _provision(own.socket_dir, target, databases)  # our cluster, started with another password: the URL's wins
        _wait_ready(target, timeout_s)
        return None
    if not _is_loopback(target.host):
        raise RuntimeError(f"PostgreSQL at {target.where} is not reachable")
    if not target.password:
        raise ValueError("the PostgreSQL URL needs a password (a local cluster uses scram-sha-256 over TCP)")
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise RuntimeError(f"nothing answers at {target.where} and no PostgreSQL server binaries were found in "
                           f"{DEBIAN_BIN_GLOB} (install Debian's postgresql package: make prod-deps)")
    data_dir = Path(data_dir)
    cluster = cluster_dir_for(data_dir)
    if os.geteuid() == 0:
        _prepare_root_dirs(cluster)
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "cluster-location").write_text(f"{cluster}\n", encoding="utf-8")
    else:
        cluster.parent.mkdir(parents=True, exist_ok=True)
    if not (cluster / "PG_VERSION").exists():
        log.info("initdb of a PostgreSQL cluster in %s", cluster)
        _initdb(bin_dir, cluster)
    socket_dir = _socket_dir(cluster)
    _write_conf(cluster, target, socket_dir)
    pg_ctl = str(bin_dir / "pg_ctl")
    action = "restart" if _running(bin_dir, cluster) else "start"  # running on another port: move it
    log.info("starting PostgreSQL (%s) on %s", bin_dir.parent.name, target.where)
    try:
        _run([pg_ctl, action, "-D", str(cluster), "-l", str(cluster / "server.log"), "-w", "-t", str(int(timeout_s))],
             cluster.parent, action, timeout_s=timeout_s + 30)
    except RuntimeError as error:  # the reason (port taken, bad setting) is in the server's log
        try:
            tail = (cluster / "server.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        except OSError:
            tail = []
        raise RuntimeError(f"{error} | server.log: {' | '.join(tail)}") from None
    server = LocalPostgres(url, cluster, bin_dir, socket_dir, target.port)
    try:
        _provision(socket_dir, target, databases)
        _wait_ready(target, timeout_s)
    except BaseException:
        server.stop()
        raise
    return server
