"""From the gateway's channel-neutral messages to Telegram: MarkdownV2-safe text, inline keyboards.

Buttons never carry the gateway's payload: each offered button gets a short opaque callback token
(`b:<nonce>:<index>`, at most 64 bytes) and the payloads stay in the chat's state on the server. A
callback resolves only in its own chat, on the message that offered it, once; the gateway then
checks the payload again against the conversation (409 when it is no longer offered).
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from telegram import InlineKeyboardButton, InlineKeyboardMarkup
from telegram.constants import MessageLimit
from telegram.helpers import escape_markdown

#: Telegram's limit of callback data, in bytes.
CALLBACK_DATA_MAX_BYTES = 64
CALLBACK_PREFIX = "b"
LANGUAGE_PREFIX = "lang"
#: Offers (messages with buttons) kept per chat; older keyboards answer "no longer available".
MAX_OFFERS = 8
#: Buttons put side by side when there are at most this many and all titles are short.
ROW_BUTTONS = 3
SHORT_TITLE = 14
MAX_TITLE = 120


def escape(text: str) -> str:
    """Escape text for MarkdownV2: whatever the assistant says is shown as typed, never parsed."""
    return escape_markdown(text, version=2)


def split_text(text: str, limit: int = MessageLimit.MAX_TEXT_LENGTH) -> list[str]:
    """Split text into chunks of at most `limit` characters, at paragraph, line or word boundaries."""
    chunks: list[str] = []
    rest = text.strip("\n")
    while len(rest) > limit:
        cut = max(rest.rfind("\n\n", 0, limit), rest.rfind("\n", 0, limit), rest.rfind(" ", 0, limit))
        if cut <= 0:
            cut = limit
        chunks.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest or not chunks:
        chunks.append(rest)
    return chunks


@dataclass
class Offer:
    """The buttons of one sent message.

    Attributes:
        payloads: the gateway payloads, by index.
        titles: the titles shown, by index.
        text: the message's text as sent (unescaped), to show the choice when the keyboard is removed;
            None for a caption.
        message_id: the Telegram message that carries the keyboard, once sent.
    """

    payloads: list[str]
    titles: list[str]
    text: str | None
    message_id: int | None = None


@dataclass
class ChatState:
    """What the bot remembers of one private chat (in memory: lost, harmlessly, on a restart).

    Attributes:
        language: the conversation's language as the gateway last said it.
        pinned_language: the language chosen with /language, sent with every turn.
        pending_kind: the protected input the assistant asked for; the next text goes to /protected.
        expects_file: the assistant asked for a file.
        handoff: status of the conversation's helpdesk ticket as the gateway last said it ("open",
            "claimed": an agent answers and the assistant is silent), None without a ticket.
        offers: open keyboards by nonce, newest last.
    """

    language: str | None = None
    pinned_language: str | None = None
    pending_kind: str | None = None
    expects_file: bool = False
    handoff: str | None = None
    offers: OrderedDict[str, Offer] = field(default_factory=OrderedDict)

    @property
    def held_by_agent(self) -> bool:
        """True while a helpdesk agent holds the conversation (the assistant does not answer)."""
        return self.handoff == "claimed"

    def offer(self, buttons: list[dict[str, Any]], text: str | None) -> tuple[str, Offer, InlineKeyboardMarkup]:
        """Remember the buttons of a message about to be sent; return its nonce, offer and keyboard."""
        nonce = secrets.token_urlsafe(6)
        offer = Offer(payloads=[str(b.get("payload", "")) for b in buttons],
                      titles=[str(b.get("title") or b.get("payload") or "?")[:MAX_TITLE] for b in buttons], text=text)
        self.offers[nonce] = offer
        while len(self.offers) > MAX_OFFERS:
            self.offers.popitem(last=False)
        return nonce, offer, keyboard(nonce, offer.titles)

    def take(self, data: str, message_id: int | None) -> tuple[Offer, int] | None:
        """Resolve callback data of this chat to (offer, index), once; None when unknown, stale or forged."""
        parts = data.split(":")
        if len(parts) != 3 or parts[0] != CALLBACK_PREFIX or not parts[2].isdigit():
            return None
        offer = self.offers.get(parts[1])
        index = int(parts[2])
        if offer is None or index >= len(offer.payloads) or offer.message_id != message_id:
            return None
        del self.offers[parts[1]]  # one choice per keyboard: a second tap does nothing
        return offer, index


def callback_data(nonce: str, index: int) -> str:
    """Return the callback data of button `index` of an offer.

    Raises:
        ValueError: over Telegram's 64-byte limit (cannot happen with the nonce's length).
    """
    data = f"{CALLBACK_PREFIX}:{nonce}:{index}"
    if len(data.encode()) > CALLBACK_DATA_MAX_BYTES:
        raise ValueError("callback data over 64 bytes")
    return data


def keyboard(nonce: str, titles: list[str]) -> InlineKeyboardMarkup:
    """Return the inline keyboard of an offer: short choices side by side, others one per row."""
    buttons = [InlineKeyboardButton(title, callback_data=callback_data(nonce, index))
               for index, title in enumerate(titles)]
    if len(buttons) <= ROW_BUTTONS and all(len(title) <= SHORT_TITLE for title in titles):
        return InlineKeyboardMarkup([buttons])
    return InlineKeyboardMarkup([[button] for button in buttons])


def language_keyboard(names: dict[str, str]) -> InlineKeyboardMarkup:
    """Return the keyboard of /language."""
    return InlineKeyboardMarkup([[InlineKeyboardButton(name, callback_data=f"{LANGUAGE_PREFIX}:{code}")
                                  for code, name in names.items()]])
