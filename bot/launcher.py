"""Start and stop the assistant's services: action server, Rasa server, gateway (and the Telegram bot).

`python -m bot.launcher serve` runs them in the foreground; `python -m bot.launcher run` also
opens the terminal chat. When TELEGRAM_BOT_TOKEN is set, the Telegram front end (`python -m
bot.telegram`) is started too, once the gateway is healthy. Ctrl-C stops everything. All runtime
state and every service's log live under DSP_STATE_DIR (default `var/`). The tests use `Services`
the same way.

`python -m bot.launcher serve-prod` runs the production layout: PostgreSQL (DSP database and
Rasa's tracker store) and Redis (Rasa's lock store, the gateway's conversation locks) — reached at
their URLs, else started locally from Debian's packages — then the schema migrations and the demo
data, two action servers, two Rasa instances and the gateway with two worker processes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from bot.dsp.settings import REPO_ROOT, get_settings
from bot.gateway.settings import secret_file

RASA_BIN = REPO_ROOT / ".venv-rasa" / "bin" / "rasa"
RASA_PYTHON = REPO_ROOT / ".venv-rasa" / "bin" / "python"
#: `rasa` with the runtime fixes installed and its API token taken from the environment, so that it
#: is not on the command line (ps): see bot/rasa_main.py.
RASA_MAIN = "bot.rasa_main"
MODELS_DIR = REPO_ROOT / "models"
LAYOUTS = ("embedded", "prod")
#: Production layout defaults (each overridden by its variable).
PROD_DATABASE_URL = "postgresql+psycopg://mydsp:{password}@127.0.0.1:5433/mydsp"
PROD_RASA_DATABASE = "mydsp_rasa"
PROD_REDIS_URL = "redis://127.0.0.1:6380/0"
#: Prefix of Rasa's lock keys in Redis (alphanumeric; the gateway clears a dead instance's lock).
RASA_LOCK_KEY_PREFIX = "mydsp"
#: Lifetime of a Rasa conversation lock ticket in the production layout, in seconds (Rasa's default:
#: 60). Above the longest turn; it bounds the wait after a Rasa instance died without the gateway
#: noticing (when it notices, it deletes the dead instance's lock at once).
PROD_TICKET_LOCK_LIFETIME_S = 30


def _die_with_parent() -> None:
    """In the child before exec: new session, and SIGTERM when the launcher dies (Linux)."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def latest_model() -> Path:
    """Return the newest trained model in `models/`.

    Raises:
        FileNotFoundError: when no model was trained (run `make model`).
    """
    models = sorted(MODELS_DIR.glob("*.tar.gz"), key=lambda p: p.stat().st_mtime)
    if not models:
        raise FileNotFoundError("no trained model in models/: run `make model`")
    return models[-1]


def redis_lock_store_env(redis_url: str) -> dict[str, str]:
    """Return the RASA_LOCK_* variables of endpoints.yml for Rasa's Redis lock store at `redis_url`."""
    parts = urlsplit(redis_url)
    return {"RASA_LOCK_STORE": "redis", "RASA_LOCK_REDIS_HOST": parts.hostname or "127.0.0.1",
            "RASA_LOCK_REDIS_PORT": str(parts.port or 6379), "RASA_LOCK_REDIS_DB": parts.path.strip("/") or "0",
            "RASA_LOCK_REDIS_PASSWORD": unquote(parts.password or ""), "RASA_LOCK_KEY_PREFIX": RASA_LOCK_KEY_PREFIX}


def rasa_tracker_url(database_url: str, database: str = PROD_RASA_DATABASE) -> str:
    """Return the tracker store URL for Rasa (psycopg2): the DSP database's server, database `database`."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url).set(drivername="postgresql", database=database)
    return url.render_as_string(hide_password=False)


@dataclass
class Services:
    """The processes of the assistant, on loopback ports, in one of two layouts.

    embedded (default, `make run`): one action server ("actions"), one Rasa server ("rasa") with a
    SQLite tracker store and an in-memory lock store, one gateway process ("gateway"), SQLite DSP
    database. prod (`make serve-prod`): PostgreSQL and Redis (started by `start()` when nothing
    answers at their loopback URLs, stopped by `stop()`), the migrations and the demo data, then
    "actions-1", "actions-2", "rasa-1", "rasa-2" (Rasa i calls action server i; all share the
    PostgreSQL tracker store and the Redis lock store) and "gateway" (uvicorn, 2 workers).

    Example: `Services(layout="prod", gateway_port=8100, rasa_ports=[5105, 5106],
    actions_ports=[5155, 5156], env={"DSP_STATE_DIR": "/tmp/s"}, telegram=False).start()`.

    Attributes:
        gateway_port: GATEWAY_PORT (default 8000).
        rasa_port: RASA_PORT (default 5005); the first of `rasa_ports`.
        actions_port: ACTION_SERVER_PORT (default 5055); the first of `actions_ports`.
        env: extra environment for every process (e.g. a test's DSP_STATE_DIR; in prod also
            DSP_DATABASE_URL, RASA_TRACKER_URL, REDIS_URL).
        telegram: also start the Telegram front end (default: when TELEGRAM_BOT_TOKEN is set).
        layout: "embedded" or "prod".
        rasa_ports: one port per Rasa instance (default: rasa_port, and rasa_port + 1 in prod).
        actions_ports: one port per action server (default: actions_port, and actions_port + 1 in
            prod); as many as `rasa_ports`.
        gateway_workers: uvicorn worker processes of the gateway (default 1, 2 in prod).
    """

    gateway_port: int = int(os.environ.get("GATEWAY_PORT", "8000"))
    rasa_port: int = int(os.environ.get("RASA_PORT", "5005"))
    actions_port: int = int(os.environ.get("ACTION_SERVER_PORT", "5055"))
    env: dict[str, str] = field(default_factory=dict)
    telegram: bool = field(default_factory=lambda: bool(os.environ.get("TELEGRAM_BOT_TOKEN", "").strip()))
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    layout: str = "embedded"
    rasa_ports: list[int] = field(default_factory=list)
    actions_ports: list[int] = field(default_factory=list)
    gateway_workers: int = 0
    stores: dict[str, Any] = field(default_factory=dict)
    _commands: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict, repr=False)
    _token: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}")
        count = 2 if self.layout == "prod" else 1
        self.rasa_ports = list(self.rasa_ports) or [self.rasa_port + i for i in range(count)]
        self.actions_ports = list(self.actions_ports) or [self.actions_port + i for i in range(len(self.rasa_ports))]
        if len(self.actions_ports) != len(self.rasa_ports):
            raise ValueError("one action server per Rasa instance: as many actions_ports as rasa_ports")
        self.rasa_port, self.actions_port = self.rasa_ports[0], self.actions_ports[0]
        self.gateway_workers = self.gateway_workers or count

    @property
    def prod(self) -> bool:
        """True in the production layout."""
        return self.layout == "prod"

    @property
    def gateway_url(self) -> str:
        """Base URL of the gateway."""
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def rasa_urls(self) -> list[str]:
        """Base URL of each Rasa instance, in order."""
        return [f"http://127.0.0.1:{port}" for port in self.rasa_ports]

    @property
    def actions_urls(self) -> list[str]:
        """Base URL of each action server, in order."""
        return [f"http://127.0.0.1:{port}" for port in self.actions_ports]

    def _names(self, kind: str) -> list[str]:
        """Process names of a kind: "rasa" / "actions" in embedded, "rasa-1", "rasa-2"... in prod."""
        if not self.prod:
            return [kind]
        return [f"{kind}-{n}" for n in range(1, len(self.rasa_ports) + 1)]

    def environment(self) -> dict[str, str]:
        """Return the environment shared by the services (every variable endpoints.yml uses is set).

        Raises:
            RuntimeError: in the production layout, DSP_DATABASE_URL is not a PostgreSQL URL.
        """
        given = {**os.environ, **self.env}
        env = dict(given)
        os.environ.update(self.env)
        get_settings.cache_clear()
        state = Path(get_settings().state_dir).resolve()
        (state / "logs").mkdir(parents=True, exist_ok=True)
        (state / "rasa").mkdir(parents=True, exist_ok=True)
        env.update({
            "RASA_ACTION_ENDPOINT": f"{self.actions_urls[0]}/webhook",  # per Rasa instance in prod (see start)
            "RASA_TRACKER_DB": str(state / "rasa" / "tracker.sqlite3"),
            "RASA_TRACKER_URL": f"sqlite:///{state / 'rasa' / 'tracker.sqlite3'}",
            "RASA_LOCK_STORE": "in_memory", "RASA_LOCK_REDIS_HOST": "", "RASA_LOCK_REDIS_PORT": "",
            "RASA_LOCK_REDIS_DB": "", "RASA_LOCK_REDIS_PASSWORD": "", "RASA_LOCK_KEY_PREFIX": RASA_LOCK_KEY_PREFIX,
            "RASA_URL": self.rasa_urls[0],
            "RASA_URLS": ",".join(self.rasa_urls),
            "ACTION_SERVER_URL": self.actions_urls[0],
            "ACTION_SERVER_URLS": ",".join(self.actions_urls),
            "REDIS_URL": "",  # embedded: one gateway process, in-process conversation locks
            "RASA_AUTH_TOKEN": env.get("RASA_AUTH_TOKEN") or secret_file("rasa-auth-token"),
            "GATEWAY_PORT": str(self.gateway_port),
            "SANIC_HOST": "127.0.0.1",
            "RASA_TELEMETRY_ENABLED": "false",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "PYTHONUNBUFFERED": "1",
        })
        if self.prod:
            env.update(self._prod_environment(given))
        env.setdefault("DSP_PUBLIC_URL", self.gateway_url)  # links in e-mails and replies lead to this gateway
        return env

    def _prod_environment(self, env: dict[str, str]) -> dict[str, str]:
        """The production layout's URLs: from `env` (the given environment), else the local defaults.

        The local PostgreSQL password is generated once into `<state>/postgres-password` (0600).
        """
        database_url = (env.get("DSP_DATABASE_URL") or "").strip() or PROD_DATABASE_URL.format(
            password=secret_file("postgres-password"))
        if not database_url.startswith("postgresql"):
            raise RuntimeError("the production layout needs a PostgreSQL DSP_DATABASE_URL "
                               "(unset it for the local default)")
        redis_url = (env.get("REDIS_URL") or "").strip() or PROD_REDIS_URL
        return {
            "DSP_DATABASE_URL": database_url,
            "RASA_TRACKER_URL": (env.get("RASA_TRACKER_URL") or "").strip() or rasa_tracker_url(database_url),
            "REDIS_URL": redis_url,
            **redis_lock_store_env(redis_url),
            "TICKET_LOCK_LIFETIME": env.get("TICKET_LOCK_LIFETIME") or str(PROD_TICKET_LOCK_LIFETIME_S),
            "SQL_POOL_SIZE": env.get("SQL_POOL_SIZE") or "10",  # Rasa's tracker store pool, per instance
            "SQL_MAX_OVERFLOW": env.get("SQL_MAX_OVERFLOW") or "10",
        }

    def _start_stores(self, env: dict[str, str], state: Path) -> None:
        """Make PostgreSQL and Redis available (started under <state>/prod/ when not running), then migrate and seed.

        Raises:
            RuntimeError: a server could not be reached or started (e.g. `make prod-deps` missing),
                or the migrations / demo data failed (the message names the log).
        """
        from sqlalchemy.engine import make_url

        from bot.infra.postgres import ensure_postgres
        from bot.infra.redis import ensure_redis

        database_url, tracker_url = make_url(env["DSP_DATABASE_URL"]), make_url(env["RASA_TRACKER_URL"])
        same_server = (tracker_url.host, tracker_url.port) == (database_url.host, database_url.port)
        extra = [tracker_url.database] if same_server and tracker_url.database else []
        wanted = {"postgres": lambda: ensure_postgres(env["DSP_DATABASE_URL"], state / "prod" / "postgres",
                                                      extra_databases=extra),
                  "redis": lambda: ensure_redis(env["REDIS_URL"], state / "prod" / "redis")}
        if not same_server:  # Rasa's tracker store on a server of its own
            wanted["postgres-rasa"] = lambda: ensure_postgres(env["RASA_TRACKER_URL"], state / "prod" / "postgres-rasa")
        for name, ensure in wanted.items():
            if not self._store_running(name):
                started = ensure()
                if started is not None:  # None: it was already there (not ours to stop)
                    self.stores[name] = started
        log = state / "logs" / "prod-setup.log"
        dsp = [sys.executable, "-m", "bot.dsp.cli"]
        for step in (["db", "upgrade"], ["seed-demo"]):  # both idempotent
            with open(log, "ab") as out:
                done = subprocess.run([*dsp, *step], cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                      timeout=600, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"`dsp {' '.join(step)}` failed: see {log}")

    def _store_running(self, name: str) -> bool:
        """Return True when this object started the store `name` and it still runs."""
        handle = self.stores.get(name)
        if handle is None:
            return False
        process = getattr(handle, "process", None)
        if process is not None:
            return bool(process.poll() is None)
        return (Path(handle.cluster_dir) / "postmaster.pid").exists()

    def commands(self, env: dict[str, str]) -> dict[str, tuple[list[str], dict[str, str]]]:
        """Return each service's command line and environment, by process name, in start order."""
        python = sys.executable
        model = str(latest_model())
        out: dict[str, tuple[list[str], dict[str, str]]] = {}
        for name, port in zip(self._names("actions"), self.actions_ports, strict=True):
            out[name] = ([python, "-m", "rasa_sdk", "--actions", "actions", "-p", str(port)], env)
        for name, port, actions in zip(self._names("rasa"), self.rasa_ports, self.actions_urls, strict=True):
            out[name] = ([str(RASA_PYTHON), "-m", RASA_MAIN, "run", "-i", "127.0.0.1", "-p", str(port), "--enable-api",
                          "-m", model, "--endpoints", "endpoints.yml", "--credentials", "credentials.yml"],
                         {**env, "RASA_ACTION_ENDPOINT": f"{actions}/webhook"})
        gateway = [python, "-m", "uvicorn", "bot.gateway.app:app", "--host", env.get("GATEWAY_HOST", "127.0.0.1"),
                   "--port", str(self.gateway_port), "--no-server-header", "--no-access-log"]
        if self.gateway_workers > 1:
            gateway += ["--workers", str(self.gateway_workers)]
        out["gateway"] = (gateway, env)
        return out

    def start(self, timeout_s: float = 300.0) -> None:
        """Start the services (prod: the stores, migrations and demo data first) and wait until healthy.

        Healthy: the gateway's /health answers 200 and every Rasa instance has its model loaded.
        Can be called again after `stop()` on the same state directory (the data is kept).

        Raises:
            RuntimeError: a store could not be started, a service exited, or the services were not
                healthy within `timeout_s`; the message names the log file to read.
        """
        env = self.environment()
        self._token = env["RASA_AUTH_TOKEN"]
        state = Path(get_settings().state_dir).resolve()
        logs = state / "logs"
        deadline = time.monotonic() + timeout_s
        if self.prod:
            try:
                self._start_stores(env, state)
            except BaseException:
                self.stop()
                raise
        self._commands = self.commands(env)
        for name, (command, process_env) in self._commands.items():
            self._spawn(name, command, process_env, logs)
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"{name} exited with {process.returncode}: see {logs / (name + '.log')}")
            if self.healthy():
                if self.telegram:  # a client of the gateway: started once the gateway answers
                    self._spawn("telegram", [sys.executable, "-m", "bot.telegram"],
                                {**env, "GATEWAY_URL": self.gateway_url}, logs)
                return
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"services not healthy after {timeout_s:.0f} s: see the logs in {logs}")

    def _spawn(self, name: str, command: list[str], env: dict[str, str], logs: Path) -> None:
        """Start one service, its output appended to `<logs>/<name>.log`."""
        log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        self.processes[name] = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log,  # noqa: PLW1509
                                                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)

    def healthy(self) -> bool:
        """Return True when the gateway's /health answers 200 and every running Rasa instance has its model."""
        try:
            with urllib.request.urlopen(self.gateway_url + "/health", timeout=5) as response:  # noqa: S310
                if response.status != 200:
                    return False
        except (urllib.error.URLError, OSError):
            return False
        running = [url for name, url in zip(self._names("rasa"), self.rasa_urls, strict=True) if name in self.processes]
        return all(self.rasa_ready(url) for url in running)

    def rasa_ready(self, url: str) -> bool:
        """Return True when the Rasa server at `url` answers /status with a loaded model."""
        token = self._token or os.environ.get("RASA_AUTH_TOKEN", "")
        try:
            with urllib.request.urlopen(f"{url}/status?token={quote(token)}", timeout=5) as response:  # noqa: S310
                body = json.loads(response.read() or b"{}")
                return response.status == 200 and bool(body.get("model_id") or body.get("model_file"))
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def stop(self, stores: bool = True) -> None:
        """Stop every service (SIGTERM to its process group, SIGKILL after 15 s); Ctrl-C is ignored meanwhile.

        Args:
            stores: also stop the PostgreSQL and Redis this object started (prod layout); with
                False they keep running for the next `start()`.
        """
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self._stop()
            if stores:
                while self.stores:
                    self.stores.popitem()[1].stop()  # Redis, then PostgreSQL (reverse start order)
        finally:
            signal.signal(signal.SIGINT, previous)

    def restart(self, timeout_s: float = 300.0) -> None:
        """Stop the services (the stores keep running) and start them again on the same state."""
        self.stop(stores=False)
        self.start(timeout_s)

    def kill(self, name: str) -> int:
        """SIGKILL one service's process group (e.g. "rasa-1") and wait for it; return its pid.

        Raises:
            KeyError: no running service has that name.
        """
        process = self.processes.pop(name)
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        return process.pid

    def respawn(self, name: str) -> None:
        """Start one service again (after `kill`) with its command and environment; does not wait.

        Raises:
            KeyError: `start()` did not start a service of that name.
        """
        command, env = self._commands[name]
        if name in self.processes and self.processes[name].poll() is None:
            return
        self._spawn(name, command, env, Path(get_settings().state_dir).resolve() / "logs")

    def _stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()

    def pids(self) -> dict[str, int]:
        """Return the pid of each running service (the process group leader)."""
        return {name: process.pid for name, process in self.processes.items() if process.poll() is None}


def main(argv: list[str] | None = None) -> int:
    """Command line: `serve` (services in the foreground), `run` (services + terminal chat), `serve-prod`."""
    parser = argparse.ArgumentParser(prog="mydsp", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["serve", "run", "serve-prod"])
    args = parser.parse_args(argv)
    services = Services(layout="prod") if args.command == "serve-prod" else Services()

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    what = ("PostgreSQL, Redis, 2 action servers, 2 Rasa servers and the gateway" if services.prod
            else "the action server, the Rasa server and the gateway")
    print(f"Starting {what} (logs in {get_settings().state_dir}/logs)...", flush=True)
    started = time.monotonic()
    try:
        services.start()
    except (RuntimeError, FileNotFoundError) as exc:
        print(f"Could not start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        services.stop()
        return 130
    print(f"Ready in {time.monotonic() - started:.1f} s: gateway on {services.gateway_url} "
          "(OpenAPI at /openapi.json). Ctrl-C stops everything.", flush=True)
    if services.telegram:
        print(f"Telegram bot started (log in {get_settings().state_dir}/logs/telegram.log).", flush=True)
    try:
        if args.command == "run":
            from bot.chat.terminal import chat

            chat(services.gateway_url)
        else:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        print("\nStopping...", flush=True)
        services.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
