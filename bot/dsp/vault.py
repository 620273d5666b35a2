"""Vault of protected inputs (architecture invariant 1).

The gateway stores a secret typed by the user and passes Rasa only the reference; the domain
services reveal it. Values are Fernet-encrypted at rest, bound to one conversation and expire
after ``DSP_VAULT_TTL_SECONDS``.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from cryptography.fernet import InvalidToken
from sqlalchemy import delete, select

from bot.dsp import clock
from bot.dsp.errors import VaultMiss
from bot.dsp.orm import VaultEntry
from bot.dsp.security import fernet
from bot.dsp.settings import get_settings

if TYPE_CHECKING:
    from bot.dsp.uow import UnitOfWork


def put(uow: UnitOfWork, conversation_id: str, kind: str, value: str) -> str:
    """Store a protected input and return its reference (committed).

    Args:
        uow: Unit of work.
        conversation_id: Conversation the value belongs to.
        kind: Protected-input kind (``matricule``, ``password``, ``otp``...).
        value: The secret value.

    Returns:
        ``"pi_"`` + 32 url-safe characters.
    """
    now = clock.now()
    uow.session.execute(delete(VaultEntry).where(VaultEntry.expires_at < now))
    ref = "pi_" + secrets.token_urlsafe(24)
    uow.session.add(
        VaultEntry(
            ref=ref,
            conversation_id=conversation_id,
            kind=kind,
            ciphertext=fernet().encrypt(value.encode("utf-8")),
            created_at=now,
            expires_at=now + timedelta(seconds=get_settings().vault_ttl_seconds),
        )
    )
    uow.commit()
    return ref


def _live_entry(uow: UnitOfWork, conversation_id: str, ref: str) -> VaultEntry:
    """Return the unexpired entry of `ref` stored by `conversation_id`.

    Raises:
        VaultMiss: ``input_expired`` if the ref is unknown, expired or from another conversation.
    """
    if not ref or not isinstance(ref, str):
        raise VaultMiss()
    entry = uow.session.scalars(select(VaultEntry).where(VaultEntry.ref == ref)).first()
    if entry is None or entry.conversation_id != conversation_id or entry.expires_at <= clock.now():
        raise VaultMiss()
    return entry


def reveal(uow: UnitOfWork, conversation_id: str, ref: str) -> tuple[str, str]:
    """Return ``(kind, value)`` of a stored protected input.

    Args:
        uow: Unit of work.
        conversation_id: The asking conversation; must be the one that stored it.
        ref: Reference returned by :func:`put`.

    Returns:
        The kind and the clear value.

    Raises:
        VaultMiss: ``input_expired`` if the ref is unknown, expired or from another conversation.
    """
    entry = _live_entry(uow, conversation_id, ref)
    try:
        value = fernet().decrypt(entry.ciphertext).decode("utf-8")
    except InvalidToken:
        raise VaultMiss() from None
    return entry.kind, value


def given_at(uow: UnitOfWork, conversation_id: str, ref: str) -> datetime:
    """Return when a protected input was given (stored), to tell a retried step from a new one.

    A step that runs again carries the same references; an effect made at or after its input
    was given is that step's own (see :mod:`bot.dsp.idempotency`).

    Args:
        uow: Unit of work.
        conversation_id: The asking conversation; must be the one that stored it.
        ref: Reference returned by :func:`put`.

    Returns:
        The time it was stored (naive UTC, the domain clock).

    Raises:
        VaultMiss: ``input_expired`` if the ref is unknown, expired or from another conversation.
    """
    entry = _live_entry(uow, conversation_id, ref)
    return entry.created_at


def discard(uow: UnitOfWork, conversation_id: str) -> None:
    """Delete every protected input of a conversation, and all expired ones (committed)."""
    uow.session.execute(
        delete(VaultEntry).where(
            (VaultEntry.conversation_id == conversation_id) | (VaultEntry.expires_at < clock.now())
        )
    )
    uow.commit()
