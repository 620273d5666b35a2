"""Session fixtures: the real services (action server, Rasa, gateway) on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import RasaTracker, free_port, test_env


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--dsp-db``: which database the domain-layer tests (tests/dsp) run on (see tests/dsp/conftest.py)."""
    parser.addoption("--dsp-db", choices=("auto", "sqlite", "postgresql"), default="auto",
                     help="auto (default): every DSP test on SQLite, the record/account modules on PostgreSQL too; "
                          "sqlite: SQLite only; postgresql: every DSP test on PostgreSQL only")


@dataclass
class Running:
    """The running services of a test session."""

    gateway_url: str
    rasa_url: str
    key: str
    env: dict[str, str]
    state_dir: Path
    rasa: RasaTracker
    actions_url: str
    launcher: object = None  # the bot.launcher.Services that started them


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """Start the three services with a fresh state directory; stop them at the end."""
    from bot.launcher import Services

    state_dir = tmp_path_factory.mktemp("state")
    env = test_env(state_dir)
    extra = {k: env[k] for k in ("DSP_STATE_DIR", "DSP_DATABASE_URL", "GATEWAY_API_KEY")}
    extra["RASA_AUTH_TOKEN"] = "rasa-test-token"
    extra["DSP_UPLOAD_MAX_MB"] = "1"  # the oversize refusal needs only a small file
    env.update({"RASA_AUTH_TOKEN": extra["RASA_AUTH_TOKEN"], "DSP_UPLOAD_MAX_MB": extra["DSP_UPLOAD_MAX_MB"]})
    svc = Services(gateway_port=free_port(), rasa_port=free_port(), actions_port=free_port(), env=extra,
                   telegram=False)  # the Telegram tests run the bot themselves, against a fake Bot API
    svc.start(timeout_s=420)
    try:
        yield Running(svc.gateway_url, f"http://127.0.0.1:{svc.rasa_port}", extra["GATEWAY_API_KEY"], env,
                      state_dir, RasaTracker(f"http://127.0.0.1:{svc.rasa_port}", extra["RASA_AUTH_TOKEN"]),
                      f"http://127.0.0.1:{svc.actions_port}", launcher=svc)
    finally:
        svc.stop()
