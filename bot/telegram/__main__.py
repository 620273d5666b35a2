"""Run the Telegram front end: `python -m bot.telegram`.

`make run` / `make serve` start it when TELEGRAM_BOT_TOKEN is set. Long polling by default; a
webhook (with Telegram's secret token) when TELEGRAM_WEBHOOK_URL is set.
"""

from __future__ import annotations

import logging
import re
import sys

from bot.telegram.app import build_application, configure_logging
from bot.telegram.handlers import ALLOWED_UPDATES
from bot.telegram.settings import TelegramSettings, get_settings

logger = logging.getLogger("bot.telegram")
#: What Telegram accepts as a webhook secret token.
WEBHOOK_SECRET = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


def problems(settings: TelegramSettings) -> list[str]:
    """Return what is wrong with the configuration (empty when it can run)."""
    found = []
    if not settings.token:
        found.append("TELEGRAM_BOT_TOKEN is not set (create a bot with BotFather: see README.md)")
    if settings.webhook_mode:
        if not settings.webhook_url.startswith("https://"):
            found.append("TELEGRAM_WEBHOOK_URL must be an https:// URL (Telegram posts only over TLS)")
        if not WEBHOOK_SECRET.match(settings.webhook_secret):
            found.append("TELEGRAM_WEBHOOK_SECRET: 1 to 256 characters among A-Z, a-z, 0-9, _ and -")
    return found


def main() -> int:
    """Run the bot until SIGINT / SIGTERM."""
    settings = get_settings()
    errors = problems(settings)
    if errors:
        for error in errors:
            print(f"bot.telegram: {error}", file=sys.stderr)
        return 2
    configure_logging(settings)
    application = build_application(settings)
    if settings.webhook_mode:
        logger.info("webhook mode: listening on %s:%s/%s, secret token required",
                    settings.webhook_listen, settings.webhook_port, settings.webhook_path)
        application.run_webhook(listen=settings.webhook_listen, port=settings.webhook_port,
                                url_path=settings.webhook_path, webhook_url=settings.webhook_url,
                                secret_token=settings.webhook_secret, allowed_updates=ALLOWED_UPDATES)
    else:
        logger.info("long-polling mode; gateway at %s", settings.gateway_url)
        application.run_polling(allowed_updates=ALLOWED_UPDATES, timeout=int(settings.poll_timeout_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
