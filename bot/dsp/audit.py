"""Append-only audit trail (architecture invariant 3)."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from bot.dsp.orm import AuditEvent

if TYPE_CHECKING:
    from bot.dsp.uow import UnitOfWork

log = logging.getLogger(__name__)


def record(
    uow: UnitOfWork,
    *,
    actor: str,
    action: str,
    outcome: str,
    patient_id: int | None = None,
    on_behalf_of: str | None = None,
    actor_patient_id: int | None = None,
    object_ref: str | None = None,
    detail: str | dict[str, Any] | None = None,
) -> AuditEvent:
    """Add an audit row to the unit of work (committed with it).

    Args:
        uow: Unit of work.
        actor: Who acts: a pseudonymous conversation tag (``conv:...``), ``system``, ``cli``...
            Never a matricule, name or address.
        action: What, e.g. ``login.password``.
        outcome: ``ok`` or a refusal reason (usually the error code).
        patient_id: Internal integer id of the patient concerned (never the matricule).
        on_behalf_of: Set when an assistant acts for someone else: ``patient:<holder id>``.
        actor_patient_id: Internal id of the logged-in person who acts.
        object_ref: What was read or written, ``<kind>:<internal id>`` (e.g. ``document:12``).
        detail: Extra context without secrets (a dict is stored as JSON).

    Returns:
        The new (pending) audit row.
    """
    text = json.dumps(detail, sort_keys=True, default=str) if isinstance(detail, dict) else detail
    event = AuditEvent(
        actor=actor,
        action=action,
        outcome=outcome,
        patient_id=patient_id,
        on_behalf_of=on_behalf_of,
        actor_patient_id=actor_patient_id,
        object=object_ref,
        detail=text,
    )
    uow.session.add(event)
    log.info("audit action=%s outcome=%s patient_id=%s object=%s", action, outcome, patient_id, object_ref)
    return event
