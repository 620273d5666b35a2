"""Replies kept for idempotent client retries (the `Idempotency-Key` header), in the database.

The first completed reply to a request that carried an `Idempotency-Key` is stored per
(conversation id, key); a retry with the same key gets that reply back without a new turn. Rows
are kept `KEEP_SECONDS` (24 h) and purged. Blocking functions: call them in a worker thread.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import DateTime, Index, String, Text, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from bot.dsp.db import get_sessionmaker
from bot.gateway.store import GatewayBase

#: How long a stored reply answers a retry, in seconds.
KEEP_SECONDS = 24 * 3600
#: Longest accepted key, in characters.
MAX_KEY_CHARS = 200
#: How often one process purges expired replies, in seconds.
PURGE_EVERY_S = 600.0

_purge_lock = threading.Lock()
_last_purge = 0.0


class ReplyRow(GatewayBase):
    """The reply given to one request with an `Idempotency-Key` (the response body as JSON)."""

    __tablename__ = "gateway_replies"
    __table_args__ = (Index("ix_gateway_replies_created_at", "created_at"),)

    conversation_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(MAX_KEY_CHARS), primary_key=True)
    reply_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def _now() -> datetime:
    return datetime.now(UTC)


def find(conversation_id: str, key: str, now: datetime | None = None) -> dict[str, Any] | None:
    """Return the stored reply body of (conversation_id, key) if younger than 24 h, else None."""
    cutoff = (now or _now()) - timedelta(seconds=KEEP_SECONDS)
    with get_sessionmaker()() as session:
        row = session.get(ReplyRow, (conversation_id, key))
        if row is None:
            return None
        created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)  # SQLite: naive
        if created < cutoff:
            return None
        body = json.loads(row.reply_json)
        return body if isinstance(body, dict) else None


def keep(conversation_id: str, key: str, body: dict[str, Any], now: datetime | None = None) -> None:
    """Store the reply body of (conversation_id, key); an older row for the same pair is replaced.

    Purges the expired rows at most every `PURGE_EVERY_S` seconds per process.
    """
    when = now or _now()
    maybe_purge(when)
    encoded = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    try:
        with get_sessionmaker().begin() as session:
            row = session.get(ReplyRow, (conversation_id, key))
            if row is None:
                session.add(ReplyRow(conversation_id=conversation_id, idempotency_key=key, reply_json=encoded,
                                     created_at=when))
            else:  # an expired row of a reused key
                row.reply_json, row.created_at = encoded, when
    except IntegrityError:  # stored meanwhile by another process (the conversation lock makes it unlikely)
        pass


def purge(now: datetime | None = None) -> int:
    """Delete the replies older than 24 h; return how many were deleted."""
    cutoff = (now or _now()) - timedelta(seconds=KEEP_SECONDS)
    with get_sessionmaker().begin() as session:
        result = session.execute(delete(ReplyRow).where(ReplyRow.created_at < cutoff))
        return int(getattr(result, "rowcount", 0) or 0)


def maybe_purge(now: datetime | None = None) -> None:
    """Purge expired replies unless this process did within the last `PURGE_EVERY_S` seconds."""
    global _last_purge
    with _purge_lock:
        if time.monotonic() - _last_purge < PURGE_EVERY_S and _last_purge:
            return
        _last_purge = time.monotonic()
    purge(now)


def count(conversation_id: str) -> int:
    """Return how many replies are stored for a conversation (tests, diagnostics)."""
    with get_sessionmaker()() as session:
        return len(list(session.scalars(select(ReplyRow.idempotency_key)
                                        .where(ReplyRow.conversation_id == conversation_id))))
