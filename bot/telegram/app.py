"""Build the python-telegram-bot Application of the Telegram front end.

- Updates of one chat are processed one at a time, in order; different chats run concurrently
  (`ChatOrderedUpdateProcessor`); an update delivered twice (webhook redelivery) is processed once.
- The gateway's outbox (a helpdesk agent's messages between turns) is delivered by a background task
  (`bot/telegram/outbox.py`) started in post_init and stopped in post_stop, in both modes.
- Flood limits: `SafeRetryRateLimiter` is PTB's AIORateLimiter (RetryAfter honoured, requests retried
  after the wait) that also retries network errors, but only where that cannot do an action twice.
- Logging: the httpx logger at WARNING, PTB's at INFO at most (its DEBUG lines hold whole updates), and
  `SecretRedactingFilter` removes the bot token (and the other keys) from every log line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
from telegram import BotCommand, LinkPreviewOptions, Update
from telegram.constants import ParseMode
from telegram.error import NetworkError, TimedOut
from telegram.ext import AIORateLimiter, Application, ApplicationBuilder, BaseUpdateProcessor, Defaults

from bot.telegram import handlers
from bot.telegram.gateway import GatewayClient
from bot.telegram.outbox import start_outbox, stop_outbox
from bot.telegram.settings import SUPPORTED_LANGUAGES, TelegramSettings
from bot.telegram.texts import COMMANDS

logger = logging.getLogger("bot.telegram")


def kind_of(update: object) -> str:
    """Return the update's type (message, callback_query…) for the log: never its content."""
    if isinstance(update, Update):
        for name in Update.ALL_TYPES:
            if getattr(update, name, None) is not None:
                return name
    return type(update).__name__


class ChatOrderedUpdateProcessor(BaseUpdateProcessor):
    """Process the updates of one chat in order and different chats concurrently; each update once.

    PTB hands updates over in the order it received them; each waits for its chat's lock (asyncio
    locks are FIFO), then for one of `max_concurrent_updates` working slots. The base class's own bound
    (`pending_limit`) only limits how many updates may wait.
    """

    def __init__(self, max_concurrent_updates: int = 64, pending_limit: int = 4096, remember: int = 10_000) -> None:
        super().__init__(pending_limit)
        self._work = asyncio.Semaphore(max_concurrent_updates)
        self._locks: dict[int, tuple[asyncio.Lock, int]] = {}
        self._remember = remember
        self._seen: OrderedDict[int, None] = OrderedDict()
        self._finished: OrderedDict[int, None] = OrderedDict()

    async def do_process_update(self, update: object, coroutine: Awaitable[Any]) -> None:
        """Run the update's handlers under its chat's lock (see the class docstring)."""
        update_id = update.update_id if isinstance(update, Update) else None
        if update_id is not None:
            if update_id in self._seen:
                logger.info("update %s delivered again: skipped", update_id)
                if isinstance(coroutine, Coroutine):
                    coroutine.close()
                return
            self._remember_id(self._seen, update_id)
        chat = update.effective_chat if isinstance(update, Update) else None
        started = time.monotonic()
        try:
            if chat is None:
                async with self._work:
                    await coroutine
            else:
                async with self._chat_lock(chat.id), self._work:
                    await coroutine
        finally:
            if update_id is not None:
                self._remember_id(self._finished, update_id)
                logger.info("update %s (%s) handled in %.0f ms", update_id, kind_of(update),
                            (time.monotonic() - started) * 1000)

    def chat_lock(self, chat_id: int) -> AbstractAsyncContextManager[None]:
        """Return the chat's lock (FIFO): what else writes to the chat (the outbox) takes it too."""
        return self._chat_lock(chat_id)

    def finished(self, update_id: int) -> bool:
        """Return True once the update's handlers have run (for tests and the benchmark)."""
        return update_id in self._finished

    def _remember_id(self, ids: OrderedDict[int, None], update_id: int) -> None:
        ids[update_id] = None
        while len(ids) > self._remember:
            ids.popitem(last=False)

    @asynccontextmanager
    async def _chat_lock(self, chat_id: int) -> AsyncIterator[None]:
        lock, users = self._locks.get(chat_id, (asyncio.Lock(), 0))
        self._locks[chat_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[chat_id]
            if users <= 1:
                del self._locks[chat_id]
            else:
                self._locks[chat_id] = (lock, users - 1)

    async def initialize(self) -> None:
        """Nothing to set up."""

    async def shutdown(self) -> None:
        """Nothing to free."""


class SafeRetryRateLimiter(AIORateLimiter):
    """AIORateLimiter (Telegram's flood limits; RetryAfter waited out, then the request is sent again).

    On top, a network error is retried only when that cannot do an action twice: the request never
    left (connection refused, connect or pool timeout), or the method is idempotent (deleting,
    answering a callback, editing, getFile…). A sendMessage that may have arrived is not sent again.
    """

    IDEMPOTENT = frozenset({
        "getMe", "getFile", "deleteMessage", "answerCallbackQuery", "editMessageText", "editMessageReplyMarkup",
        "setMyCommands", "deleteMyCommands", "setWebhook", "deleteWebhook", "getWebhookInfo", "sendChatAction",
        "leaveChat",
    })
    NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

    def __init__(self, network_retries: int = 2, retry_delay_s: float = 0.5, **kwargs: Any) -> None:
        kwargs.setdefault("max_retries", 3)
        super().__init__(**kwargs)
        self.network_retries = network_retries
        self.retry_delay_s = retry_delay_s

    def may_retry(self, endpoint: str, error: Exception) -> bool:
        """Return True when sending the request again cannot repeat what Telegram already did."""
        if type(error) not in (NetworkError, TimedOut):  # BadRequest is a NetworkError: never retried
            return False
        return endpoint in self.IDEMPOTENT or isinstance(error.__cause__, self.NOT_SENT)

    async def process_request(
        self,
        callback: Callable[..., Coroutine[Any, Any, bool | dict[str, Any] | list[dict[str, Any]]]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: int | None,
    ) -> bool | dict[str, Any] | list[dict[str, Any]]:
        """Apply the flood limits, then retry the safe network errors."""
        for attempt in range(self.network_retries + 1):
            try:
                return await super().process_request(callback, args, kwargs, endpoint, data, rate_limit_args)
            except (NetworkError, TimedOut) as exc:
                if attempt == self.network_retries or not self.may_retry(endpoint, exc):
                    raise
                logger.warning("%s failed (%s): retrying", endpoint, type(exc.__cause__ or exc).__name__)
                await asyncio.sleep(self.retry_delay_s * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover


class SecretRedactingFilter(logging.Filter):
    """Replace the bot token (and other secrets) in every record that passes through a handler."""

    def __init__(self, *secrets: str) -> None:
        super().__init__()
        values: set[str] = set()
        for secret in secrets:
            if secret and len(secret) >= 8:
                values.add(secret)
                if ":" in secret:  # a bot token: its secret half may appear alone
                    values.add(secret.split(":", 1)[1])
        self.secrets = sorted(values, key=len, reverse=True)

    def redact(self, message: str) -> str:
        """Return `message` with every secret replaced by `[redacted]`."""
        for secret in self.secrets:
            message = message.replace(secret, "[redacted]")
        return message

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the message, its arguments and its traceback; never drop the record."""
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is still logged, as is
            return True
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def quiet_loggers() -> None:
    """Quiet the loggers that say too much: httpx (its request lines hold the token), PTB (DEBUG logs updates)."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    for name in ("telegram", "apscheduler", "tornado"):
        logger_ = logging.getLogger(name)
        if logger_.getEffectiveLevel() < logging.INFO:
            logger_.setLevel(logging.INFO)


def configure_logging(settings: TelegramSettings, level: int = logging.INFO) -> SecretRedactingFilter:
    """Log to stderr through the redacting filter (also added to any handler already on the root logger)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s - %(message)s"))
        root.addHandler(handler)
    redacting = SecretRedactingFilter(settings.token, settings.webhook_secret, settings.gateway_api_key)
    for existing in root.handlers:
        existing.addFilter(redacting)
    root.setLevel(level)
    quiet_loggers()
    return redacting


async def register_commands(application: Application) -> None:  # type: ignore[type-arg]
    """Register the command menu (setMyCommands) in fr, de and en, and French for other languages."""
    for language in SUPPORTED_LANGUAGES:
        commands = [BotCommand(name, description) for name, description in COMMANDS[language]]
        await application.bot.set_my_commands(commands, language_code=language)
    settings: TelegramSettings = application.bot_data["settings"]
    await application.bot.set_my_commands(
        [BotCommand(name, description) for name, description in COMMANDS[settings.default_language]])


async def on_init(application: Application) -> None:  # type: ignore[type-arg]
    """post_init: register the command menu, start delivering the outbox."""
    await register_commands(application)
    await start_outbox(application)


async def close_gateway(application: Application) -> None:  # type: ignore[type-arg]
    """post_shutdown: stop the outbox if still running, close the gateway client's connections."""
    await stop_outbox(application)
    await application.bot_data["gateway"].aclose()


def build_application(settings: TelegramSettings, gateway: GatewayClient | None = None,
                      max_concurrent_updates: int = 64) -> Application:  # type: ignore[type-arg]
    """Return the Application: handlers, rate limiter, per-chat ordering, MarkdownV2 defaults.

    Args:
        settings: where Telegram (or a fake Bot API) and the gateway are.
        gateway: the gateway client (tests pass their own); default: one from the settings.
        max_concurrent_updates: updates (of different chats) processed at the same time.
    """
    defaults = Defaults(parse_mode=ParseMode.MARKDOWN_V2,
                        link_preview_options=LinkPreviewOptions(is_disabled=True))  # no preview fetches a link
    application = (
        ApplicationBuilder()
        .token(settings.token)
        .base_url(settings.base_url)
        .base_file_url(settings.base_file_url)
        .defaults(defaults)
        .rate_limiter(SafeRetryRateLimiter())
        .concurrent_updates(ChatOrderedUpdateProcessor(max_concurrent_updates))
        .connection_pool_size(128)
        .post_init(on_init)
        .post_stop(stop_outbox)
        .post_shutdown(close_gateway)
        .build()
    )
    application.bot_data["settings"] = settings
    application.bot_data["gateway"] = gateway or GatewayClient(settings.gateway_url, settings.gateway_api_key)
    handlers.register(application)
    return application
