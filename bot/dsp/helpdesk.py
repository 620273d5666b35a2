"""Helpdesk: tickets opened by the assistant, the triage, and the staff who answer them (issue 6).

The assistant opens a ticket when it cannot help (the quick guide's « Des questions ? » page): the
ticket carries the conversation's redacted transcript, what the assistant already tried, and a
category and priority from :func:`triage`. Helpdesk agents sign in to the console, see the queue,
claim a ticket, talk with the user through it and close it. What an agent writes to the user
(replies, and the "claimed" / "closed" notices) waits in ``ticket_messages`` until the gateway
delivers it to the chat (:func:`pending_deliveries`, :func:`mark_delivered`).

Conventions (as in the rest of the domain layer):

* every service takes a unit of work first and commits its own work, audit rows included, also
  before raising a refusal;
* every view and change is audited: actor ``agent:<id>`` for staff, ``assistant`` for the bot,
  ``patient`` for the user, ``cli`` for the command line; the patient is the internal id, never a
  matricule; details never hold a message text or a password;
* every stored text goes through the gateway's redaction (:func:`bot.gateway.redact.clean`): a
  matricule, code, phone number or e-mail address is replaced by ``***``;
* refusals are :class:`~bot.dsp.errors.HelpdeskError` with a code of
  :data:`~bot.dsp.errors.STAFF_ERROR_CODES`.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from sqlalchemy import case, select, update

from bot.dsp import audit, clock, idempotency
from bot.dsp.errors import DspError, HelpdeskError
from bot.dsp.orm import AgentSession, HelpdeskAgent, LoginProbe, Ticket, TicketMessage
from bot.dsp.passwords import check_password_policy, hash_password, verify_password
from bot.dsp.security import conversation_tag, keyed_hash
from bot.gateway import redact

if TYPE_CHECKING:
    from bot.dsp.uow import UnitOfWork

log = logging.getLogger(__name__)

CATEGORIES = ("activation", "login", "password", "documents", "access", "assistant", "imaging", "other")
PRIORITIES = ("high", "normal", "low")
STATUSES = ("open", "claimed", "closed")
#: Languages of the guide steps (a ticket in another language gets the French steps).
GUIDE_LANGUAGES = ("fr", "de", "en")
#: Longest message (user, agent reply, note) and transcript line kept, in characters.
MAX_TEXT_CHARS = 2000
#: Most transcript lines a ticket keeps (the latest ones).
MAX_TRANSCRIPT_LINES = 200
#: Wrong passwords in a row that lock an agent's sign-in, and for how long.
MAX_AGENT_FAILURES = 5
AGENT_LOCK = timedelta(minutes=15)
#: A console session ends this long after sign-in, or after this long without a request.
SESSION_MAX_AGE = timedelta(hours=8)
SESSION_IDLE = timedelta(minutes=30)

_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
_GUIDE_FILE = Path(__file__).with_name("data") / "helpdesk-guide.json"
_PRIORITY_RANK = {"high": 0, "normal": 1, "low": 2}

#: Handoff reasons (from the assistant's offer) that name the category.
_REASON_CATEGORY = {
    "account_locked": "login", "activation_locked": "activation", "lost_letter": "activation",
    "no_email": "password", "otp_limit": "login", "quota_exceeded": "documents",
}
#: NLU intents that name the category.
_INTENT_CATEGORY = {
    "activate_account": "activation",
    "log_in": "login", "set_pin": "login", "log_out": "login",
    "reset_password": "password",
    "upload_document": "documents", "list_documents": "documents",
    "grant_access": "access", "block_access": "access", "unblock_access": "access", "list_access": "access",
    "assistant_access": "assistant", "switch_back": "assistant",
    "view_imaging": "imaging",
}
#: Reasons and intents that make a ticket urgent: a locked account, or someone unwanted who may read the record.
_HIGH_REASONS = frozenset({"account_locked", "activation_locked"})
_HIGH_INTENTS = frozenset({"block_access"})


# --------------------------------------------------------------------------- value objects
@dataclass(frozen=True)
class TranscriptLine:
    """One line of the conversation before the handoff.

    Attributes:
        speaker: ``"user"`` or ``"assistant"``.
        text: What was said (redacted).
    """

    speaker: str
    text: str


@dataclass(frozen=True)
class Triage:
    """Category (one of :data:`CATEGORIES`) and priority (one of :data:`PRIORITIES`) of a request."""

    category: str
    priority: str


@dataclass(frozen=True)
class TicketInfo:
    """A ticket as the assistant, the gateway and the console see it.

    Attributes:
        id: Internal id.
        reference: ``HD-000042``, what the user and the agent quote.
        conversation_id: The gateway conversation the ticket belongs to.
        channel: ``telegram``, ``terminal``, ``voice`` or ``api`` (see :func:`channel_of`).
        category: One of :data:`CATEGORIES`.
        priority: One of :data:`PRIORITIES`.
        language: The user's language (``fr``, ``de``, ``en``).
        status: ``open``, ``claimed`` or ``closed``.
        reason: Why the assistant handed over (``asked``, ``fallback``, ``account_locked``...), or None.
        tried: What the assistant did before (``form:login_form``, ``error:otp_wrong``, ``fallback``).
        created_at: When it was opened (naive UTC).
        claimed_by: Display name of the agent who holds it, or None.
        claimed_at: When it was claimed, or None.
        closed_at: When it was closed, or None.
        claimed_by_agent_id: Internal id of the agent who holds it, or None (the console compares it).
    """

    id: int
    reference: str
    conversation_id: str
    channel: str
    category: str
    priority: str
    language: str
    status: str
    reason: str | None
    tried: tuple[str, ...]
    created_at: datetime
    claimed_by: str | None
    claimed_at: datetime | None
    closed_at: datetime | None
    claimed_by_agent_id: int | None = None


@dataclass(frozen=True)
class Delivery:
    """Something for the user's chat: an agent's reply, or the "claimed" / "closed" notice.

    Attributes:
        id: Id to pass to :func:`mark_delivered`.
        ticket_id: The ticket.
        conversation_id: The conversation to deliver it to.
        kind: ``"claimed"``, ``"agent_reply"`` or ``"closed"``.
        text: The agent's reply (redacted); None for notices.
        agent_name: Display name of the agent.
        created_at: When it was written (naive UTC).
    """

    id: int
    ticket_id: int
    conversation_id: str
    kind: str
    text: str | None
    agent_name: str | None
    created_at: datetime


@dataclass(frozen=True)
class AgentInfo:
    """A helpdesk agent.

    Attributes:
        id: Internal id.
        username: Sign-in name (lower case).
        display_name: Name shown to colleagues and, in notices, to the user.
        csrf_token: The CSRF token of the console session the agent was found from
            (:func:`agent_for_session`); None otherwise.
    """

    id: int
    username: str
    display_name: str
    csrf_token: str | None = None


@dataclass(frozen=True)
class MessageInfo:
    """A message of a ticket as the console shows it.

    Attributes:
        id: Internal id.
        author: ``user``, ``agent``, ``note`` (internal, never delivered) or ``system``.
        kind: ``user``, ``agent_reply``, ``note``, ``claimed`` or ``closed``.
        text: The (redacted) text; None for system notices.
        agent_name: Display name of the agent who wrote it or whose action it records.
        created_at: When it was written.
        delivered_at: When it reached the user's chat (replies and notices), else None.
    """

    id: int
    author: str
    kind: str
    text: str | None
    agent_name: str | None
    created_at: datetime
    delivered_at: datetime | None


@dataclass(frozen=True)
class TicketView:
    """Everything an agent sees of a ticket.

    Attributes:
        info: The ticket.
        transcript: The redacted conversation before the handoff, oldest first.
        messages: Messages since the handoff, oldest first.
        guide: The quick guide's steps for the ticket's category, in its language.
    """

    info: TicketInfo
    transcript: tuple[TranscriptLine, ...]
    messages: tuple[MessageInfo, ...]
    guide: tuple[str, ...]


# --------------------------------------------------------------------------- helpers
def _fail(uow: UnitOfWork, error: DspError) -> NoReturn:
    """Commit the audit rows and counters of a refusal, then raise it."""
    uow.commit()
    raise error


def _agent_actor(agent_id: int | None) -> str:
    return f"agent:{agent_id}" if agent_id is not None else "agent:unknown"


def _reference(ticket_id: int) -> str:
    return f"HD-{ticket_id:06d}"


def _clean_text(text: str) -> str:
    """Return the text redacted and stripped.

    Raises:
        HelpdeskError: ``text_too_long`` {max_chars} (checked before redaction), ``text_empty``.
    """
    if len(text) > MAX_TEXT_CHARS:
        raise HelpdeskError("text_too_long", max_chars=MAX_TEXT_CHARS)
    cleaned, _masked = redact.clean(text, limit=MAX_TEXT_CHARS)
    cleaned = cleaned.strip()
    if not cleaned.replace(redact.PLACEHOLDER, "").strip():
        raise HelpdeskError("text_empty")
    return cleaned


def _clean_line(text: str) -> str:
    """Return a transcript line redacted and cut to :data:`MAX_TEXT_CHARS` (never refused)."""
    return redact.clean(text, limit=MAX_TEXT_CHARS)[0].strip()


def _agent_names(uow: UnitOfWork, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    rows = uow.session.execute(select(HelpdeskAgent.id, HelpdeskAgent.display_name).where(HelpdeskAgent.id.in_(ids)))
    return {row.id: row.display_name for row in rows}


def _info(uow: UnitOfWork, ticket: Ticket, names: dict[int, str] | None = None) -> TicketInfo:
    claimed_by = None
    if ticket.claimed_by_agent_id is not None:
        names = names if names is not None else _agent_names(uow, {ticket.claimed_by_agent_id})
        claimed_by = names.get(ticket.claimed_by_agent_id)
    return TicketInfo(
        id=ticket.id,
        reference=ticket.reference or _reference(ticket.id),
        conversation_id=ticket.conversation_id,
        channel=ticket.channel,
        category=ticket.category,
        priority=ticket.priority,
        language=ticket.language,
        status=ticket.status,
        reason=ticket.reason,
        tried=tuple(json.loads(ticket.tried_json or "[]")),
        created_at=ticket.created_at,
        claimed_by=claimed_by,
        claimed_at=ticket.claimed_at,
        closed_at=ticket.closed_at,
        claimed_by_agent_id=ticket.claimed_by_agent_id,
    )


def _transcript(ticket: Ticket) -> list[TranscriptLine]:
    return [TranscriptLine(speaker, text) for speaker, text in json.loads(ticket.transcript_json or "[]")]


def _active_row(uow: UnitOfWork, conversation_id: str) -> Ticket | None:
    return uow.session.scalars(
        select(Ticket)
        .where(Ticket.conversation_id == conversation_id, Ticket.status.in_(("open", "claimed")))
        .order_by(Ticket.id.desc())
        .execution_options(populate_existing=True)
    ).first()


def _agent(uow: UnitOfWork, agent_id: int) -> HelpdeskAgent:
    agent = uow.session.get(HelpdeskAgent, agent_id)
    if agent is None or not agent.active:
        raise HelpdeskError("agent_unknown")
    return agent


def _ticket(uow: UnitOfWork, agent: HelpdeskAgent, ticket_id: int, action: str) -> Ticket:
    ticket = uow.session.get(Ticket, ticket_id)
    if ticket is None:
        audit.record(uow, actor=_agent_actor(agent.id), action=action, outcome="ticket_not_found",
                     object_ref=f"ticket:{ticket_id}")
        _fail(uow, HelpdeskError("ticket_not_found"))
    return ticket


def _audit_ticket(uow: UnitOfWork, actor: str, action: str, outcome: str, ticket: Ticket,
                  **detail: int | str) -> None:
    audit.record(uow, actor=actor, action=action, outcome=outcome, patient_id=ticket.patient_id,
                 object_ref=f"ticket:{ticket.id}", detail=dict(detail) or None)


def _refuse(uow: UnitOfWork, agent: HelpdeskAgent, action: str, ticket: Ticket, error: HelpdeskError) -> NoReturn:
    _audit_ticket(uow, _agent_actor(agent.id), action, error.code, ticket)
    _fail(uow, error)


# --------------------------------------------------------------------------- triage and guide
def channel_of(conversation_id: str) -> str:
    """Return the channel of a conversation from its id's prefix.

    ``tg-…`` -> ``telegram``, ``term-…`` -> ``terminal``, ``voice-…`` -> ``voice``, anything else ``api``.
    """
    for prefix, channel in (("tg-", "telegram"), ("term-", "terminal"), ("voice-", "voice")):
        if conversation_id.startswith(prefix):
            return channel
    return "api"


def triage(intent: str | None, reason: str | None = None) -> Triage:
    """Return the category and priority of a request.

    The category comes from the handoff reason when it names one (``account_locked`` -> login,
    ``activation_locked`` / ``lost_letter`` -> activation, ``no_email`` -> password, ``otp_limit`` ->
    login, ``quota_exceeded`` -> documents), else from the NLU intent of the task (``view_imaging`` ->
    imaging...), else ``other``. The priority is ``high`` for a locked account or a request to block a
    professional's access (someone unwanted may read the record), ``low`` for ``other``, else ``normal``.

    Args:
        intent: The NLU intent the request is about (the task's), or None.
        reason: The handoff reason (``asked``, ``fallback``, ``account_locked``...), or None.

    Returns:
        The triage.
    """
    category = _REASON_CATEGORY.get(reason or "") or _INTENT_CATEGORY.get(intent or "") or "other"
    if reason in _HIGH_REASONS or intent in _HIGH_INTENTS:
        priority = "high"
    elif category == "other":
        priority = "low"
    else:
        priority = "normal"
    return Triage(category, priority)


@functools.lru_cache(maxsize=1)
def _guide() -> dict[str, dict[str, list[str]]]:
    data = json.loads(_GUIDE_FILE.read_text(encoding="utf-8"))
    return {category: data[category] for category in CATEGORIES}


def guide_steps(category: str, language: str) -> list[str]:
    """Return the quick guide's steps an agent reads out for a category, in a language.

    Args:
        category: One of :data:`CATEGORIES` (an unknown one gets the ``other`` steps).
        language: ``fr``, ``de`` or ``en`` (another one gets French).

    Returns:
        The steps, in order (our own wording of the MyDSP quick guide, ``data/helpdesk-guide.json``).
    """
    steps = _guide().get(category) or _guide()["other"]
    return list(steps.get(language) or steps["fr"])


# --------------------------------------------------------------------------- assistant side
def open_ticket(
    uow: UnitOfWork,
    conversation_id: str,
    *,
    language: str,
    category: str,
    priority: str,
    reason: str | None,
    transcript: Sequence[TranscriptLine],
    tried: Sequence[str],
    patient_id: int | None = None,
) -> TicketInfo:
    """Open the conversation's ticket, or return the one already open or claimed.

    Idempotent: a second call while a ticket is open or claimed returns that ticket (also when two
    calls run at once: a lock on the conversation is taken before the check), after adding the
    transcript lines it does not have yet (those after the longest overlap of its end with the new
    transcript's start). Texts are redacted; a line is cut at :data:`MAX_TEXT_CHARS` and only the latest
    :data:`MAX_TRANSCRIPT_LINES` are kept. Audited (actor ``assistant``, ``helpdesk.ticket.open``).

    Args:
        uow: Unit of work (committed).
        conversation_id: The gateway conversation.
        language: The user's language (``fr``, ``de``, ``en``).
        category: One of :data:`CATEGORIES` (see :func:`triage`).
        priority: One of :data:`PRIORITIES`.
        reason: Why the assistant hands over (``asked``, ``fallback``, ``no_email``...), or None.
        transcript: The conversation so far (already without secrets), oldest first.
        tried: What the assistant did (``form:…``, ``error:…``, ``fallback``), in order.
        patient_id: Internal id of the logged-in user, if any.

    Returns:
        The ticket (``status`` ``open`` when new).

    Raises:
        ValueError: an unknown category, priority or transcript speaker (a programming error).
    """
    if category not in CATEGORIES or priority not in PRIORITIES:
        raise ValueError(f"unknown category or priority: {category!r}, {priority!r}")
    lines: list[list[str]] = []
    for line in transcript:
        if line.speaker not in ("user", "assistant"):
            raise ValueError(f"unknown transcript speaker: {line.speaker!r}")
        text = _clean_line(line.text)
        if text:
            lines.append([line.speaker, text])
    idempotency.serialize(uow, f"ticket:{conversation_tag(conversation_id)}")
    existing = _active_row(uow, conversation_id)
    if existing is not None:
        old: list[list[str]] = json.loads(existing.transcript_json or "[]")
        overlap = next((k for k in range(min(len(old), len(lines)), 0, -1) if old[-k:] == lines[:k]), 0)
        if lines[overlap:]:
            existing.transcript_json = json.dumps((old + lines[overlap:])[-MAX_TRANSCRIPT_LINES:], ensure_ascii=False)
        _audit_ticket(uow, "assistant", "helpdesk.ticket.open", "already_open", existing)
        uow.commit()
        return _info(uow, existing)
    ticket = Ticket(
        conversation_id=conversation_id,
        channel=channel_of(conversation_id),
        category=category,
        priority=priority,
        language=(language or "fr").lower()[:8],
        status="open",
        reason=reason[:64] if reason else None,
        tried_json=json.dumps([str(entry)[:100] for entry in tried][:100], ensure_ascii=False),
        transcript_json=json.dumps(lines[-MAX_TRANSCRIPT_LINES:], ensure_ascii=False),
        patient_id=patient_id,
        created_at=clock.now(),
    )
    uow.session.add(ticket)
    uow.session.flush()
    ticket.reference = _reference(ticket.id)
    _audit_ticket(uow, "assistant", "helpdesk.ticket.open", "ok", ticket, category=category, priority=priority)
    uow.commit()
    return _info(uow, ticket)


def active_ticket(uow: UnitOfWork, conversation_id: str) -> TicketInfo | None:
    """Return the conversation's open or claimed ticket, or None (not audited: no content)."""
    ticket = _active_row(uow, conversation_id)
    return None if ticket is None else _info(uow, ticket)


def ticket_info(uow: UnitOfWork, ticket_id: int) -> TicketInfo | None:
    """Return a ticket by id, or None (for the gateway's deliveries; not audited: no content)."""
    ticket = uow.session.get(Ticket, ticket_id)
    return None if ticket is None else _info(uow, ticket)


def relay_user_message(uow: UnitOfWork, ticket_id: int, text: str) -> None:
    """Add the user's message to the ticket (while it is open or claimed); audited with actor ``patient``.

    Raises:
        HelpdeskError: ``ticket_not_found``, ``ticket_closed``, ``text_too_long`` {max_chars},
            ``text_empty`` (nothing left after redaction).
    """
    ticket = uow.session.get(Ticket, ticket_id)
    if ticket is None:
        raise HelpdeskError("ticket_not_found")
    if ticket.status == "closed":
        _audit_ticket(uow, "patient", "helpdesk.message.user", "ticket_closed", ticket)
        _fail(uow, HelpdeskError("ticket_closed"))
    cleaned = _clean_text(text)
    uow.session.add(TicketMessage(ticket_id=ticket.id, author="user", text=cleaned, created_at=clock.now()))
    _audit_ticket(uow, "patient", "helpdesk.message.user", "ok", ticket)
    uow.commit()


def pending_deliveries(
    uow: UnitOfWork, *, conversation_id: str | None = None, prefix: str | None = None, limit: int = 100
) -> list[Delivery]:
    """Return the agent replies and notices not yet delivered, oldest first.

    Args:
        uow: Unit of work.
        conversation_id: Only this conversation's.
        prefix: Only conversations whose id starts with it (e.g. ``tg-`` for the Telegram bot).
        limit: At most this many.

    Returns:
        The deliveries; call :func:`mark_delivered` once they are sent.
    """
    query = (
        select(TicketMessage, Ticket.conversation_id)
        .join(Ticket, Ticket.id == TicketMessage.ticket_id)
        .where(TicketMessage.author.in_(("agent", "system")), TicketMessage.delivered_at.is_(None))
        .order_by(TicketMessage.id)
        .limit(max(1, limit))
    )
    if conversation_id is not None:
        query = query.where(Ticket.conversation_id == conversation_id)
    if prefix is not None:
        query = query.where(Ticket.conversation_id.startswith(prefix, autoescape=True))
    rows = list(uow.session.execute(query))
    names = _agent_names(uow, {row.TicketMessage.agent_id for row in rows if row.TicketMessage.agent_id})
    return [
        Delivery(
            id=row.TicketMessage.id,
            ticket_id=row.TicketMessage.ticket_id,
            conversation_id=row.conversation_id,
            kind="agent_reply" if row.TicketMessage.author == "agent" else str(row.TicketMessage.notice),
            text=row.TicketMessage.text if row.TicketMessage.author == "agent" else None,
            agent_name=names.get(row.TicketMessage.agent_id) if row.TicketMessage.agent_id else None,
            created_at=row.TicketMessage.created_at,
        )
        for row in rows
    ]


def mark_delivered(uow: UnitOfWork, delivery_ids: Sequence[int]) -> list[int]:
    """Mark deliveries as sent; committed. Unknown or already delivered ids are ignored.

    The mark is a compare-and-set (``delivered_at IS NULL``): when two pollers (two gateway
    workers) read the same pending deliveries, each id is marked by one of them only.

    Returns:
        The ids this call marked: the caller delivers those and only those.
    """
    if not delivery_ids:
        return []
    marked = uow.session.scalars(
        update(TicketMessage)
        .where(TicketMessage.id.in_(list(delivery_ids)), TicketMessage.delivered_at.is_(None),
               TicketMessage.author.in_(("agent", "system")))
        .values(delivered_at=clock.now())
        .returning(TicketMessage.id)
    ).all()
    uow.commit()
    return list(marked)


# --------------------------------------------------------------------------- staff accounts and sessions
def add_agent(uow: UnitOfWork, username: str, display_name: str, password: str, *, actor: str = "cli") -> int:
    """Create a helpdesk agent; audited (``helpdesk.agent.add``).

    Args:
        uow: Unit of work (committed).
        username: Sign-in name: 2 to 64 of ``a-z 0-9 . _ -`` (stored lower case).
        display_name: Name shown to colleagues and to users (1 to 100 characters).
        password: Checked with the patients' policy (:func:`bot.dsp.passwords.check_password_policy`).
        actor: Who creates it, for the audit row.

    Returns:
        The new agent's id.

    Raises:
        HelpdeskError: ``agent_username_invalid``, ``agent_username_taken``, ``agent_name_invalid``.
        PasswordRejected: ``password_too_short`` {min_length}, ``password_too_long``, ``password_common``.
    """
    name = username.strip().lower()
    if not _USERNAME.match(name):
        raise HelpdeskError("agent_username_invalid")
    shown = " ".join(display_name.split())
    if not 1 <= len(shown) <= 100 or not shown.isprintable():
        raise HelpdeskError("agent_name_invalid")
    check_password_policy(password)
    if uow.session.scalars(select(HelpdeskAgent).where(HelpdeskAgent.username == name)).first() is not None:
        raise HelpdeskError("agent_username_taken")
    agent = HelpdeskAgent(username=name, display_name=shown, password_hash=hash_password(password), active=True,
                          failed_logins=0, created_at=clock.now())
    uow.session.add(agent)
    uow.session.flush()
    audit.record(uow, actor=actor, action="helpdesk.agent.add", outcome="ok", object_ref=f"agent:{agent.id}")
    uow.commit()
    return agent.id


def _probe(uow: UnitOfWork, username: str) -> LoginProbe:
    key = keyed_hash("agent-probe", username)
    probe = uow.session.scalars(select(LoginProbe).where(LoginProbe.key_hash == key)).first()
    if probe is None:
        probe = LoginProbe(key_hash=key, failed_logins=0, permanently_locked=False)
        uow.session.add(probe)
    return probe


def authenticate(uow: UnitOfWork, username: str, password: str) -> AgentInfo:
    """Check an agent's sign-in; audited (``helpdesk.login``).

    Five wrong passwords in a row lock the sign-in for 15 minutes. An unknown or inactive user goes
    through the same answers (a counter keyed by the name's HMAC), so the console reveals no user name.

    Returns:
        The agent.

    Raises:
        HelpdeskError: ``agent_credentials_invalid`` (unknown user or wrong password),
            ``agent_locked`` {retry_after_minutes}.
    """
    name = username.strip().lower()[:64]
    agent = uow.session.scalars(select(HelpdeskAgent).where(HelpdeskAgent.username == name)).first()
    if agent is not None and not agent.active:
        agent = None
    counter: HelpdeskAgent | LoginProbe = agent if agent is not None else _probe(uow, name)
    actor = _agent_actor(agent.id if agent else None)
    now = clock.now()
    if counter.locked_until is not None:
        if counter.locked_until > now:
            minutes = max(1, -(-int((counter.locked_until - now).total_seconds()) // 60))
            audit.record(uow, actor=actor, action="helpdesk.login", outcome="agent_locked")
            _fail(uow, HelpdeskError("agent_locked", retry_after_minutes=minutes))
        counter.locked_until = None
        counter.failed_logins = 0
    matches = verify_password(agent.password_hash if agent else None, password)  # same work for an unknown user
    if agent is None or not matches:
        counter.failed_logins = (counter.failed_logins or 0) + 1
        if counter.failed_logins >= MAX_AGENT_FAILURES:
            counter.locked_until = now + AGENT_LOCK
            audit.record(uow, actor=actor, action="helpdesk.login", outcome="agent_locked",
                         detail={"failures": counter.failed_logins})
            _fail(uow, HelpdeskError("agent_locked", retry_after_minutes=int(AGENT_LOCK.total_seconds() // 60)))
        audit.record(uow, actor=actor, action="helpdesk.login", outcome="agent_credentials_invalid",
                     detail={"failures": counter.failed_logins})
        _fail(uow, HelpdeskError("agent_credentials_invalid"))
    agent.failed_logins = 0
    agent.locked_until = None
    audit.record(uow, actor=actor, action="helpdesk.login", outcome="ok")
    uow.commit()
    return AgentInfo(agent.id, agent.username, agent.display_name)


def start_session(uow: UnitOfWork, agent_id: int) -> tuple[str, str]:
    """Open a console session for an (authenticated) agent; committed.

    Returns:
        ``(session token, CSRF token)``: the session token goes into the cookie (only its HMAC is
        stored); the CSRF token into every form. The session lasts at most 8 hours and ends after
        30 minutes without a request.

    Raises:
        HelpdeskError: ``agent_unknown`` (no such active agent).
    """
    _agent(uow, agent_id)
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    now = clock.now()
    uow.session.add(AgentSession(token_hash=keyed_hash("agent-session", token), agent_id=agent_id, csrf_token=csrf,
                                 created_at=now, last_seen_at=now, expires_at=now + SESSION_MAX_AGE))
    uow.commit()
    return token, csrf


def _session_row(uow: UnitOfWork, token: str) -> AgentSession | None:
    if not token or len(token) > 128:
        return None
    digest = keyed_hash("agent-session", token)
    row = uow.session.scalars(
        select(AgentSession).where(AgentSession.token_hash == digest, AgentSession.ended_at.is_(None))
    ).first()
    return row


def agent_for_session(uow: UnitOfWork, token: str) -> AgentInfo | None:
    """Return the agent of a live console session (with its CSRF token), refreshing the idle timer.

    A session past its 8 hours, idle for more than 30 minutes, or of an agent no longer active is
    ended (audited ``helpdesk.session.expire``) and None is returned; so is an unknown token.
    """
    row = _session_row(uow, token)
    if row is None:
        return None
    now = clock.now()
    agent = uow.session.get(HelpdeskAgent, row.agent_id)
    if now >= row.expires_at or now - row.last_seen_at > SESSION_IDLE or agent is None or not agent.active:
        row.ended_at = now
        audit.record(uow, actor=_agent_actor(row.agent_id), action="helpdesk.session.expire", outcome="ok")
        uow.commit()
        return None
    row.last_seen_at = now
    uow.commit()
    return AgentInfo(agent.id, agent.username, agent.display_name, csrf_token=row.csrf_token)


def end_session(uow: UnitOfWork, token: str) -> None:
    """End a console session (sign-out); audited; an unknown or ended token is ignored."""
    row = _session_row(uow, token)
    if row is None:
        return
    row.ended_at = clock.now()
    audit.record(uow, actor=_agent_actor(row.agent_id), action="helpdesk.logout", outcome="ok")
    uow.commit()


# --------------------------------------------------------------------------- staff: queue and tickets
def list_tickets(
    uow: UnitOfWork,
    agent_id: int,
    *,
    status: str | None = None,
    category: str | None = None,
    language: str | None = None,
    max_age_hours: float | None = None,
) -> list[TicketInfo]:
    """Return the queue as an agent sees it; audited as a queue view (``helpdesk.queue.view``).

    Args:
        uow: Unit of work (committed).
        agent_id: The agent who looks.
        status: ``open``, ``claimed``, ``closed``, ``active`` (open or claimed) or None (all).
        category: One of :data:`CATEGORIES`, or None.
        language: ``fr``, ``de``, ``en``, or None.
        max_age_hours: Only tickets opened less than this many hours ago, or None.

    Returns:
        At most 500 tickets: not closed first, then high priority first, then the oldest first.

    Raises:
        HelpdeskError: ``agent_unknown``, ``filter_invalid``.
    """
    agent = _agent(uow, agent_id)
    if (status not in (None, "active", *STATUSES) or category not in (None, *CATEGORIES)
            or language not in (None, *GUIDE_LANGUAGES) or (max_age_hours is not None and max_age_hours <= 0)):
        raise HelpdeskError("filter_invalid")
    query = select(Ticket)
    if status == "active":
        query = query.where(Ticket.status.in_(("open", "claimed")))
    elif status is not None:
        query = query.where(Ticket.status == status)
    if category is not None:
        query = query.where(Ticket.category == category)
    if language is not None:
        query = query.where(Ticket.language == language)
    if max_age_hours is not None:
        query = query.where(Ticket.created_at >= clock.now() - timedelta(hours=max_age_hours))
    query = query.order_by(
        case((Ticket.status == "closed", 1), else_=0),
        case(_PRIORITY_RANK, value=Ticket.priority, else_=3),
        Ticket.created_at,
        Ticket.id,
    ).limit(500)
    tickets = list(uow.session.scalars(query))
    names = _agent_names(uow, {t.claimed_by_agent_id for t in tickets if t.claimed_by_agent_id is not None})
    audit.record(uow, actor=_agent_actor(agent.id), action="helpdesk.queue.view", outcome="ok",
                 detail={"status": status, "category": category, "language": language,
                         "max_age_hours": max_age_hours, "count": len(tickets)})
    uow.commit()
    return [_info(uow, ticket, names) for ticket in tickets]


def view_ticket(uow: UnitOfWork, agent_id: int, ticket_id: int) -> TicketView:
    """Return what an agent sees of a ticket; audited (``helpdesk.ticket.view``, with the patient).

    Raises:
        HelpdeskError: ``agent_unknown``, ``ticket_not_found``.
    """
    agent = _agent(uow, agent_id)
    ticket = _ticket(uow, agent, ticket_id, "helpdesk.ticket.view")
    rows = list(uow.session.scalars(
        select(TicketMessage).where(TicketMessage.ticket_id == ticket.id).order_by(TicketMessage.id)))
    ids = {r.agent_id for r in rows if r.agent_id is not None}
    if ticket.claimed_by_agent_id is not None:
        ids.add(ticket.claimed_by_agent_id)
    names = _agent_names(uow, ids)
    messages = tuple(
        MessageInfo(
            id=r.id, author=r.author,
            kind={"agent": "agent_reply", "system": str(r.notice)}.get(r.author, r.author),
            text=r.text, agent_name=names.get(r.agent_id) if r.agent_id is not None else None,
            created_at=r.created_at, delivered_at=r.delivered_at,
        )
        for r in rows
    )
    _audit_ticket(uow, _agent_actor(agent.id), "helpdesk.ticket.view", "ok", ticket)
    uow.commit()
    info = _info(uow, ticket, names)
    return TicketView(info=info, transcript=tuple(_transcript(ticket)), messages=messages,
                      guide=tuple(guide_steps(info.category, info.language)))


def _compare_and_set(uow: UnitOfWork, ticket: Ticket, holder_id: int | None, **values: object) -> bool:
    """Change a ticket only if it is still as read (status and holder).

    Two agents racing for one ticket (or a claim racing a close) cannot both win. Returns False
    when another change came first (the ticket is then re-read).
    """
    statement = (update(Ticket).where(Ticket.id == ticket.id, Ticket.status == ticket.status)
                 .values(**values).execution_options(synchronize_session=False))
    if holder_id is None:
        statement = statement.where(Ticket.claimed_by_agent_id.is_(None))
    else:
        statement = statement.where(Ticket.claimed_by_agent_id == holder_id)
    changed = uow.session.execute(statement).rowcount == 1
    uow.session.refresh(ticket)
    return changed


def _refuse_unavailable(uow: UnitOfWork, agent: HelpdeskAgent, action: str, ticket: Ticket) -> NoReturn:
    """Refuse an action on a ticket that is closed or held by another agent (also after a lost race)."""
    if ticket.status == "closed":
        _refuse(uow, agent, action, ticket, HelpdeskError("ticket_closed"))
    holder = _agent_names(uow, {ticket.claimed_by_agent_id or 0}).get(ticket.claimed_by_agent_id or 0, "?")
    _refuse(uow, agent, action, ticket, HelpdeskError("ticket_already_claimed", agent=holder))


def claim(uow: UnitOfWork, agent_id: int, ticket_id: int) -> TicketInfo:
    """Take a ticket: the agent now talks with the user, who is told so (a ``claimed`` delivery).

    Claiming a ticket one already holds changes nothing. Audited (``helpdesk.ticket.claim``).

    Raises:
        HelpdeskError: ``agent_unknown``, ``ticket_not_found``, ``ticket_closed``,
            ``ticket_already_claimed`` {agent} (another agent holds it).
    """
    agent = _agent(uow, agent_id)
    action = "helpdesk.ticket.claim"
    ticket = _ticket(uow, agent, ticket_id, action)
    if ticket.status == "claimed" and ticket.claimed_by_agent_id == agent.id:
        return _info(uow, ticket)
    if ticket.status != "open":
        _refuse_unavailable(uow, agent, action, ticket)
    now = clock.now()
    if not _compare_and_set(uow, ticket, None, status="claimed", claimed_by_agent_id=agent.id, claimed_at=now):
        _refuse_unavailable(uow, agent, action, ticket)
    uow.session.add(TicketMessage(ticket_id=ticket.id, author="system", notice="claimed", agent_id=agent.id,
                                  created_at=now))
    _audit_ticket(uow, _agent_actor(agent.id), action, "ok", ticket)
    uow.commit()
    return _info(uow, ticket)


def reply(uow: UnitOfWork, agent_id: int, ticket_id: int, text: str) -> None:
    """Send a message to the user (an ``agent_reply`` delivery); only the agent who claimed the ticket.

    The text is redacted (numbers and codes of six or more characters, e-mail addresses and links
    become ``***``). Audited (``helpdesk.ticket.reply``; the text is not in the audit row).

    Raises:
        HelpdeskError: ``agent_unknown``, ``ticket_not_found``, ``ticket_closed``, ``ticket_not_claimed``
            (claim it first), ``ticket_already_claimed`` {agent}, ``text_too_long`` {max_chars}, ``text_empty``.
    """
    agent = _agent(uow, agent_id)
    action = "helpdesk.ticket.reply"
    ticket = _ticket(uow, agent, ticket_id, action)
    if ticket.status == "open":
        _refuse(uow, agent, action, ticket, HelpdeskError("ticket_not_claimed"))
    if ticket.status == "closed" or ticket.claimed_by_agent_id != agent.id:
        _refuse_unavailable(uow, agent, action, ticket)
    cleaned = _clean_text(text)
    uow.session.add(TicketMessage(ticket_id=ticket.id, author="agent", agent_id=agent.id, text=cleaned,
                                  created_at=clock.now()))
    _audit_ticket(uow, _agent_actor(agent.id), action, "ok", ticket)
    uow.commit()


def add_note(uow: UnitOfWork, agent_id: int, ticket_id: int, text: str) -> None:
    """Add an internal note (seen by agents only, never delivered); any agent, any status. Audited.

    Raises:
        HelpdeskError: ``agent_unknown``, ``ticket_not_found``, ``text_too_long`` {max_chars}, ``text_empty``.
    """
    agent = _agent(uow, agent_id)
    action = "helpdesk.ticket.note"
    ticket = _ticket(uow, agent, ticket_id, action)
    cleaned = _clean_text(text)
    uow.session.add(TicketMessage(ticket_id=ticket.id, author="note", agent_id=agent.id, text=cleaned,
                                  created_at=clock.now()))
    _audit_ticket(uow, _agent_actor(agent.id), action, "ok", ticket)
    uow.commit()


def close(uow: UnitOfWork, agent_id: int, ticket_id: int) -> TicketInfo:
    """Close a ticket (the user is told: a ``closed`` delivery; the assistant answers again).

    An open ticket can be closed by any agent (e.g. a duplicate), a claimed one only by its agent.
    Audited (``helpdesk.ticket.close``).

    Raises:
        HelpdeskError: ``agent_unknown``, ``ticket_not_found``, ``ticket_closed`` (already),
            ``ticket_already_claimed`` {agent} (another agent holds it).
    """
    agent = _agent(uow, agent_id)
    action = "helpdesk.ticket.close"
    ticket = _ticket(uow, agent, ticket_id, action)
    if ticket.status == "closed" or (ticket.status == "claimed" and ticket.claimed_by_agent_id != agent.id):
        _refuse_unavailable(uow, agent, action, ticket)
    now = clock.now()
    if not _compare_and_set(uow, ticket, ticket.claimed_by_agent_id, status="closed", closed_at=now,
                            closed_by_agent_id=agent.id):
        _refuse_unavailable(uow, agent, action, ticket)
    uow.session.add(TicketMessage(ticket_id=ticket.id, author="system", notice="closed", agent_id=agent.id,
                                  created_at=now))
    _audit_ticket(uow, _agent_actor(agent.id), action, "ok", ticket)
    uow.commit()
    return _info(uow, ticket)
