"""Who acts on which record: the record context of a logged-in conversation.

Every feature that reads or writes a record (documents, access of professionals, imaging) starts
with :func:`record_context`, which enforces the rules shared by all of them:

* a live login session on this conversation (idle sessions end after ``DSP_SESSION_IDLE_SECONDS``,
  30 minutes by default);
* the terms of use accepted (quick guide, "Première connexion");
* when the user acts as a designated assistant (quick guide, "Consulter le DSP d'une tierce
  personne en tant qu'assistant"), a designation that is still in force *at this request*: a
  revoked designation ends the switch and the request is refused.

Every outcome, refusals included, is audited with :func:`audit_record` (actor, on behalf of,
patient, action, object, time, outcome — architecture invariant 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

from bot.dsp import audit
from bot.dsp.accounts import _live_session
from bot.dsp.errors import AccessDenied, AuthError, DspError
from bot.dsp.security import conversation_tag
from bot.dsp.uow import UnitOfWork


@dataclass(frozen=True)
class RecordContext:
    """The record a request acts on, and who acts.

    Attributes:
        conversation_id: The gateway conversation (the chat "device").
        user_patient_id: Internal id of the logged-in person.
        holder_patient_id: Internal id of the holder (titulaire) whose record is acted on; equals
            ``user_patient_id`` unless the user acts as that holder's assistant.
    """

    conversation_id: str
    user_patient_id: int
    holder_patient_id: int

    @property
    def as_assistant(self) -> bool:
        """True while the user acts on someone else's record as their assistant."""
        return self.user_patient_id != self.holder_patient_id


def audit_record(
    uow: UnitOfWork,
    context: RecordContext,
    action: str,
    outcome: str,
    object_ref: str | None = None,
    **detail: int | str,
) -> None:
    """Add the audit row of one read or write of a record (committed with the unit of work).

    Args:
        uow: Unit of work.
        context: Who acts on which record.
        action: e.g. ``document.read``, ``access.grant``.
        outcome: ``ok`` or the refusal code.
        object_ref: ``<kind>:<internal id>``, e.g. ``document:12`` or ``professional:7``.
        **detail: Extra context without personal values.
    """
    audit.record(
        uow,
        actor=conversation_tag(context.conversation_id),
        actor_patient_id=context.user_patient_id,
        on_behalf_of=f"patient:{context.holder_patient_id}" if context.as_assistant else None,
        patient_id=context.holder_patient_id,
        action=action,
        outcome=outcome,
        object_ref=object_ref,
        detail=dict(detail) or None,
    )


def record_context(uow: UnitOfWork, conversation_id: str, action: str = "record.open") -> RecordContext:
    """Return the record context of a conversation, refreshing the session's idle timer.

    Args:
        uow: Unit of work.
        conversation_id: The gateway conversation.
        action: The audited action a refusal is recorded under.

    Returns:
        The context (user and holder).

    Raises:
        AuthError: ``not_logged_in`` (no session, or it expired); ``terms_pending`` (the terms
            of use are not accepted yet).
        AccessDenied: ``assistant_revoked``: the user was acting for a holder whose designation
            has since been revoked; the switch ends (the next request acts on the user's own
            record).
    """
    from bot.dsp.assistants import designation_in_force  # late: assistants imports this module

    session = _live_session(uow, conversation_id)
    if session is None:
        raise AuthError("not_logged_in")
    if session.pending_terms:
        uow.commit()
        raise AuthError("terms_pending")
    holder = session.acting_for_patient_id or session.patient_id
    context = RecordContext(conversation_id, session.patient_id, holder)
    if context.as_assistant and not designation_in_force(uow, holder, session.patient_id):
        session.acting_for_patient_id = None
        audit_record(uow, context, action, "assistant_revoked")
        uow.commit()
        raise AccessDenied("assistant_revoked")
    return context


def commit_and_raise(uow: UnitOfWork, error: DspError) -> NoReturn:
    """Commit the audit rows (and other bookkeeping) of a refusal, then raise it."""
    uow.commit()
    raise error


def audited_context(uow: UnitOfWork, conversation_id: str, action: str) -> RecordContext:
    """Return :func:`record_context`; a refusal without a usable session is audited too.

    Raises:
        AuthError: ``not_logged_in``, ``terms_pending`` (audited under `action` with the conversation tag).
        AccessDenied: ``assistant_revoked``.
    """
    try:
        return record_context(uow, conversation_id, action)
    except AuthError as error:
        audit.record(uow, actor=conversation_tag(conversation_id), action=action, outcome=error.code)
        commit_and_raise(uow, error)
