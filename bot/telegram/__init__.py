"""The Telegram front end: a python-telegram-bot Application that is a client of the gateway.

`python -m bot.telegram` runs it (long polling, or a webhook when TELEGRAM_WEBHOOK_URL is set);
`make run` / `make serve` start it when TELEGRAM_BOT_TOKEN is set. See README.md.
"""
