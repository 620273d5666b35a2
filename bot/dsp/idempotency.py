"""Idempotent side effects: a step that runs again has its effect once (issue 9).

A step can run twice: the action server is killed after the domain committed but before Rasa got
the answer and the gateway sends the turn again to another Rasa (same ``turn_id``, same protected
references); the user repeats the step; two gateway or action-server processes run the same step at
once; a double click. The services make the *effect* happen once with three tools:

* :func:`serialize`: a lock held until the unit of work ends, across processes, taken before the
  service reads what decides the effect ("was a code already sent?", "is there a grant?"), so that
  of two concurrent identical calls the second sees the first's committed effect. PostgreSQL:
  ``pg_advisory_xact_lock``; SQLite: a write statement, which takes the database's write lock
  (with pysqlite's default transaction handling, a unit of work's transaction begins at its first
  write, and a write that waits for the lock then reads the latest committed data). No Python lock:
  it must hold across processes.
* the step's own inputs: a protected input (vault reference) or a staged upload is given once per
  step, so an effect made *after* that input was given is this step's (:func:`bot.dsp.vault.given_at`);
  a retry carries the same references.
* the request key: the caller's identity of the request (the gateway's ``turn_id``, kept by Rasa in
  the user message's metadata), recorded pseudonymously in the effect's audit row
  (:func:`request_tag`) and looked up there (:func:`done_by_request`) when the step has no input of
  its own (e.g. "send me a new code").

The rules per effect are in the services (one-time codes and mails: :mod:`bot.dsp.accounts`; access:
:mod:`bot.dsp.access`; documents: :mod:`bot.dsp.documents`; designations: :mod:`bot.dsp.assistants`;
tickets: :mod:`bot.dsp.helpdesk`).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from sqlalchemy import select, text

from bot.dsp.orm import AuditEvent
from bot.dsp.security import keyed_hash

if TYPE_CHECKING:
    from bot.dsp.uow import UnitOfWork

#: Outcomes of an audit row that record an effect done (first time, or a repeat recognised as such).
DONE_OUTCOMES = ("ok", "already_sent", "already_done")


def _advisory_key(scope: str) -> int:
    """A signed 64-bit key for ``pg_advisory_xact_lock`` (a collision only serializes a little more)."""
    return int.from_bytes(hashlib.sha256(scope.encode("utf-8")).digest()[:8], "big", signed=True)


def serialize(uow: UnitOfWork, scope: str) -> None:
    """Hold a lock on ``scope`` until the unit of work commits or rolls back, across processes.

    Call it *before* reading what decides the effect; rows read earlier in the same session may be
    stale (re-read them with ``populate_existing``).

    Args:
        uow: Unit of work (its transaction holds the lock).
        scope: What is serialized, without personal values, e.g. ``account:12``, ``record:7``,
            ``ticket:conv:…`` (a conversation *tag*, never a raw id that could be personal).

    Raises:
        NotImplementedError: a database other than PostgreSQL or SQLite.
    """
    dialect = uow.session.get_bind().dialect.name
    if dialect == "postgresql":
        uow.session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _advisory_key(scope)})
    elif dialect == "sqlite":
        # Matches no row, but any UPDATE takes SQLite's single write lock (waiting up to busy_timeout).
        uow.session.execute(text("UPDATE accounts SET id = id WHERE 0 = 1"))
    else:  # pragma: no cover - only the two supported databases
        raise NotImplementedError(f"no cross-process lock for {dialect}")


def request_tag(conversation_id: str, request_key: str) -> str:
    """Return the pseudonymous tag of a request, safe for an audit row (16 hex characters).

    Args:
        conversation_id: The conversation the request belongs to (a key is unique only within it).
        request_key: The caller's request identity (the gateway's ``turn_id``), any string.
    """
    return keyed_hash("request", f"{conversation_id}\x00{request_key}")[:16]


def done_by_request(uow: UnitOfWork, *, action: str, patient_id: int | None, tag: str) -> AuditEvent | None:
    """Return the audit row of an effect this request already had, if any (call under :func:`serialize`).

    Args:
        uow: Unit of work.
        action: The audited action of the effect, e.g. ``login.resend_code``.
        patient_id: The patient of the effect (internal id).
        tag: :func:`request_tag` of the request.

    Returns:
        The newest matching row (outcome ``ok`` or a recognised repeat), or None. The caller decides
        whether that effect still stands (e.g. the code it sent has not expired).
    """
    needle = f'"request": "{tag}"'
    return uow.session.scalars(
        select(AuditEvent)
        .where(
            AuditEvent.patient_id == patient_id,
            AuditEvent.action == action,
            AuditEvent.outcome.in_(DONE_OUTCOMES),
            AuditEvent.detail.contains(needle, autoescape=True),
        )
        .order_by(AuditEvent.id.desc())
        .limit(1)
    ).first()
