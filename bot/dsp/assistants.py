"""Designated assistants: acting on another holder's record (quick guide p.28).

"Consulter le DSP d'une tierce personne en tant qu'assistant": a holder designates an assistant
on the eSanté portal (here: the ``dsp designate-assistant`` admin command); the assistant sees
in the app whom they assist, picks the person, confirms, and then uses every feature on that
person's record until they switch back.

Rules:

* a designation is in force until it is revoked; :func:`designation_in_force` is checked by
  :func:`bot.dsp.records.record_context` at *every* request of a switched session, so a
  revocation is refused on the assistant's next request (``assistant_revoked``) and the session
  falls back to the assistant's own record;
* the switch lives on the login session (``LoginSession.acting_for_patient_id``): it ends with
  the session;
* every switch is audited with both ids (actor the assistant, patient the holder,
  ``on_behalf_of``); refusals too. Names are returned for the gateway's views only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select

from bot.dsp import audit, clock, idempotency
from bot.dsp.accounts import _live_session
from bot.dsp.errors import AccessDenied, AuthError
from bot.dsp.matricule import normalize_matricule
from bot.dsp.orm import AssistantDesignation, LoginSession, Patient
from bot.dsp.records import RecordContext, audit_record, commit_and_raise, record_context

if TYPE_CHECKING:
    from bot.dsp.uow import UnitOfWork


@dataclass(frozen=True)
class AssistedPerson:
    """A holder the logged-in user may act for.

    Attributes:
        patient_id: Internal id of the holder.
        display_name: Given and family name, for the gateway's views only (never sent to Rasa).
    """

    patient_id: int
    display_name: str


_fail = commit_and_raise  # shared with the other record services (bot/dsp/records.py)


def _display_name(patient: Patient) -> str:
    return f"{patient.given_name} {patient.family_name}".strip()


def _in_force(uow: UnitOfWork, holder_patient_id: int, assistant_patient_id: int) -> AssistantDesignation | None:
    return uow.session.scalars(
        select(AssistantDesignation)
        .where(
            AssistantDesignation.holder_patient_id == holder_patient_id,
            AssistantDesignation.assistant_patient_id == assistant_patient_id,
            AssistantDesignation.revoked_at.is_(None),
        )
        .order_by(AssistantDesignation.id)
        .execution_options(populate_existing=True)
    ).first()


def _user_session(uow: UnitOfWork, conversation_id: str) -> LoginSession:
    """Return the live session of the logged-in user (whatever record they act on).

    Raises:
        AuthError: ``not_logged_in``, ``terms_pending``.
    """
    session = _live_session(uow, conversation_id)
    if session is None:
        raise AuthError("not_logged_in")
    if session.pending_terms:
        uow.commit()
        raise AuthError("terms_pending")
    return session


def _own_context(conversation_id: str, session: LoginSession) -> RecordContext:
    return RecordContext(conversation_id, session.patient_id, session.patient_id)


def _patient_by_matricule(uow: UnitOfWork, matricule: str) -> Patient:
    """Return the patient of a matricule.

    Raises:
        MatriculeInvalid: ``matricule_*``.
        LookupError: No patient has this matricule.
    """
    value = normalize_matricule(matricule)
    patient = uow.session.scalars(select(Patient).where(Patient.matricule == value)).first()
    if patient is None:
        raise LookupError("no patient with this matricule")
    return patient


# --------------------------------------------------------------------------- administration


def designate_assistant(
    uow: UnitOfWork, *, holder_matricule: str, assistant_matricule: str, actor: str = "cli"
) -> bool:
    """Designate a patient as assistant of a holder (done on the eSanté portal; here by the admin).

    Idempotent: a designation already in force is kept, also when two calls run at once (a lock on
    the pair is taken before the check). Audited ``assistant.designate`` with the holder as patient
    and ``patient:<assistant id>`` as object (outcome ``unchanged`` for the second); committed.

    Args:
        uow: Unit of work.
        holder_matricule: Matricule of the holder (titulaire).
        assistant_matricule: Matricule of the assistant (any patient; they use it once activated).
        actor: Audit actor (``cli`` for the admin command).

    Returns:
        True if a designation was created, False if one was already in force.

    Raises:
        MatriculeInvalid: ``matricule_*``.
        LookupError: A matricule belongs to no patient.
        ValueError: Holder and assistant are the same person.
    """
    holder = _patient_by_matricule(uow, holder_matricule)
    assistant = _patient_by_matricule(uow, assistant_matricule)
    if holder.id == assistant.id:
        raise ValueError("a holder cannot be their own assistant")
    idempotency.serialize(uow, f"designation:{holder.id}:{assistant.id}")
    created = _in_force(uow, holder.id, assistant.id) is None
    if created:
        uow.session.add(
            AssistantDesignation(
                holder_patient_id=holder.id, assistant_patient_id=assistant.id, created_at=clock.now()
            )
        )
    audit.record(
        uow,
        actor=actor,
        action="assistant.designate",
        outcome="ok" if created else "unchanged",
        patient_id=holder.id,
        object_ref=f"patient:{assistant.id}",
    )
    uow.commit()
    return created


def revoke_assistant(uow: UnitOfWork, *, holder_matricule: str, assistant_matricule: str, actor: str = "cli") -> bool:
    """Revoke a designation; the assistant's next request on that record is refused.

    A session switched to the holder is left as it is, so that its next request answers
    ``assistant_revoked`` (and falls back to the assistant's own record) instead of silently
    acting on another record. Audited ``assistant.revoke``; committed.

    Returns:
        True if a designation in force was revoked, False if there was none.

    Raises:
        MatriculeInvalid: ``matricule_*``.
        LookupError: A matricule belongs to no patient.
    """
    holder = _patient_by_matricule(uow, holder_matricule)
    assistant = _patient_by_matricule(uow, assistant_matricule)
    idempotency.serialize(uow, f"designation:{holder.id}:{assistant.id}")
    now = clock.now()
    rows = list(
        uow.session.scalars(
            select(AssistantDesignation).where(
                AssistantDesignation.holder_patient_id == holder.id,
                AssistantDesignation.assistant_patient_id == assistant.id,
                AssistantDesignation.revoked_at.is_(None),
            )
            .execution_options(populate_existing=True)
        )
    )
    for row in rows:
        row.revoked_at = now
    audit.record(
        uow,
        actor=actor,
        action="assistant.revoke",
        outcome="ok" if rows else "not_designated",
        patient_id=holder.id,
        object_ref=f"patient:{assistant.id}",
    )
    uow.commit()
    return bool(rows)


def designation_in_force(uow: UnitOfWork, holder_patient_id: int, assistant_patient_id: int) -> bool:
    """Tell whether a designation of this assistant by this holder is in force now.

    Called by :func:`bot.dsp.records.record_context` at every request of a switched session.
    """
    return _in_force(uow, holder_patient_id, assistant_patient_id) is not None


# --------------------------------------------------------------------------- the assistant's side


def list_assisted(uow: UnitOfWork, conversation_id: str) -> list[AssistedPerson]:
    """List the holders who designated the logged-in user, sorted by name ("Documents" tab).

    Independent of a current switch: always the logged-in user's own designations in force.
    Audited ``assistant.list`` on the user's own record.

    Raises:
        AuthError: ``not_logged_in``, ``terms_pending``.
    """
    session = _user_session(uow, conversation_id)
    patients = uow.session.scalars(
        select(Patient)
        .join(AssistantDesignation, AssistantDesignation.holder_patient_id == Patient.id)
        .where(
            AssistantDesignation.assistant_patient_id == session.patient_id,
            AssistantDesignation.revoked_at.is_(None),
        )
        .distinct()
    ).all()
    people = sorted(
        (AssistedPerson(p.id, _display_name(p)) for p in patients),
        key=lambda person: (person.display_name.casefold(), person.patient_id),
    )
    audit_record(uow, _own_context(conversation_id, session), "assistant.list", "ok", count=len(people))
    uow.commit()
    return people


def person_name(uow: UnitOfWork, conversation_id: str, holder_patient_id: int) -> str:
    """Return the name of a holder the logged-in user assists, for the gateway's views.

    The user's own id is answered too (their own name). Not audited on success (the listing or
    switch that produced the id was); a refusal is.

    Raises:
        AuthError: ``not_logged_in``, ``terms_pending``.
        AccessDenied: ``not_designated`` (no designation in force; unknown ids alike).
    """
    session = _user_session(uow, conversation_id)
    if holder_patient_id != session.patient_id and not designation_in_force(
        uow, holder_patient_id, session.patient_id
    ):
        context = _own_context(conversation_id, session)
        audit_record(uow, context, "assistant.name", "not_designated", f"patient:{holder_patient_id}")
        _fail(uow, AccessDenied("not_designated"))
    uow.commit()
    patient = uow.session.get(Patient, holder_patient_id)
    if patient is None:  # pragma: no cover - foreign keys guarantee it
        raise AccessDenied("not_designated")
    return _display_name(patient)


def act_for(uow: UnitOfWork, conversation_id: str, holder_patient_id: int) -> AssistedPerson:
    """Switch the conversation's session to a holder's record ("confirmez l'action").

    Every later service of this session acts on the holder's record, as long as the designation
    stays in force. A switch to another holder replaces the current one; a switch to the holder
    already acted for (a retried request) changes nothing. Audited ``assistant.switch`` with both
    ids (actor the assistant, patient the holder, ``on_behalf_of``), outcome ``ok`` or
    ``unchanged``; a refusal is audited on the user's own record with object ``patient:<id asked>``.

    Raises:
        AuthError: ``not_logged_in``, ``terms_pending``.
        AccessDenied: ``not_designated`` (no designation in force, unknown id or the user's own
            id; the session keeps acting on the record it acted on).
    """
    action = "assistant.switch"
    session = _user_session(uow, conversation_id)
    holder = uow.session.get(Patient, holder_patient_id)
    if (
        holder is None
        or holder.id == session.patient_id
        or not designation_in_force(uow, holder.id, session.patient_id)
    ):
        audit_record(
            uow, _own_context(conversation_id, session), action, "not_designated", f"patient:{holder_patient_id}"
        )
        _fail(uow, AccessDenied("not_designated"))
    outcome = "unchanged" if session.acting_for_patient_id == holder.id else "ok"
    session.acting_for_patient_id = holder.id
    audit_record(uow, RecordContext(conversation_id, session.patient_id, holder.id), action, outcome)
    uow.commit()
    return AssistedPerson(holder.id, _display_name(holder))


def act_for_self(uow: UnitOfWork, conversation_id: str) -> bool:
    """Switch back to the user's own record.

    Also ends a switch whose designation was revoked meanwhile. Audited
    ``assistant.switch_back`` with the holder left (only when a switch ended).

    Returns:
        True if a switch ended, False if the session already acted on the user's own record.

    Raises:
        AuthError: ``not_logged_in``, ``terms_pending``.
    """
    session = _user_session(uow, conversation_id)
    holder_id = session.acting_for_patient_id
    if holder_id is None or holder_id == session.patient_id:
        session.acting_for_patient_id = None
        uow.commit()
        return False
    session.acting_for_patient_id = None
    audit_record(uow, RecordContext(conversation_id, session.patient_id, holder_id), "assistant.switch_back", "ok")
    uow.commit()
    return True


def acting_for(uow: UnitOfWork, conversation_id: str) -> AssistedPerson | None:
    """Return the holder the session acts for, or None on the user's own record.

    Like every record request, a revoked designation ends the switch and is refused.

    Raises:
        AuthError: ``not_logged_in``, ``terms_pending``.
        AccessDenied: ``assistant_revoked``.
    """
    context = record_context(uow, conversation_id, "assistant.current")
    uow.commit()
    if not context.as_assistant:
        return None
    holder = uow.session.get(Patient, context.holder_patient_id)
    if holder is None:  # pragma: no cover - foreign keys guarantee it
        return None
    return AssistedPerson(holder.id, _display_name(holder))
