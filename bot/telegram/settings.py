"""Settings of the Telegram front end, read from the environment in this one place (see .env.example)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import urlsplit

#: Largest file a bot may download from Telegram (getFile), in bytes: checked before calling getFile.
TELEGRAM_DOWNLOAD_LIMIT_BYTES = 20 * 1024 * 1024
SUPPORTED_LANGUAGES = ("fr", "de", "en")


@dataclass(frozen=True)
class TelegramSettings:
    """How the bot reaches Telegram and the gateway.

    Attributes:
        token: the bot's token from BotFather (TELEGRAM_BOT_TOKEN); empty: the front end is off.
        gateway_url: base URL of the gateway (GATEWAY_URL; default from GATEWAY_HOST/GATEWAY_PORT).
        gateway_api_key: bearer key for the gateway (GATEWAY_API_KEY, else the generated
            `<DSP_STATE_DIR>/gateway-api-key`).
        webhook_url: public HTTPS URL Telegram posts updates to (TELEGRAM_WEBHOOK_URL); empty: long polling.
        webhook_secret: the secret Telegram sends in `X-Telegram-Bot-Api-Secret-Token`
            (TELEGRAM_WEBHOOK_SECRET, else generated once into `<DSP_STATE_DIR>/telegram-webhook-secret`);
            only read in webhook mode.
        webhook_listen: interface of the local webhook server (TELEGRAM_WEBHOOK_LISTEN), behind a TLS proxy.
        webhook_port: port of the local webhook server (TELEGRAM_WEBHOOK_PORT).
        api_base_url: root of the Bot API server (TELEGRAM_API_BASE_URL): Telegram's, a local Bot API
            server, or the tests' fake.
        default_language: language of the bot's own words before one is known (DSP_DEFAULT_LANGUAGE).
        poll_timeout_s: long-polling timeout of getUpdates, in seconds.
    """

    token: str = field(repr=False)
    gateway_url: str
    gateway_api_key: str = field(repr=False)
    webhook_url: str = ""
    webhook_secret: str = field(default="", repr=False)
    webhook_listen: str = "127.0.0.1"
    webhook_port: int = 8443
    api_base_url: str = "https://api.telegram.org"
    default_language: str = "fr"
    poll_timeout_s: float = 30.0

    @property
    def webhook_mode(self) -> bool:
        """True when a public URL is configured: Telegram posts updates to the webhook."""
        return bool(self.webhook_url)

    @property
    def webhook_path(self) -> str:
        """Path of the local webhook server: the public URL's path (e.g. `telegram` for https://h/telegram)."""
        return urlsplit(self.webhook_url).path.strip("/")

    @property
    def base_url(self) -> str:
        """Bot API method URL prefix as python-telegram-bot wants it (`…/bot`, the token is appended)."""
        return self.api_base_url.rstrip("/") + "/bot"

    @property
    def base_file_url(self) -> str:
        """Bot API file download prefix (`…/file/bot`)."""
        return self.api_base_url.rstrip("/") + "/file/bot"


def default_gateway_url() -> str:
    """Return the gateway's URL from GATEWAY_HOST and GATEWAY_PORT (a wildcard host means loopback)."""
    host = os.environ.get("GATEWAY_HOST", "127.0.0.1")
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - a bind address, not one we listen on
        host = "127.0.0.1"
    return f"http://{host}:{os.environ.get('GATEWAY_PORT', '8000')}"


@lru_cache(maxsize=1)
def get_settings() -> TelegramSettings:
    """Read the settings once (call `get_settings.cache_clear()` in tests).

    Generated secrets (the gateway key, the webhook secret) are read from the state directory only
    when needed, so an unconfigured bot creates nothing.
    """
    from bot.gateway.settings import secret_file

    env = os.environ
    token = env.get("TELEGRAM_BOT_TOKEN", "").strip()
    webhook_url = env.get("TELEGRAM_WEBHOOK_URL", "").strip()
    language = env.get("DSP_DEFAULT_LANGUAGE", "fr")
    return TelegramSettings(
        token=token,
        gateway_url=(env.get("GATEWAY_URL") or default_gateway_url()).rstrip("/"),
        gateway_api_key=(env.get("GATEWAY_API_KEY") or (secret_file("gateway-api-key") if token else "")),
        webhook_url=webhook_url,
        webhook_secret=(env.get("TELEGRAM_WEBHOOK_SECRET")
                        or (secret_file("telegram-webhook-secret") if token and webhook_url else "")),
        webhook_listen=env.get("TELEGRAM_WEBHOOK_LISTEN", "127.0.0.1"),
        webhook_port=int(env.get("TELEGRAM_WEBHOOK_PORT", "8443")),
        api_base_url=env.get("TELEGRAM_API_BASE_URL", "https://api.telegram.org").rstrip("/"),
        default_language=language if language in SUPPORTED_LANGUAGES else "fr",
    )
