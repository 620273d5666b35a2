"""Start and stop the assistant's services: action server, Rasa server, gateway (and the Telegram bot).

`python -m bot.launcher serve` runs them in the foreground; `python -m bot.launcher run` also
opens the terminal chat. When TELEGRAM_BOT_TOKEN is set, the Telegram front end (`python -m
bot.telegram`) is started too, once the gateway is healthy. Ctrl-C stops everything. All runtime
state and every service's log live under DSP_STATE_DIR (default `var/`). The tests use `Services`
the same way.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bot.dsp.settings import REPO_ROOT, get_settings
from bot.gateway.settings import secret_file

RASA_BIN = REPO_ROOT / ".venv-rasa" / "bin" / "rasa"
MODELS_DIR = REPO_ROOT / "models"


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


@dataclass
class Services:
    """The three processes of the assistant, on loopback ports.

    Attributes:
        gateway_port: GATEWAY_PORT (default 8000).
        rasa_port: RASA_PORT (default 5005).
        actions_port: ACTION_SERVER_PORT (default 5055).
        env: extra environment for every process (e.g. a test's DSP_STATE_DIR).
        telegram: also start the Telegram front end (default: when TELEGRAM_BOT_TOKEN is set).
    """

    gateway_port: int = int(os.environ.get("GATEWAY_PORT", "8000"))
    rasa_port: int = int(os.environ.get("RASA_PORT", "5005"))
    actions_port: int = int(os.environ.get("ACTION_SERVER_PORT", "5055"))
    env: dict[str, str] = field(default_factory=dict)
    telegram: bool = field(default_factory=lambda: bool(os.environ.get("TELEGRAM_BOT_TOKEN", "").strip()))
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def gateway_url(self) -> str:
        """Base URL of the gateway."""
        return f"http://127.0.0.1:{self.gateway_port}"

    def environment(self) -> dict[str, str]:
        """Return the environment shared by the services."""
        env = {**os.environ, **self.env}
        os.environ.update(self.env)
        get_settings.cache_clear()
        state = Path(get_settings().state_dir)
        (state / "logs").mkdir(parents=True, exist_ok=True)
        (state / "rasa").mkdir(parents=True, exist_ok=True)
        env.update({
            "RASA_ACTION_ENDPOINT": f"http://127.0.0.1:{self.actions_port}/webhook",
            "RASA_TRACKER_DB": str(state / "rasa" / "tracker.sqlite3"),
            "RASA_URL": f"http://127.0.0.1:{self.rasa_port}",
            "ACTION_SERVER_URL": f"http://127.0.0.1:{self.actions_port}",
            "RASA_AUTH_TOKEN": env.get("RASA_AUTH_TOKEN") or secret_file("rasa-auth-token"),
            "GATEWAY_PORT": str(self.gateway_port),
            "SANIC_HOST": "127.0.0.1",
            "RASA_TELEMETRY_ENABLED": "false",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "PYTHONUNBUFFERED": "1",
        })
        env.setdefault("DSP_PUBLIC_URL", self.gateway_url)  # links in e-mails and replies lead to this gateway
        return env

    def start(self, timeout_s: float = 300.0) -> None:
        """Start the three services and wait until the gateway reports healthy.

        Raises:
            RuntimeError: a service exited or the gateway was not healthy within `timeout_s`;
                the message names the log file to read.
        """
        env = self.environment()
        state = Path(get_settings().state_dir)
        logs = state / "logs"
        python = sys.executable
        commands = {
            "actions": [python, "-m", "rasa_sdk", "--actions", "actions", "-p", str(self.actions_port)],
            "rasa": [str(RASA_BIN), "run", "-i", "127.0.0.1", "-p", str(self.rasa_port), "--enable-api",
                     "--auth-token", env["RASA_AUTH_TOKEN"], "-m", str(latest_model()),
                     "--endpoints", "endpoints.yml", "--credentials", "credentials.yml"],
            "gateway": [python, "-m", "uvicorn", "bot.gateway.app:app", "--host", env.get("GATEWAY_HOST", "127.0.0.1"),
                        "--port", str(self.gateway_port), "--no-server-header", "--no-access-log"],
        }
        for name, command in commands.items():
            self._spawn(name, command, env, logs)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"{name} exited with {process.returncode}: see {logs / (name + '.log')}")
            if self.healthy():
                if self.telegram:  # a client of the gateway: started once the gateway answers
                    self._spawn("telegram", [python, "-m", "bot.telegram"], {**env, "GATEWAY_URL": self.gateway_url},
                                logs)
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
        """Return True when the gateway's /health answers 200."""
        try:
            with urllib.request.urlopen(self.gateway_url + "/health", timeout=5) as response:  # noqa: S310
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """Stop every service (SIGTERM to its process group, SIGKILL after 15 s); Ctrl-C is ignored meanwhile."""
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self._stop()
        finally:
            signal.signal(signal.SIGINT, previous)

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
        """Return the pid of each running service."""
        return {name: process.pid for name, process in self.processes.items()}


def main(argv: list[str] | None = None) -> int:
    """Command line: `serve` (services in the foreground) or `run` (services + terminal chat)."""
    parser = argparse.ArgumentParser(prog="mydsp", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["serve", "run"])
    args = parser.parse_args(argv)
    services = Services()

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    print("Starting the action server, the Rasa server and the gateway (logs in "
          f"{get_settings().state_dir}/logs)...", flush=True)
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
