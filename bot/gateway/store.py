"""Per-conversation state of the gateway, kept in the database (never in one process's memory).

What the gateway remembers of a conversation: its language, the protected input it waits for,
the button payloads it offered (only those are accepted back), and for voice calls what the voice
endpoint needs between turns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, MetaData, String, Text, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bot.dsp.db import NAMING_CONVENTION, get_engine, get_sessionmaker

#: How many offered payloads are remembered per conversation (newest kept).
MAX_OFFERED = 60


class GatewayBase(DeclarativeBase):
    """Declarative base of the gateway's own tables (same database as the DSP; migrations: bot/schema.py)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ConversationRow(GatewayBase):
    """One conversation as the gateway sees it."""

    __tablename__ = "gateway_conversations"

    conversation_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    language: Mapped[str | None] = mapped_column(String(8))
    pending_kind: Mapped[str | None] = mapped_column(String(32))
    offered_json: Mapped[str] = mapped_column(Text, default="[]")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass
class ConversationState:
    """A conversation's gateway state.

    Attributes:
        conversation_id: the client's id (also Rasa's sender id).
        language: "fr", "de", "en" or None before the first turn.
        pending_kind: kind of the protected input asked last, or None.
        offered: payloads offered in this conversation, oldest first.
        last_choices: payloads of the latest reply that offered choices, in their order (a typed
            "2" chooses the second one).
        voice: what the voice endpoint remembers between turns (``bot.gateway.voice``): the last
            reply spoken (``said``: {"text", "ssml"}), the options' labels (``options``), the first
            option read (``page``) and the consecutive silences (``silences``). Empty for other clients.
        stored: the state as last read from or written to the database (`snapshot`), None for a
            new conversation; `save` writes only when the state differs from it.
    """

    conversation_id: str
    language: str | None = None
    pending_kind: str | None = None
    offered: list[str] = field(default_factory=list)
    last_choices: list[str] = field(default_factory=list)
    voice: dict[str, Any] = field(default_factory=dict)
    stored: str | None = field(default=None, repr=False, compare=False)

    def snapshot(self) -> str:
        """Return the stored fields as one JSON string (for `save`'s comparison)."""
        return json.dumps([self.language, self.pending_kind, self.offered, self.last_choices, self.voice],
                          sort_keys=True)

    def offer(self, payloads: list[str]) -> None:
        """Remember newly offered payloads (bounded to MAX_OFFERED, newest kept)."""
        for payload in payloads:
            if payload in self.offered:
                self.offered.remove(payload)
            self.offered.append(payload)
        del self.offered[:-MAX_OFFERED]


def create_tables() -> None:
    """Make sure the gateway's tables exist: the engine brings the database to the newest migration.

    The tables are in the Alembic migrations (``bot/migrations``, :mod:`bot.schema`), never created
    outside them, so that a later revision finds the schema it expects.
    """
    get_engine()


def load(conversation_id: str) -> ConversationState:
    """Return the stored state of a conversation, or a fresh one (blocking: call in a thread)."""
    with get_sessionmaker()() as session:
        row = session.scalars(
            select(ConversationRow).where(ConversationRow.conversation_id == conversation_id)
        ).first()
        if row is None:
            return ConversationState(conversation_id)
        stored = json.loads(row.offered_json)
        if isinstance(stored, list):  # written before `last_choices` existed
            stored = {"offered": stored, "last": []}
        state = ConversationState(conversation_id, row.language, row.pending_kind, stored["offered"], stored["last"],
                                  stored.get("voice") or {})  # rows written before voice have none
        state.stored = state.snapshot()
        return state


def save(state: ConversationState) -> None:
    """Store a conversation's state when it changed since it was loaded or saved (blocking: call in a thread).

    A turn that changes nothing (no new choices, no pending input) costs no write and no commit;
    ``updated_at`` is the time of the last change.
    """
    snapshot = state.snapshot()
    if snapshot == state.stored:
        return
    with get_sessionmaker().begin() as session:
        row = session.get(ConversationRow, state.conversation_id)
        if row is None:
            row = ConversationRow(conversation_id=state.conversation_id)
            session.add(row)
        row.language = state.language
        row.pending_kind = state.pending_kind
        stored: dict[str, Any] = {"offered": state.offered, "last": state.last_choices}
        if state.voice:
            stored["voice"] = state.voice
        row.offered_json = json.dumps(stored)
        row.updated_at = datetime.now(UTC)
    state.stored = snapshot
