"""Access of health professionals to a record: search the directory, grant, block, unblock.

Steps follow the MyDSP quick guide: "Donner un accès à un professionnel de santé" (type at least
the first 3 letters of the name or the profession, pick the professional, "Ajouter un
intervenant", "Valider") and "Bloquer l'accès à un professionnel de santé" (name and specialty,
"Rechercher", pick, "Oui, Bloquer l'accès"; the block can be lifted at any time).

Rules:

* a holder's decision about a professional is one :class:`~bot.dsp.orm.AccessGrant` row, either
  ``granted`` or ``blocked``; no row means no access;
* a block wins: granting a blocked professional is refused (``professional_blocked``: unblock
  first), and blocking someone who had access removes the grant;
* unblocking removes the block and does *not* restore an earlier grant;
* a professional reads the record only with a grant and no block (:func:`check_access`);
* idempotent (issue 9): the same change twice, also concurrently (two processes, a retried
  request), leaves one row and one audit of the change; the other call answers ``changed=False``
  (audited ``ok`` with ``changed: 0``), never a unique-constraint error. Each change takes a lock on
  the record (:func:`bot.dsp.idempotency.serialize`) before it reads the current decision.

Every service acts on the record of :func:`bot.dsp.records.record_context` (the holder's, also
when a designated assistant acts for them) and audits its outcome with
:func:`bot.dsp.records.audit_record`, object ``professional:<id>``. Professionals' names come
from the public directory and may be shown in bot messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select

from bot.dsp import audit, clock, idempotency
from bot.dsp.errors import AccessDenied, SearchRefused
from bot.dsp.orm import AccessGrant, Professional, fold
from bot.dsp.records import RecordContext, audit_record, commit_and_raise, record_context

if TYPE_CHECKING:
    from bot.dsp.uow import UnitOfWork

#: Letters a search needs in total (quick guide: "au minimum les 3 premières lettres").
MIN_QUERY_LETTERS = 3
#: More matches than this ask the user to be more precise (a chat cannot show a long list).
MAX_MATCHES = 8

GRANTED = "granted"
BLOCKED = "blocked"
STATUSES = (GRANTED, BLOCKED)

#: Titles typed before a name ("Dr Müller"); they are not part of the directory entry.
_TITLES = frozenset({"dr", "docteur", "doctor", "doktor", "pr", "prof", "professeur", "professor"})
#: Professions whose members are addressed as "Dr".
_DOCTOR_PROFESSIONS = frozenset({"medecin", "dentiste", "medecin-dentiste"})
_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class ProfessionalInfo:
    """A professional of the public directory, with its status for the current record.

    Attributes:
        id: Internal id of the professional.
        display_name: "Dr Anne Müller" (doctors and dentists) or "Luc Wagner".
        profession: e.g. ``médecin``, ``kinésithérapeute``.
        specialty: e.g. ``cardiologie``, or None.
        city: Place of practice, or None.
        status: ``granted``, ``blocked`` or None (no decision) for the record acted on.
    """

    id: int
    display_name: str
    profession: str
    specialty: str | None
    city: str | None
    status: str | None

    @property
    def label(self) -> str:
        """One line for a choice or a list: ``"Dr Anne Müller — médecin, cardiologie (Luxembourg)"``."""
        what = ", ".join(part for part in (self.profession, self.specialty) if part)
        return f"{self.display_name} — {what}" + (f" ({self.city})" if self.city else "")


@dataclass(frozen=True)
class AccessChange:
    """Outcome of a grant, block or unblock.

    Attributes:
        professional: The professional, with the status after the change.
        changed: False when nothing had to change (already granted, already blocked, not blocked).
    """

    professional: ProfessionalInfo
    changed: bool


@dataclass(frozen=True)
class AccessOverview:
    """The professionals with a decision on the record, each list sorted by family name.

    Attributes:
        granted: Professionals with access.
        blocked: Professionals whose access is blocked.
    """

    granted: list[ProfessionalInfo]
    blocked: list[ProfessionalInfo]


# --------------------------------------------------------------------------- helpers


_fail = commit_and_raise  # shared with the other record services (bot/dsp/records.py)


def _words(text: str) -> list[str]:
    return _WORD.findall(fold(text))


def _display_name(pro: Professional) -> str:
    name = f"{pro.given_name} {pro.family_name}".strip()
    return f"Dr {name}" if fold(pro.profession) in _DOCTOR_PROFESSIONS else name


def _info(pro: Professional, status: str | None) -> ProfessionalInfo:
    return ProfessionalInfo(
        id=pro.id,
        display_name=_display_name(pro),
        profession=pro.profession,
        specialty=pro.specialty,
        city=pro.city,
        status=status,
    )


def _sort_key(pro: Professional) -> tuple[str, str, int]:
    return (fold(pro.family_name), fold(pro.given_name), pro.id)


def _searchable_words(pro: Professional) -> list[str]:
    """Words a query may start: names, profession and specialty (not the city)."""
    return _words(" ".join(filter(None, (pro.family_name, pro.given_name, pro.profession, pro.specialty))))


def _matches(pro: Professional, query_words: list[str]) -> bool:
    words = _searchable_words(pro)
    return all(any(word.startswith(part) for word in words) for part in query_words)


def _grant_row(uow: UnitOfWork, patient_id: int, professional_id: int) -> AccessGrant | None:
    return uow.session.scalars(
        select(AccessGrant)
        .where(AccessGrant.patient_id == patient_id, AccessGrant.professional_id == professional_id)
        .execution_options(populate_existing=True)
    ).first()


def _decision(uow: UnitOfWork, context: RecordContext, professional_id: int) -> AccessGrant | None:
    """The record's current decision about a professional, read under the record's lock (for a change)."""
    idempotency.serialize(uow, f"record:{context.holder_patient_id}")
    return _grant_row(uow, context.holder_patient_id, professional_id)


def _statuses(uow: UnitOfWork, patient_id: int) -> dict[int, str]:
    rows = uow.session.execute(
        select(AccessGrant.professional_id, AccessGrant.status).where(AccessGrant.patient_id == patient_id)
    )
    return {professional_id: status for professional_id, status in rows}


def _professional(uow: UnitOfWork, context: RecordContext, professional_id: int, action: str) -> Professional:
    """Return the professional, or audit and raise ``professional_unknown``."""
    pro = uow.session.get(Professional, professional_id)
    if pro is None:
        audit_record(uow, context, action, "professional_unknown", f"professional:{professional_id}")
        _fail(uow, AccessDenied("professional_unknown"))
    return pro


# --------------------------------------------------------------------------- directory


def search_professionals(
    uow: UnitOfWork, conversation_id: str, query: str, *, status: str | None = None
) -> list[ProfessionalInfo]:
    """Search the directory by the first letters of names, profession or specialty.

    The query and the directory are folded (accents, case, ``ß`` -> ``ss``: "muller" finds
    "Müller", "kine" finds "kinésithérapeute"); every word of the query must start a word of
    the family name, given name, profession or specialty, so that more words narrow the result
    ("muller cardio"). Titles such as "Dr" are ignored. Not audited (the directory is public).

    Args:
        uow: Unit of work.
        conversation_id: The gateway conversation.
        query: What the user typed, e.g. ``"Müller"``, ``"kiné Wagner"``.
        status: ``"blocked"`` (to pick one to unblock) or ``"granted"`` limits the search to the
            professionals with that status on the record; None searches the whole directory.

    Returns:
        At most :data:`MAX_MATCHES` professionals sorted by family name, each with its status for
        the record acted on.

    Raises:
        AuthError: ``not_logged_in``, ``terms_pending``.
        AccessDenied: ``assistant_revoked``.
        SearchRefused: ``search_too_short`` {min_letters} (fewer than 3 letters in total),
            ``search_no_match``, ``search_too_many`` {count, max}.
        ValueError: `status` is not None, ``granted`` or ``blocked`` (a programming error).
    """
    if status is not None and status not in STATUSES:
        raise ValueError(f"unknown access status {status!r}")
    context = record_context(uow, conversation_id, "access.search")
    words = [word for word in _words(query or "") if word not in _TITLES]
    if sum(ch.isalpha() for ch in "".join(words)) < MIN_QUERY_LETTERS:
        uow.commit()
        raise SearchRefused("search_too_short", min_letters=MIN_QUERY_LETTERS)
    statement = select(Professional)
    for word in words:  # coarse filter in SQL on the folded key; exact word-prefix rule below
        statement = statement.where(Professional.search_key.contains(word, autoescape=True))
    if status is not None:
        statement = statement.join(
            AccessGrant,
            (AccessGrant.professional_id == Professional.id)
            & (AccessGrant.patient_id == context.holder_patient_id)
            & (AccessGrant.status == status),
        )
    found = sorted((pro for pro in uow.session.scalars(statement) if _matches(pro, words)), key=_sort_key)
    uow.commit()  # the refreshed session idle time
    if not found:
        raise SearchRefused("search_no_match")
    if len(found) > MAX_MATCHES:
        raise SearchRefused("search_too_many", count=len(found), max=MAX_MATCHES)
    statuses = _statuses(uow, context.holder_patient_id)
    return [_info(pro, statuses.get(pro.id)) for pro in found]


def describe_professional(uow: UnitOfWork, conversation_id: str, professional_id: int) -> ProfessionalInfo:
    """Return one professional with its status for the record (for views and confirmations).

    Not audited on success (directory data and a status the user just chose from); an unknown id
    is audited as a refusal.

    Raises:
        AuthError: ``not_logged_in``, ``terms_pending``.
        AccessDenied: ``assistant_revoked``, ``professional_unknown``.
    """
    action = "access.describe"
    context = record_context(uow, conversation_id, action)
    pro = _professional(uow, context, professional_id, action)
    row = _grant_row(uow, context.holder_patient_id, pro.id)
    uow.commit()
    return _info(pro, row.status if row is not None else None)


# --------------------------------------------------------------------------- decisions


def _audit_change(uow: UnitOfWork, context: RecordContext, action: str, pro: Professional, changed: bool) -> None:
    audit_record(uow, context, action, "ok", f"professional:{pro.id}", changed=int(changed))


def grant_access(uow: UnitOfWork, conversation_id: str, professional_id: int) -> AccessChange:
    """Give a professional access to the record ("Ajouter un intervenant", "Valider").

    Raises:
        AuthError: ``not_logged_in``, ``terms_pending``.
        AccessDenied: ``assistant_revoked``, ``professional_unknown``, ``professional_blocked``
            (the access is blocked: the user must unblock it first; audited).

    Returns:
        The change; ``changed`` is False when the professional already had access.
    """
    action = "access.grant"
    context = record_context(uow, conversation_id, action)
    pro = _professional(uow, context, professional_id, action)
    row = _decision(uow, context, pro.id)
    if row is not None and row.status == BLOCKED:
        audit_record(uow, context, action, "professional_blocked", f"professional:{pro.id}")
        _fail(uow, AccessDenied("professional_blocked"))
    changed = row is None
    if row is None:
        uow.session.add(
            AccessGrant(
                patient_id=context.holder_patient_id,
                professional_id=pro.id,
                status=GRANTED,
                changed_at=clock.now(),
                changed_by_patient_id=context.user_patient_id,
            )
        )
    _audit_change(uow, context, action, pro, changed)
    uow.commit()
    return AccessChange(_info(pro, GRANTED), changed)


def block_access(uow: UnitOfWork, conversation_id: str, professional_id: int) -> AccessChange:
    """Block a professional's access ("Oui, Bloquer l'accès"); a grant is removed.

    Raises:
        AuthError: ``not_logged_in``, ``terms_pending``.
        AccessDenied: ``assistant_revoked``, ``professional_unknown``.

    Returns:
        The change; ``changed`` is False when the access was already blocked.
    """
    action = "access.block"
    context = record_context(uow, conversation_id, action)
    pro = _professional(uow, context, professional_id, action)
    row = _decision(uow, context, pro.id)
    changed = row is None or row.status != BLOCKED
    if row is None:
        row = AccessGrant(patient_id=context.holder_patient_id, professional_id=pro.id)
        uow.session.add(row)
    if changed:
        row.status = BLOCKED
        row.changed_at = clock.now()
        row.changed_by_patient_id = context.user_patient_id
    _audit_change(uow, context, action, pro, changed)
    uow.commit()
    return AccessChange(_info(pro, BLOCKED), changed)


def unblock_access(uow: UnitOfWork, conversation_id: str, professional_id: int) -> AccessChange:
    """Lift a block ("Vous pouvez à tout moment débloquer cet accès").

    The professional is left without a decision: an earlier grant is not restored, the user
    grants access again if they wish.

    Raises:
        AuthError: ``not_logged_in``, ``terms_pending``.
        AccessDenied: ``assistant_revoked``, ``professional_unknown``.

    Returns:
        The change (status None); ``changed`` is False when the access was not blocked (a grant
        is then left as it is and reported in the status).
    """
    action = "access.unblock"
    context = record_context(uow, conversation_id, action)
    pro = _professional(uow, context, professional_id, action)
    row = _decision(uow, context, pro.id)
    changed = row is not None and row.status == BLOCKED
    if changed:
        uow.session.delete(row)
    _audit_change(uow, context, action, pro, changed)
    uow.commit()
    status = None if changed or row is None else row.status
    return AccessChange(_info(pro, status), changed)


def list_access(uow: UnitOfWork, conversation_id: str) -> AccessOverview:
    """List the professionals granted and blocked on the record ("Intervenants", "Accès bloqué").

    Raises:
        AuthError: ``not_logged_in``, ``terms_pending``.
        AccessDenied: ``assistant_revoked``.
    """
    action = "access.list"
    context = record_context(uow, conversation_id, action)
    rows = uow.session.execute(
        select(Professional, AccessGrant.status)
        .join(AccessGrant, AccessGrant.professional_id == Professional.id)
        .where(AccessGrant.patient_id == context.holder_patient_id)
    ).all()
    ordered = sorted(rows, key=lambda row: _sort_key(row[0]))
    granted = [_info(pro, status) for pro, status in ordered if status == GRANTED]
    blocked = [_info(pro, status) for pro, status in ordered if status == BLOCKED]
    audit_record(uow, context, action, "ok", granted=len(granted), blocked=len(blocked))
    uow.commit()
    return AccessOverview(granted=granted, blocked=blocked)


# --------------------------------------------------------------------------- professional side


def check_access(uow: UnitOfWork, professional_id: int, patient_id: int) -> bool:
    """Tell whether a professional may read a record now (the professional's side).

    Decided at each call from the current rows, so a block takes effect on the next check.
    Audited with actor ``professional:<id>`` and outcome ``ok``, ``blocked`` or ``no_grant``
    (also for an unknown professional or patient), then committed.

    Args:
        uow: Unit of work.
        professional_id: Internal id of the professional.
        patient_id: Internal id of the holder.

    Returns:
        True only with a grant and no block.
    """
    row = _grant_row(uow, patient_id, professional_id)
    outcome = "no_grant" if row is None else ("ok" if row.status == GRANTED else BLOCKED)
    audit.record(
        uow,
        actor=f"professional:{professional_id}",
        action="access.check",
        outcome=outcome,
        patient_id=patient_id,
    )
    uow.commit()
    return outcome == "ok"


def bullets(professionals: list[ProfessionalInfo]) -> str:
    """Return the professionals as a bullet list, one `label` per line (for list responses)."""
    return "\n".join(f"• {info.label}" for info in professionals)
