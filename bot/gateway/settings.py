"""Gateway configuration, read from the environment in this one place (see .env.example)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

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
        rasa_urls: every Rasa instance the turns are spread over (RASA_URLS, comma-separated;
            default: RASA_URL alone).
        action_server_urls: every action server, for /health (ACTION_SERVER_URLS, comma-separated;
            default: ACTION_SERVER_URL alone).
        redis_url: Redis of the conversation locks across gateway processes (REDIS_URL; empty: one
            process, in-process locks).
        rasa_lock_redis_url: Redis of Rasa's lock store when RASA_LOCK_STORE is "redis" (built from
            RASA_LOCK_REDIS_HOST/PORT/DB/PASSWORD), else empty; the gateway clears the lock of a
            conversation whose Rasa instance died mid-turn.
        rasa_lock_key_prefix: Rasa's lock store key prefix (RASA_LOCK_KEY_PREFIX, default "mydsp").
        conversation_lock_wait_s: seconds a request waits for its conversation's lock before a 429
            (CONVERSATION_LOCK_WAIT_SECONDS, default RASA_TIMEOUT_SECONDS + 15).
        rasa_retry_after_s: seconds a failed Rasa instance is skipped before it is tried again
            (RASA_RETRY_AFTER_SECONDS, default 5).
    """

    host: str
    port: int
    api_key: str
    rasa_url: str
    rasa_token: str
    action_server_url: str
    rasa_timeout_s: float
    default_language: str
    rasa_urls: tuple[str, ...] = ()
    action_server_urls: tuple[str, ...] = ()
    redis_url: str = ""
    rasa_lock_redis_url: str = ""
    rasa_lock_key_prefix: str = "mydsp"
    conversation_lock_wait_s: float = 75.0
    rasa_retry_after_s: float = 5.0

    def __repr__(self) -> str:
        """Return a representation without the key, the token or any password."""
        return (f"GatewaySettings(host={self.host!r}, port={self.port}, rasa_urls={self.rasa_urls!r}, "
                f"redis={'on' if self.redis_url else 'off'}, rasa_timeout_s={self.rasa_timeout_s})")


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
    rasa_url = env.get("RASA_URL", "http://127.0.0.1:5005").rstrip("/")
    action_server_url = env.get("ACTION_SERVER_URL", "http://127.0.0.1:5055").rstrip("/")
    rasa_timeout_s = float(env.get("RASA_TIMEOUT_SECONDS", "60"))
    return GatewaySettings(
        host=env.get("GATEWAY_HOST", "127.0.0.1"),
        port=int(env.get("GATEWAY_PORT", "8000")),
        api_key=env.get("GATEWAY_API_KEY") or secret_file("gateway-api-key"),
        rasa_url=rasa_url,
        rasa_token=env.get("RASA_AUTH_TOKEN") or secret_file("rasa-auth-token"),
        action_server_url=action_server_url,
        rasa_timeout_s=rasa_timeout_s,
        default_language=env.get("DSP_DEFAULT_LANGUAGE", "fr"),
        rasa_urls=url_list(env.get("RASA_URLS", "")) or (rasa_url,),
        action_server_urls=url_list(env.get("ACTION_SERVER_URLS", "")) or (action_server_url,),
        redis_url=env.get("REDIS_URL", "").strip(),
        rasa_lock_redis_url=rasa_lock_redis_url(env),
        rasa_lock_key_prefix=env.get("RASA_LOCK_KEY_PREFIX", "").strip() or "mydsp",
        conversation_lock_wait_s=float(env.get("CONVERSATION_LOCK_WAIT_SECONDS", "") or rasa_timeout_s + 15),
        rasa_retry_after_s=float(env.get("RASA_RETRY_AFTER_SECONDS", "") or 5),
    )


def url_list(raw: str) -> tuple[str, ...]:
    """Return the URLs of a comma-separated list, without trailing slashes or empty items."""
    return tuple(item.strip().rstrip("/") for item in raw.split(",") if item.strip())


def rasa_lock_redis_url(env: Mapping[str, str]) -> str:
    """Return the URL of Rasa's Redis lock store (RASA_LOCK_STORE=redis), else ""."""
    if env.get("RASA_LOCK_STORE", "").strip() != "redis":
        return ""
    password = env.get("RASA_LOCK_REDIS_PASSWORD", "")
    auth = f":{quote(password, safe='')}@" if password else ""
    host = env.get("RASA_LOCK_REDIS_HOST", "").strip() or "127.0.0.1"
    port = env.get("RASA_LOCK_REDIS_PORT", "").strip() or "6379"
    db = env.get("RASA_LOCK_REDIS_DB", "").strip() or "1"
    return f"redis://{auth}{host}:{port}/{db}"
