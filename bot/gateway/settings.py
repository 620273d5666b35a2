"""Gateway configuration, read from the environment in this one place (see .env.example)."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from bot.dsp.settings import get_settings as dsp_settings


@dataclass(frozen=True)
class GatewaySettings:
    """Where the gateway listens and how it reaches Rasa and the action server.

    Attributes:
        host: interface to bind (GATEWAY_HOST, default loopback).
        port: TCP port (GATEWAY_PORT, default 8000).
        api_key: bearer key accepted from clients (GATEWAY_API_KEY; else generated once into
            `<DSP_STATE_DIR>/gateway-api-key`, mode 0600, which local clients read).
        rasa_url: Rasa server base URL (RASA_URL).
        rasa_token: token of Rasa's HTTP API (RASA_AUTH_TOKEN; else generated into the state dir).
        action_server_url: action server base URL (ACTION_SERVER_URL).
        rasa_timeout_s: seconds to wait for one Rasa turn (RASA_TIMEOUT_SECONDS).
        default_language: language before any is known (DSP_DEFAULT_LANGUAGE).
    """

    host: str
    port: int
    api_key: str
    rasa_url: str
    rasa_token: str
    action_server_url: str
    rasa_timeout_s: float
    default_language: str


def secret_file(name: str) -> str:
    """Return the secret stored in `<DSP_STATE_DIR>/<name>`, creating it (0600) on first use."""
    path = Path(dsp_settings().state_dir) / name
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value)
    return value


@lru_cache(maxsize=1)
def get_settings() -> GatewaySettings:
    """Read the settings once (call `get_settings.cache_clear()` in tests)."""
    env = os.environ
    return GatewaySettings(
        host=env.get("GATEWAY_HOST", "127.0.0.1"),
        port=int(env.get("GATEWAY_PORT", "8000")),
        api_key=env.get("GATEWAY_API_KEY") or secret_file("gateway-api-key"),
        rasa_url=env.get("RASA_URL", "http://127.0.0.1:5005").rstrip("/"),
        rasa_token=env.get("RASA_AUTH_TOKEN") or secret_file("rasa-auth-token"),
        action_server_url=env.get("ACTION_SERVER_URL", "http://127.0.0.1:5055").rstrip("/"),
        rasa_timeout_s=float(env.get("RASA_TIMEOUT_SECONDS", "60")),
        default_language=env.get("DSP_DEFAULT_LANGUAGE", "fr"),
    )
