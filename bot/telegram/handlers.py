"""Handlers of the Telegram front end: each update goes to the gateway, or is politely refused.

Private chats only (health data): a group gets one polite refusal and the bot leaves it; a channel
is left silently. Nothing here logs a message's text; errors are logged with the update id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from contextlib import suppress
from typing import Any

from telegram import InputFile, Message, Update
from telegram.constants import ChatAction, ChatMemberStatus, ChatType, MessageLimit
from telegram.error import BadRequest, NetworkError, TelegramError
from telegram.ext import (
    Application,
    CallbackQueryHandler,
    ChatMemberHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from bot.telegram.gateway import GatewayClient, GatewayUnavailable, Reply
from bot.telegram.rendering import (
    CALLBACK_PREFIX,
    LANGUAGE_PREFIX,
    ChatState,
    Offer,
    escape,
    language_keyboard,
    split_text,
)
from bot.telegram.settings import SUPPORTED_LANGUAGES, TELEGRAM_DOWNLOAD_LIMIT_BYTES, TelegramSettings
from bot.telegram.texts import (
    COMMAND_UTTERANCES,
    DEEP_LINKS,
    LANGUAGE_NAMES,
    is_escape_word,
    telegram_language,
    text,
)

logger = logging.getLogger("bot.telegram")

#: The update types the bot asks Telegram for (getUpdates / setWebhook `allowed_updates`).
ALLOWED_UPDATES = [Update.MESSAGE, Update.EDITED_MESSAGE, Update.CALLBACK_QUERY, Update.CHANNEL_POST,
                   Update.EDITED_CHANNEL_POST, Update.MY_CHAT_MEMBER]
#: Largest document and photo a bot may send (Bot API), in bytes.
SEND_DOCUMENT_LIMIT_BYTES = 50 * 1024 * 1024
SEND_PHOTO_LIMIT_BYTES = 10 * 1024 * 1024
#: Text chunks leave room for the "→ choice" line added when a keyboard is answered.
TEXT_CHUNK = MessageLimit.MAX_TEXT_LENGTH - 96
CAPTION_LIMIT = MessageLimit.CAPTION_LENGTH


# --------------------------------------------------------------------------- helpers

def state_of(context: ContextTypes.DEFAULT_TYPE) -> ChatState:
    """Return the chat's state (a throwaway one for an update without a chat)."""
    if context.chat_data is None:
        return ChatState()
    state = context.chat_data.get("state")
    if not isinstance(state, ChatState):
        state = context.chat_data["state"] = ChatState()
    return state


def gateway_of(context: ContextTypes.DEFAULT_TYPE) -> GatewayClient:
    """Return the application's gateway client."""
    return context.bot_data["gateway"]  # type: ignore[no-any-return]


def settings_of(context: ContextTypes.DEFAULT_TYPE) -> TelegramSettings:
    """Return the application's settings."""
    return context.bot_data["settings"]  # type: ignore[no-any-return]


def language_of(update: Update, context: ContextTypes.DEFAULT_TYPE) -> str:
    """Return the language of the bot's own words: chosen, else the conversation's, else Telegram's."""
    state = state_of(context)
    user = update.effective_user
    return state.pinned_language or state.language or telegram_language(
        user.language_code if user else None, settings_of(context).default_language)


def turn_language(update: Update, context: ContextTypes.DEFAULT_TYPE, message: str) -> str | None:
    """Return the language to send with a turn: the chosen one, or Telegram's for a short first message.

    Otherwise None: the gateway keeps the conversation's language or detects it from the text.
    """
    state = state_of(context)
    if state.pinned_language:
        return state.pinned_language
    if state.language is None and len(message.split()) < 3:  # too short for the gateway's detection
        return language_of(update, context)
    return None


def conversation_of(update: Update, context: ContextTypes.DEFAULT_TYPE) -> str:
    """Return the gateway conversation of the update's chat."""
    assert update.effective_chat is not None
    return gateway_of(context).conversation_id(update.effective_chat.id)


async def send_text(context: ContextTypes.DEFAULT_TYPE, chat_id: int, body: str,
                    offer: tuple[ChatState, list[dict[str, Any]]] | None = None) -> Message | None:
    """Send text (split at 4096 characters, MarkdownV2-escaped); buttons go on the last part."""
    chunks = split_text(body, TEXT_CHUNK)
    sent: Message | None = None
    for number, chunk in enumerate(chunks):
        markup = None
        new_offer: Offer | None = None
        if offer and number == len(chunks) - 1:
            state, buttons = offer
            _, new_offer, markup = state.offer(buttons, chunk)
        sent = await context.bot.send_message(chat_id, escape(chunk or "…"), reply_markup=markup)
        if new_offer is not None:
            new_offer.message_id = sent.message_id
    return sent


async def say(update: Update, context: ContextTypes.DEFAULT_TYPE, key: str) -> None:
    """Send one of the bot's own messages in the user's language."""
    assert update.effective_chat is not None
    await send_text(context, update.effective_chat.id, text(key, language_of(update, context)))


async def chat_action(context: ContextTypes.DEFAULT_TYPE, chat_id: int, action: str) -> None:
    """Show "typing…" (or "sending a file…") while the assistant works; a failure does not matter."""
    try:
        await context.bot.send_chat_action(chat_id, action)
    except TelegramError as exc:
        logger.debug("chat action failed: %s", type(exc).__name__)


def typing(context: ContextTypes.DEFAULT_TYPE, chat_id: int) -> list[Awaitable[None]]:
    """Return the "typing…" side task of a turn; none while a helpdesk agent holds the conversation.

    The assistant is then silent (the text goes to the agent, the reply has no message): a "typing…"
    would promise an answer that does not come.
    """
    return [] if state_of(context).held_by_agent else [chat_action(context, chat_id, ChatAction.TYPING)]


async def exchange(update: Update, context: ContextTypes.DEFAULT_TYPE, request: Awaitable[Reply],
                   *side: Awaitable[Any]) -> Reply | None:
    """Run one gateway request while the side tasks (typing, deletion, …) run, then render the reply."""
    assert update.effective_chat is not None
    chat_id = update.effective_chat.id
    tasks = [asyncio.ensure_future(task) for task in side]
    try:
        reply: Reply | None = await request
    except GatewayUnavailable:
        reply = None
    finally:
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, BaseException):
                logger.warning("update %s: side task failed: %s", update.update_id, type(result).__name__)
    await render(update, context, chat_id, reply)
    return reply


async def render(update: Update, context: ContextTypes.DEFAULT_TYPE, chat_id: int, reply: Reply | None) -> None:
    """Show the gateway's answer to a turn (see `render_reply`); None (gateway down) says "unavailable"."""
    if reply is None:
        await send_text(context, chat_id, text("unavailable", language_of(update, context)))
        return
    user = update.effective_user
    await render_reply(context, chat_id, reply, telegram_language(
        user.language_code if user else None, settings_of(context).default_language))


async def render_reply(context: ContextTypes.DEFAULT_TYPE, chat_id: int, reply: Reply, fallback_language: str) -> None:
    """Show the gateway's messages natively: text, inline keyboards, photos, documents.

    Used for the replies to turns and for the outbox (a helpdesk agent's messages). The chat's state
    follows the reply: the protected input asked (the next text goes to /protected), whether a file
    is expected, the conversation's language, the helpdesk ticket. No message (the text went to the
    helpdesk agent who holds the conversation) sends nothing.

    Args:
        context: a context of the chat (its `chat_data` holds the ChatState).
        chat_id: the Telegram chat.
        reply: the gateway's reply (status 200: a turn ran or the outbox delivered).
        fallback_language: the bot's own words' language when neither chosen nor known from the gateway.
    """
    state = state_of(context)
    if reply.language in SUPPORTED_LANGUAGES:
        state.language = reply.language
    if reply.status == 200:  # a turn ran: what it asks replaces what was asked before
        state.pending_kind = None
        state.expects_file = False
        state.handoff = str((reply.handoff or {}).get("status") or "") or None
    language = state.pinned_language or state.language or fallback_language
    for message in reply.messages:
        kind = (message.get("protected_input") or {}).get("kind")
        expects_file = (message.get("custom") or {}).get("expects") == "file"
        if kind:
            state.pending_kind = str(kind)
        if expects_file:
            state.expects_file = True
        hints = [text("private_hint", language)] if kind else []
        hints += [text("file_hint", language)] if expects_file else []
        body = "\n\n".join(part for part in [str(message.get("text") or ""), *hints] if part)
        await send_message(context, chat_id, state, message, body, language)


async def send_message(context: ContextTypes.DEFAULT_TYPE, chat_id: int, state: ChatState, message: dict[str, Any],
                       body: str, language: str) -> None:
    """Send one gateway message: a photo or a document (text as caption when it fits), else text."""
    buttons = [b for b in message.get("buttons") or [] if isinstance(b, dict) and b.get("payload")]
    attachments: list[tuple[str, Any]] = []
    image = message.get("image")
    if isinstance(image, str) and image:
        attachments.append(("photo", image))
    file = message.get("file")
    if isinstance(file, dict) and file.get("url"):
        attachments.append(("document", file))
    if not attachments:
        if body or buttons:
            await send_text(context, chat_id, body, (state, buttons) if buttons else None)
        return
    if len(body) > CAPTION_LIMIT:
        await send_text(context, chat_id, body)
        body = ""
    gateway = gateway_of(context)
    for number, (what, item) in enumerate(attachments):
        last = number == len(attachments) - 1
        caption = escape(body) if body and number == 0 else None
        offer: Offer | None = None
        markup = None
        if last and buttons:
            _, offer, markup = state.offer(buttons, None)
        try:
            if what == "photo":
                photo: Any = item if item.startswith("https://") else await gateway.fetch(item)
                if isinstance(photo, bytes) and len(photo) > SEND_PHOTO_LIMIT_BYTES:
                    raise GatewayUnavailable("photo too large for Telegram")
                sent = await context.bot.send_photo(chat_id, photo=photo, caption=caption, reply_markup=markup)
            else:
                if int(item.get("size_bytes") or 0) > SEND_DOCUMENT_LIMIT_BYTES:
                    raise GatewayUnavailable("document too large for Telegram")
                data = await gateway.fetch(str(item["url"]))
                name = str(item.get("name") or "document")
                sent = await context.bot.send_document(chat_id, document=InputFile(data, filename=name),
                                                       caption=caption, reply_markup=markup)
        except GatewayUnavailable as exc:
            logger.warning("could not attach a %s: %s", what, exc)
            failure = "\n\n".join(part for part in [body if number == 0 else "", text("send_failed", language)] if part)
            sent = await context.bot.send_message(chat_id, escape(failure), reply_markup=markup)
            if offer is not None:
                offer.text = failure
        if offer is not None:
            offer.message_id = sent.message_id


# --------------------------------------------------------------------------- commands

async def on_start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Welcome the user in their language; a deep link (t.me/<bot>?start=reset_password) opens its task."""
    await say(update, context, "welcome")
    task = (context.args or [""])[0]
    if task in DEEP_LINKS:
        language = language_of(update, context)
        await exchange(update, context, gateway_of(context).send_text(
            conversation_of(update, context), DEEP_LINKS[task][language], language),
            *typing(context, update.effective_chat.id))  # type: ignore[union-attr]


async def on_help(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Explain how to talk to the assistant and list the commands."""
    await say(update, context, "help")


async def on_language(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Offer the three languages."""
    assert update.effective_chat is not None
    await context.bot.send_message(update.effective_chat.id,
                                   escape(text("choose_language", language_of(update, context))),
                                   reply_markup=language_keyboard(LANGUAGE_NAMES))


async def on_language_choice(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Keep the chosen language: it is sent with every turn from now on."""
    query = update.callback_query
    assert query is not None
    code = (query.data or "").partition(":")[2]
    if code not in SUPPORTED_LANGUAGES:
        await query.answer(text("choice_expired", language_of(update, context)))
        return
    state = state_of(context)
    state.pinned_language = code
    await query.answer()
    with suppress(BadRequest):  # e.g. the same language chosen twice: "message is not modified"
        await query.edit_message_text(escape(text("language_set", code)))


async def on_cancel(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Stop the current task (and leave a pending private prompt)."""
    await say_command(update, context, "cancel")


async def on_logout(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Log out of the record (the assistant ends the session of this chat)."""
    state_of(context).offers.clear()
    await say_command(update, context, "logout")


async def say_command(update: Update, context: ContextTypes.DEFAULT_TYPE, command: str) -> None:
    """Say a command's words to the assistant, in the conversation's language."""
    state = state_of(context)
    state.pending_kind = None
    state.expects_file = False
    language = language_of(update, context)
    assert update.effective_chat is not None
    await exchange(update, context, gateway_of(context).send_text(
        conversation_of(update, context), COMMAND_UTTERANCES[command][language], language),
        *typing(context, update.effective_chat.id))


async def on_unknown_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Point to /help (a `/...` text never reaches the assistant)."""
    await say(update, context, "unknown_command")


# --------------------------------------------------------------------------- messages

async def on_text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Send the text to the assistant, or to the protected endpoint when a private answer is pending."""
    message = update.effective_message
    assert message is not None and message.text is not None and update.effective_chat is not None
    state = state_of(context)
    if state.pending_kind and not is_escape_word(message.text):
        await answer_privately(update, context, message)
        return
    await exchange(update, context, gateway_of(context).send_text(
        conversation_of(update, context), message.text, turn_language(update, context, message.text)),
        *typing(context, update.effective_chat.id))


async def answer_privately(update: Update, context: ContextTypes.DEFAULT_TYPE, message: Message) -> None:
    """Send the secret to /protected, delete the user's message and confirm without echoing it."""
    state = state_of(context)
    kind = state.pending_kind
    state.pending_kind = None
    language = language_of(update, context)
    chat_id = message.chat_id

    async def delete_then_confirm() -> None:
        try:
            deleted = await message.delete()
        except TelegramError as exc:
            logger.warning("update %s: private answer not deleted: %s", update.update_id, type(exc).__name__)
            deleted = False
        await send_text(context, chat_id, text("received" if deleted else "received_not_deleted", language))

    reply = await exchange(update, context, gateway_of(context).send_protected(
        conversation_of(update, context), message.text or "", kind), delete_then_confirm())
    if reply is None or reply.status == 422:  # not stored: the next text is still the private answer
        state.pending_kind = kind


async def on_file(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Send a document or photo to the gateway's file endpoint (at most 20 MB, checked before getFile)."""
    message = update.effective_message
    assert message is not None and update.effective_chat is not None
    if message.document:
        attachment: Any = message.document
        name = message.document.file_name or "document"
        mime_type = message.document.mime_type
    else:
        attachment = max(message.photo, key=lambda size: (size.width * size.height, size.file_size or 0))
        name = f"photo-{message.message_id}.jpg"
        mime_type = "image/jpeg"
    if (attachment.file_size or 0) > TELEGRAM_DOWNLOAD_LIMIT_BYTES:
        await say(update, context, "file_too_large")
        return
    try:
        telegram_file = await attachment.get_file()
        if (telegram_file.file_size or 0) > TELEGRAM_DOWNLOAD_LIMIT_BYTES:
            await say(update, context, "file_too_large")
            return
        data = bytes(await telegram_file.download_as_bytearray())  # in memory: never written to disk
    except BadRequest as exc:
        logger.warning("update %s: file not fetched: %s", update.update_id, type(exc).__name__)
        await say(update, context, "file_too_large" if "too big" in str(exc).lower() else "file_failed")
        return
    except TelegramError as exc:
        logger.warning("update %s: file not fetched: %s", update.update_id, type(exc).__name__)
        await say(update, context, "file_failed")
        return
    await exchange(update, context, gateway_of(context).send_file(
        conversation_of(update, context), name, data, mime_type, language_of(update, context)),
        chat_action(context, update.effective_chat.id, ChatAction.UPLOAD_DOCUMENT))


async def on_edited(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Say that edits are not taken into account (the conversation has moved on)."""
    await say(update, context, "edited")


async def on_other(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Politely refuse stickers, voice notes, locations, contacts and the rest."""
    message = update.effective_message
    assert message is not None
    if message.sticker or message.animation or message.dice:
        key = "sticker"
    elif message.voice or message.audio or message.video or message.video_note:
        key = "voice"
    elif message.location or message.venue:
        key = "location"
    elif message.contact:
        key = "contact"
    else:
        key = "unsupported"
    await say(update, context, key)


# --------------------------------------------------------------------------- buttons

async def on_choice(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Send the payload of the chosen button, once it is known to be offered in this chat, on this message."""
    query = update.callback_query
    assert query is not None and update.effective_chat is not None
    state = state_of(context)
    taken = state.take(query.data or "", query.message.message_id if query.message else None)
    if taken is None:
        await query.answer(text("choice_expired", language_of(update, context)))
        return
    offer, index = taken
    await query.answer()

    async def show_choice() -> None:
        """Replace the keyboard by the choice, so it cannot be tapped again."""
        try:
            if offer.text is not None:
                await query.edit_message_text(f"{escape(offer.text)}\n\n→ *{escape(offer.titles[index])}*")
            else:
                await query.edit_message_reply_markup(reply_markup=None)
        except TelegramError as exc:
            logger.warning("update %s: keyboard not removed: %s", update.update_id, type(exc).__name__)

    await exchange(update, context, gateway_of(context).choose(
        conversation_of(update, context), offer.payloads[index], state.pinned_language),
        show_choice(), *typing(context, update.effective_chat.id))


async def on_stale_callback(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Answer callback data the bot did not make."""
    assert update.callback_query is not None
    await update.callback_query.answer(text("choice_expired", language_of(update, context)))


# --------------------------------------------------------------------------- groups and channels

async def leave(update: Update, context: ContextTypes.DEFAULT_TYPE, explain: bool) -> None:
    """Leave a group or channel, first saying why in a group."""
    chat = update.effective_chat
    assert chat is not None
    try:
        if explain:
            await say(update, context, "private_only")
        await context.bot.leave_chat(chat.id)
        logger.info("left a %s chat (update %s)", chat.type, update.update_id)
    except TelegramError as exc:
        logger.warning("update %s: could not leave a %s chat: %s", update.update_id, chat.type, type(exc).__name__)


async def on_group_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Refuse to work in a group (health data stays private) and leave it."""
    await leave(update, context, explain=True)


async def on_channel_post(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Leave a channel the bot was added to, without posting in it."""
    await leave(update, context, explain=False)


async def on_membership(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Leave groups and channels the bot is added to; forget a private chat that blocked the bot."""
    member = update.my_chat_member
    assert member is not None
    status = member.new_chat_member.status
    if member.chat.type == ChatType.PRIVATE:
        if status in (ChatMemberStatus.BANNED, ChatMemberStatus.LEFT) and context.chat_data is not None:
            context.chat_data.clear()
        return
    if status in (ChatMemberStatus.MEMBER, ChatMemberStatus.ADMINISTRATOR):
        await leave(update, context, explain=member.chat.type in (ChatType.GROUP, ChatType.SUPERGROUP))


# --------------------------------------------------------------------------- errors

async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Log the error with the update id, never the message's text; tell the user when there is one."""
    error = context.error
    if update is None and isinstance(error, NetworkError):
        logger.warning("network error while fetching updates: %s", type(error).__name__)
        return
    update_id = update.update_id if isinstance(update, Update) else None
    logger.error("error while handling update %s: %s", update_id, type(error).__name__, exc_info=error)
    if isinstance(update, Update) and update.effective_chat and update.effective_chat.type == ChatType.PRIVATE:
        with suppress(TelegramError):
            await say(update, context, "unavailable")


def register(application: Application) -> None:  # type: ignore[type-arg]
    """Add every handler and the error handler to the application."""
    private = filters.ChatType.PRIVATE
    new = filters.UpdateType.MESSAGE
    application.add_handlers([
        MessageHandler(filters.ChatType.GROUPS & new, on_group_message),
        MessageHandler(filters.UpdateType.CHANNEL_POST, on_channel_post),
        CommandHandler("start", on_start, filters=private & new),
        CommandHandler("help", on_help, filters=private & new),
        CommandHandler("language", on_language, filters=private & new),
        CommandHandler("cancel", on_cancel, filters=private & new),
        CommandHandler("logout", on_logout, filters=private & new),
        MessageHandler(private & new & filters.COMMAND, on_unknown_command),
        MessageHandler(private & new & filters.TEXT, on_text),
        MessageHandler(private & new & (filters.Document.ALL | filters.PHOTO), on_file),
        MessageHandler(private & filters.UpdateType.EDITED_MESSAGE, on_edited),
        MessageHandler(private & new, on_other),
        CallbackQueryHandler(on_language_choice, pattern=rf"^{LANGUAGE_PREFIX}:"),
        CallbackQueryHandler(on_choice, pattern=rf"^{CALLBACK_PREFIX}:"),
        CallbackQueryHandler(on_stale_callback),
        ChatMemberHandler(on_membership, ChatMemberHandler.MY_CHAT_MEMBER),
    ])
    application.add_error_handler(on_error)
