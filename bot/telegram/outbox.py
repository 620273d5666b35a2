"""Deliver the gateway's outbox to the Telegram chats: what a helpdesk agent writes between turns.

While a helpdesk agent holds a conversation the assistant is silent; the agent's messages (and the
notices "… is handling your request", "… has closed your request") wait in the gateway's outbox.
`OutboxDelivery` long-polls `GET /v1/outbox?prefix=tg-&wait=20` for all the bot's chats at once and
sends each message to chat `int(conversation_id[3:])`:

- rendered like a turn's reply (`handlers.render_reply`: MarkdownV2 escaping, split at 4096
  characters, inline keyboards, photos, documents) and updating the chat's state;
- under the chat's lock of `ChatOrderedUpdateProcessor`: never interleaved with the rendering of
  a turn of the same chat, and in the order the gateway returned them (the lock is FIFO);
- through the bot's rate limiter (`SafeRetryRateLimiter`), like every other call.

A gateway error backs off (1 s doubling up to 60 s); an empty answer that came back early waits the
rest of a second: never a tight loop. The gateway returns each message once: a chat that cannot be
reached (blocked the bot…) loses it, and the log says so without its content. The task starts with
the application (`post_init`, polling and webhook modes) and is cancelled when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from telegram.error import TelegramError
from telegram.ext import Application

from bot.telegram.gateway import GatewayClient, GatewayUnavailable, OutboxItem
from bot.telegram.handlers import render_reply

logger = logging.getLogger("bot.telegram.outbox")

#: Conversation ids of the bot's chats start with this (see GatewayClient.conversation_id).
PREFIX = "tg-"
#: Long-poll wait asked of the gateway, in seconds (the gateway allows up to 25).
WAIT_S = 20.0
#: Seconds between two polls at least, when the gateway answers "nothing" early.
MIN_INTERVAL_S = 1.0
#: Back-off after a gateway error: first and longest wait, in seconds.
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0
#: Seconds the deliveries under way get to finish when the bot stops.
STOP_GRACE_S = 5.0
#: Where the application keeps its OutboxDelivery.
BOT_DATA_KEY = "outbox"


def chat_of(conversation_id: str) -> int | None:
    """Return the Telegram chat of a gateway conversation ("tg-<chat_id>"), None when it is not one."""
    if not conversation_id.startswith(PREFIX):
        return None
    try:
        return int(conversation_id[len(PREFIX):])
    except ValueError:
        return None


class OutboxDelivery:
    """The background task that long-polls the gateway's outbox and sends the messages to the chats.

    Attributes:
        delivered: messages sent to their chat so far (for tests and the log).
        polls: outbox calls made so far (answered or failed).
    """

    def __init__(self, application: Application, *, prefix: str = PREFIX,  # type: ignore[type-arg]
                 wait_s: float = WAIT_S, min_interval_s: float = MIN_INTERVAL_S,
                 backoff_first_s: float = BACKOFF_FIRST_S, backoff_max_s: float = BACKOFF_MAX_S) -> None:
        self.application = application
        self.prefix = prefix
        self.wait_s = wait_s
        self.min_interval_s = min_interval_s
        self.backoff_first_s = backoff_first_s
        self.backoff_max_s = backoff_max_s
        self.delivered = 0
        self.polls = 0
        self._task: asyncio.Task[None] | None = None
        self._deliveries: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> bool:
        """True while the polling task runs."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start polling in the running event loop (nothing when already started)."""
        if not self.running:
            self._task = asyncio.create_task(self.run(), name="telegram-outbox")

    async def stop(self) -> None:
        """Cancel the polling; let the deliveries under way finish (STOP_GRACE_S at most), then cancel them."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._deliveries:
            _, late = await asyncio.wait(set(self._deliveries), timeout=STOP_GRACE_S)
            for pending in late:
                pending.cancel()
            if late:
                await asyncio.wait(late)

    async def run(self) -> None:
        """Poll until cancelled; a gateway error backs off, an early empty answer waits (no tight loop)."""
        gateway: GatewayClient = self.application.bot_data["gateway"]
        delay = self.backoff_first_s
        failing = False
        while True:
            started = time.monotonic()
            self.polls += 1
            try:
                items = await gateway.outbox(self.prefix, self.wait_s)
            except GatewayUnavailable as exc:
                logger.warning("outbox poll failed (%s): next try in %.0f s", exc, delay)
                failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max_s)
                continue
            except Exception as exc:  # noqa: BLE001 - a bug must not stop the deliveries for good
                logger.error("outbox poll failed unexpectedly: %s", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max_s)
                continue
            if failing:
                logger.info("outbox poll works again")
                failing = False
            delay = self.backoff_first_s
            for item in items:
                self.dispatch(item)
            elapsed = time.monotonic() - started
            if not items and elapsed < self.min_interval_s:
                await asyncio.sleep(self.min_interval_s - elapsed)

    def dispatch(self, item: OutboxItem) -> None:
        """Deliver one conversation's messages in a task of its own (other chats need not wait)."""
        chat_id = chat_of(item.conversation_id)
        if chat_id is None:
            logger.warning("outbox: a conversation that is not a Telegram chat was skipped")
            return
        task = asyncio.create_task(self.deliver(chat_id, item))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def deliver(self, chat_id: int, item: OutboxItem) -> None:
        """Send one conversation's messages to its chat, under the chat's lock; failures are logged only.

        The lock is taken before anything else is awaited: deliveries of one chat keep the order in
        which they were dispatched, and never interleave with the rendering of a turn.
        """
        processor = self.application.update_processor
        lock: Any = processor.chat_lock(chat_id) if hasattr(processor, "chat_lock") else contextlib.nullcontext()
        async with lock:
            context = self.application.context_types.context(self.application, chat_id=chat_id)
            fallback = self.application.bot_data["settings"].default_language
            try:
                await render_reply(context, chat_id, item.reply, fallback)
            except (TelegramError, GatewayUnavailable) as exc:
                logger.warning("outbox: %d message(s) not delivered to a chat: %s", len(item.reply.messages),
                               type(exc).__name__)
                return
            except Exception as exc:  # noqa: BLE001 - one chat's failure must not stop the others
                logger.error("outbox: delivery to a chat failed unexpectedly: %s", type(exc).__name__)
                return
        self.delivered += len(item.reply.messages)
        logger.info("outbox: %d message(s) delivered to a chat", len(item.reply.messages))


def delivery_of(application: Application) -> OutboxDelivery:  # type: ignore[type-arg]
    """Return the application's OutboxDelivery (made on first use)."""
    delivery = application.bot_data.get(BOT_DATA_KEY)
    if not isinstance(delivery, OutboxDelivery):
        delivery = application.bot_data[BOT_DATA_KEY] = OutboxDelivery(application)
    return delivery


async def start_outbox(application: Application) -> None:  # type: ignore[type-arg]
    """Start delivering the outbox (the application's post_init; tests that start the bot by hand call it)."""
    delivery_of(application).start()


async def stop_outbox(application: Application) -> None:  # type: ignore[type-arg]
    """Stop delivering the outbox (post_stop and post_shutdown; idempotent)."""
    delivery = application.bot_data.get(BOT_DATA_KEY)
    if isinstance(delivery, OutboxDelivery):
        await delivery.stop()
