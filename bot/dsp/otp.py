"""One-time codes sent by e-mail or SMS (MyDSP quick guide: activation and first login).

Generation: ``pyotp.HOTP(pyotp.random_base32(), digits=6).at(0)``, i.e. RFC 4226 truncation of
an HMAC keyed with a fresh 160-bit random secret. The code is an out-of-band secret delivered
to the user (NIST SP 800-63B 5.1.3), not a code computed on the user's device, so TOTP's shared
clock would add nothing: the server enforces validity with ``expires_at`` instead.

Rules: 6 digits; valid ``DSP_OTP_TTL_SECONDS`` (at most 600 s); stored only as HMAC-SHA256 with
the pepper; single use; at most 5 wrong tries per code, then ``otp_exhausted`` (a new code is
needed); issuing a new code supersedes the older unused ones of the same purpose.
A replayed (already used) or superseded code answers ``otp_expired``.

Idempotency (issue 9): the services ask :func:`sent_since` under a lock on the account before they
issue, so that a step that runs again (same step retried, or repeated within
:data:`REPEAT_WINDOW_SECONDS`) sends no second code while the first can still be used.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import pyotp
from sqlalchemy import func, select, update

from bot.dsp import clock
from bot.dsp.errors import CodeRejected
from bot.dsp.orm import Account, OneTimeCode
from bot.dsp.security import keyed_hash, same_hash
from bot.dsp.settings import get_settings

if TYPE_CHECKING:
    from bot.dsp.uow import UnitOfWork

MAX_ATTEMPTS = 5
#: At most this many codes are sent to one account per hour, whatever the purpose, so that
#: nobody can flood a holder's phone or mailbox by asking again and again.
MAX_CODES_PER_HOUR = 8
PURPOSES = ("activation", "login")
#: A step that sent a code and is repeated less than this many seconds later sends none: the code
#: just sent is still usable (the conversation is told where it went).
REPEAT_WINDOW_SECONDS = 60


def _hash(account_id: int, purpose: str, code: str) -> str:
    return keyed_hash(f"otp:{purpose}:{account_id}", code)


def issue(uow: UnitOfWork, account: Account, purpose: str, conversation_id: str) -> str:
    """Create a new one-time code (not committed) and return it in clear, to be sent.

    Args:
        uow: Unit of work.
        account: The account it is for.
        purpose: ``activation`` or ``login``.
        conversation_id: The conversation that must present it.

    Returns:
        The 6-digit code.

    Raises:
        CodeRejected: ``otp_send_limit`` when MAX_CODES_PER_HOUR codes were sent in the last hour.
    """
    if purpose not in PURPOSES:
        raise ValueError("unknown purpose")
    now = clock.now()
    sent = uow.session.scalar(
        select(func.count(OneTimeCode.id)).where(
            OneTimeCode.account_id == account.id, OneTimeCode.created_at > now - timedelta(hours=1)
        )
    )
    if (sent or 0) >= MAX_CODES_PER_HOUR:
        raise CodeRejected("otp_send_limit")
    uow.session.execute(
        update(OneTimeCode)
        .where(
            OneTimeCode.account_id == account.id,
            OneTimeCode.purpose == purpose,
            OneTimeCode.used_at.is_(None),
            OneTimeCode.superseded_at.is_(None),
        )
        .values(superseded_at=now)
    )
    code = pyotp.HOTP(pyotp.random_base32(), digits=6).at(0)
    uow.session.add(
        OneTimeCode(
            account_id=account.id,
            purpose=purpose,
            code_hash=_hash(account.id, purpose, code),
            conversation_id=conversation_id,
            created_at=now,
            expires_at=now + timedelta(seconds=get_settings().otp_ttl_seconds),
        )
    )
    return code


def latest(uow: UnitOfWork, account: Account, purpose: str, conversation_id: str) -> OneTimeCode | None:
    """Return the newest code of that purpose issued to that conversation, if any (freshly read)."""
    return uow.session.scalars(
        select(OneTimeCode)
        .where(
            OneTimeCode.account_id == account.id,
            OneTimeCode.purpose == purpose,
            OneTimeCode.conversation_id == conversation_id,
        )
        .order_by(OneTimeCode.id.desc())
        .limit(1)
        .execution_options(populate_existing=True)
    ).first()


def usable(row: OneTimeCode, now: datetime | None = None) -> bool:
    """Tell whether a code can still be typed: not used, superseded, expired or exhausted."""
    now = now or clock.now()
    return (
        row.used_at is None and row.superseded_at is None and row.expires_at > now and row.attempts < MAX_ATTEMPTS
    )


def sent_since(
    uow: UnitOfWork, account: Account, purpose: str, conversation_id: str, since: datetime
) -> OneTimeCode | None:
    """Return the newest code of this purpose sent to this conversation at or after ``since``, if usable.

    Call it under :func:`bot.dsp.idempotency.serialize` on the account, then issue only when it
    returns None: two concurrent calls then send one code.

    Args:
        uow: Unit of work.
        account: The account.
        purpose: ``activation`` or ``login``.
        conversation_id: The conversation.
        since: Naive UTC time (e.g. when the step's input was given, or the start of the window).

    Returns:
        The code's row, or None when none was sent since then or it can no longer be used.
    """
    row = latest(uow, account, purpose, conversation_id)
    if row is None or row.created_at < since or not usable(row):
        return None
    return row


def matches(account: Account, row: OneTimeCode, code: str) -> bool:
    """Tell whether ``code`` (as typed, spaces ignored) is the code of ``row`` (constant-time compare)."""
    typed = "".join((code or "").split())
    return typed.isascii() and typed.isdigit() and same_hash(row.code_hash, _hash(account.id, row.purpose, typed))


def verify(uow: UnitOfWork, account: Account, purpose: str, conversation_id: str, code: str) -> None:
    """Check a code typed by the user; mark it used on success (not committed).

    Args:
        uow: Unit of work.
        account: The account.
        purpose: ``activation`` or ``login``.
        conversation_id: The conversation presenting it (must be the one it was issued to).
        code: The code as typed (spaces ignored).

    Raises:
        CodeRejected: ``otp_expired`` (none issued to this conversation, expired, superseded or
            already used), ``otp_exhausted`` (5 wrong tries on this code), ``otp_wrong``
            {tries_left}. The caller must commit before propagating, to keep the try count.
    """
    row = latest(uow, account, purpose, conversation_id)
    now = clock.now()
    if row is None or row.used_at is not None or row.superseded_at is not None or row.expires_at <= now:
        raise CodeRejected("otp_expired")
    if row.attempts >= MAX_ATTEMPTS:
        raise CodeRejected("otp_exhausted")
    if matches(account, row, code):
        # Single use even under parallel requests: only the request that flips used_at wins.
        claimed = uow.session.execute(
            update(OneTimeCode).where(OneTimeCode.id == row.id, OneTimeCode.used_at.is_(None)).values(used_at=now)
        )
        if claimed.rowcount != 1:
            raise CodeRejected("otp_expired")
        return
    row.attempts += 1
    if row.attempts >= MAX_ATTEMPTS:
        raise CodeRejected("otp_exhausted")
    raise CodeRejected("otp_wrong", tries_left=MAX_ATTEMPTS - row.attempts)
