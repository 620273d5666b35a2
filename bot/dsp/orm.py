"""ORM classes of the DSP domain layer (SQLAlchemy 2 typed declarative mapping).

Secrets are never stored in clear: activation codes, one-time codes and reset tokens as
HMAC-SHA256 with the pepper, passwords and PINs as Argon2id, vault values Fernet-encrypted.
``audit_events`` is append-only: database triggers (SQLite; PostgreSQL, TRUNCATE too) abort UPDATE/DELETE
and an ORM guard refuses them.
"""

from __future__ import annotations

import unicodedata
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    DDL,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    event,
)
from sqlalchemy.orm import Mapped, Mapper, mapped_column, relationship

from bot.dsp import clock
from bot.dsp.db import Base

#: Letters that Unicode does not decompose into a base letter plus accents.
_FOLD_LETTERS = str.maketrans({"œ": "oe", "æ": "ae", "ø": "o", "ł": "l", "đ": "d", "ð": "d", "þ": "th", "ı": "i"})


def fold(text: str) -> str:
    """Fold text for searching: strip accents, lower-case, collapse spaces.

    "Lefèvre" -> "lefevre", "Müller" -> "muller", "Weiß" -> "weiss", "Œuvray" -> "oeuvray".
    """
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(plain.casefold().translate(_FOLD_LETTERS).split())


class Patient(Base):
    """A record holder (titulaire), identified by the 13-digit matricule."""

    __tablename__ = "patients"

    id: Mapped[int] = mapped_column(primary_key=True)
    matricule: Mapped[str] = mapped_column(String(13), unique=True)
    given_name: Mapped[str] = mapped_column(String(100), default="")
    family_name: Mapped[str] = mapped_column(String(100), default="")
    birth_date: Mapped[date] = mapped_column(Date)
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=clock.now)

    account: Mapped[Account | None] = relationship(back_populates="patient", uselist=False)


class Account(Base):
    """The eSanté account of a patient: ``issued`` (letter sent) then ``activated``."""

    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), unique=True)
    state: Mapped[str] = mapped_column(String(16), default="issued")
    activation_code_hash: Mapped[str] = mapped_column(String(64))
    activation_failures: Mapped[int] = mapped_column(Integer, default=0)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    contact_channel: Mapped[str | None] = mapped_column(String(8))
    pin_hash: Mapped[str | None] = mapped_column(String(255))
    pin_conversation_id: Mapped[str | None] = mapped_column(String(255))
    pin_failures: Mapped[int] = mapped_column(Integer, default=0)
    terms_accepted_at: Mapped[datetime | None] = mapped_column(DateTime)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime)
    permanently_locked: Mapped[bool] = mapped_column(Boolean, default=False)
    activated_at: Mapped[datetime | None] = mapped_column(DateTime)

    patient: Mapped[Patient] = relationship(back_populates="account")


class ActivationProbe(Base):
    """Failure counter for activation attempts on an unknown matricule (keyed by its HMAC).

    Lets an unknown matricule answer exactly like a known one with a wrong code.
    """

    __tablename__ = "activation_probes"

    id: Mapped[int] = mapped_column(primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)


class LoginProbe(Base):
    """Failure counter for logins on an unknown matricule (keyed by its HMAC).

    Lets an unknown matricule go through the same answers as a known one with wrong passwords
    (delays, then the lock), so that the login reveals no account's existence.
    """

    __tablename__ = "login_probes"

    id: Mapped[int] = mapped_column(primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    #: Naive UTC like every domain time (was ``timezone=True``, which PostgreSQL returns aware).
    locked_until: Mapped[datetime | None] = mapped_column(DateTime)
    permanently_locked: Mapped[bool] = mapped_column(Boolean, default=False)


class PendingActivation(Base):
    """Password hash and contact chosen during activation, waiting for the one-time code."""

    __tablename__ = "pending_activations"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    conversation_id: Mapped[str] = mapped_column(String(255))
    password_hash: Mapped[str] = mapped_column(String(255))
    channel: Mapped[str] = mapped_column(String(8))
    address: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=clock.now)


class OneTimeCode(Base):
    """A 6-digit one-time code (stored hashed) for ``activation`` or ``login``."""

    __tablename__ = "one_time_codes"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    purpose: Mapped[str] = mapped_column(String(16))
    code_hash: Mapped[str] = mapped_column(String(64))
    conversation_id: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=clock.now)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    used_at: Mapped[datetime | None] = mapped_column(DateTime)
    superseded_at: Mapped[datetime | None] = mapped_column(DateTime)


class LoginSession(Base):
    """A login bound to one conversation (the chat "device")."""

    __tablename__ = "login_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[str] = mapped_column(String(255), index=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    method: Mapped[str] = mapped_column(String(16), default="password")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=clock.now)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime, default=clock.now)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime)
    pending_terms: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Set while a designated assistant acts on another holder's record (quick guide p.28).
    acting_for_patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"))


class ResetToken(Base):
    """A single-use password-reset token (stored hashed)."""

    __tablename__ = "reset_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=clock.now)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    used_at: Mapped[datetime | None] = mapped_column(DateTime)


class OutboxMessage(Base):
    """An e-mail or SMS "sent" in the embedded setup (read with ``dsp outbox``)."""

    __tablename__ = "outbox_messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(String(8))
    to_address: Mapped[str] = mapped_column(String(320), index=True)
    subject: Mapped[str] = mapped_column(String(255))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=clock.now)


class AuditEvent(Base):
    """Append-only audit row: who, on whose behalf, which patient (internal id), what, outcome."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=clock.now, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    #: Internal id of the logged-in person who acts (None before login or for system actors).
    actor_patient_id: Mapped[int | None] = mapped_column(Integer, index=True)
    on_behalf_of: Mapped[str | None] = mapped_column(String(64))
    patient_id: Mapped[int | None] = mapped_column(Integer, index=True)
    action: Mapped[str] = mapped_column(String(64))
    #: What was read or written, as ``<kind>:<internal id>`` (e.g. ``document:12``).
    object: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)


class Professional(Base):
    """A health professional of the directory (intervenant), with a folded search key."""

    __tablename__ = "professionals"

    id: Mapped[int] = mapped_column(primary_key=True)
    family_name: Mapped[str] = mapped_column(String(100))
    given_name: Mapped[str] = mapped_column(String(100))
    profession: Mapped[str] = mapped_column(String(100))
    specialty: Mapped[str | None] = mapped_column(String(100))
    city: Mapped[str | None] = mapped_column(String(100))
    search_key: Mapped[str] = mapped_column(String(400), index=True)


class VaultEntry(Base):
    """A protected input (Fernet ciphertext) bound to one conversation, with an expiry."""

    __tablename__ = "vault_entries"

    id: Mapped[int] = mapped_column(primary_key=True)
    ref: Mapped[str] = mapped_column(String(64), unique=True)
    conversation_id: Mapped[str] = mapped_column(String(255), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=clock.now)
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)


class AuditTamperingError(RuntimeError):
    """Raised by the ORM guard when code tries to update or delete an audit row."""


def _refuse_audit_change(_mapper: Mapper[Any], _connection: Any, _target: AuditEvent) -> None:
    raise AuditTamperingError("audit_events is append-only")


event.listen(AuditEvent, "before_update", _refuse_audit_change)
event.listen(AuditEvent, "before_delete", _refuse_audit_change)

#: The database-side refusals, for tables made by ``create_all`` (the embedded fast path, tests). The
#: migrations (``bot/migrations/versions/0001_initial_schema.py``) create the same, frozen in their file.
AUDIT_APPEND_ONLY_DDL = {
    "sqlite": [
        f"CREATE TRIGGER IF NOT EXISTS audit_events_no_{op.lower()} BEFORE {op} ON audit_events "
        "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END"
        for op in ("UPDATE", "DELETE")
    ],
    # SQLSTATE 23000 (integrity_constraint_violation): an IntegrityError, as SQLite's RAISE(ABORT) gives.
    "postgresql": [
        "CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN RAISE EXCEPTION 'audit_events is append-only' USING ERRCODE = '23000'; END $$",
        "CREATE TRIGGER audit_events_no_update_delete BEFORE UPDATE OR DELETE ON audit_events "
        "FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()",
        "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()",
    ],
}

for _dialect, _statements in AUDIT_APPEND_ONLY_DDL.items():
    for _statement in _statements:
        event.listen(AuditEvent.__table__, "after_create", DDL(_statement).execute_if(dialect=_dialect))


class AccessGrant(Base):
    """The holder's decision about one professional: ``granted`` or ``blocked`` (quick guide p.22-27).

    No row means neither: the professional has no access. A block replaces a grant; unblocking
    removes the row.
    """

    __tablename__ = "access_grants"
    __table_args__ = (UniqueConstraint("patient_id", "professional_id", name="uq_access_grants_patient_professional"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    professional_id: Mapped[int] = mapped_column(ForeignKey("professionals.id"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    changed_at: Mapped[datetime] = mapped_column(DateTime, default=clock.now)
    #: Who decided: the holder, or their assistant acting for them.
    changed_by_patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"))


class AssistantDesignation(Base):
    """A holder's designation of another patient as assistant (made on the eSanté portal, quick guide p.28).

    In force while ``revoked_at`` is None; a new designation after a revocation is a new row.
    """

    __tablename__ = "assistant_designations"

    id: Mapped[int] = mapped_column(primary_key=True)
    holder_patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    assistant_patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=clock.now)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)


class Document(Base):
    """A document of a record ("Mes documents", quick guide p.16-21), stored as a file.

    The content lives in ``<DSP_STATE_DIR>/documents/<storage_name>``; ``sha256`` (64 hex digits)
    finds duplicates and checks the file when read. The author is the holder, their assistant
    (``author_patient_id`` differs from ``patient_id``) or a professional.
    """

    __tablename__ = "documents"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: The holder (titulaire) whose record holds the document.
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    doc_type: Mapped[str] = mapped_column(String(32))
    title: Mapped[str] = mapped_column(String(255))
    format: Mapped[str] = mapped_column(String(16))
    mime_type: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    #: uuid4 hex file name under the documents directory.
    storage_name: Mapped[str] = mapped_column(String(32), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=clock.now, index=True)
    author_patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"))
    author_professional_id: Mapped[int | None] = mapped_column(ForeignKey("professionals.id"))


class StagedUpload(Base):
    """A checked upload waiting (one hour) for its document type, bound to one conversation."""

    __tablename__ = "staged_uploads"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: ``up_`` + ``secrets.token_urlsafe``.
    ref: Mapped[str] = mapped_column(String(64), unique=True)
    conversation_id: Mapped[str] = mapped_column(String(255), index=True)
    #: The holder whose record the file is for.
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    #: Who uploaded it (the holder or their assistant): only they can file it.
    author_patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    storage_name: Mapped[str] = mapped_column(String(32), unique=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(16))
    mime_type: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=clock.now)
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)


class ImagingStudy(Base):
    """An imaging study of a record ("Imagerie médicale", quick guide p.31-33), indexed from DICOM files.

    Header values kept for display (description, body part) are personal data: they are shown to the
    record's holder through the gateway's views and never logged. The patient is the record's holder;
    the DICOM file's own patient name and ID are not stored.
    """

    __tablename__ = "imaging_studies"
    __table_args__ = (UniqueConstraint("patient_id", "study_instance_uid", name="uq_imaging_studies_patient_uid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    #: The holder (titulaire) whose record holds the study.
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    study_date: Mapped[date | None] = mapped_column(Date, index=True)
    #: Modalities of its series, comma-separated (``"CT"``, ``"CT,SR"``).
    modalities: Mapped[str] = mapped_column(String(128), default="")
    description: Mapped[str] = mapped_column(String(255), default="")
    body_part: Mapped[str | None] = mapped_column(String(64))
    #: The study's report: a document of the same record (``doc_type`` ``imaging_report``).
    report_document_id: Mapped[int | None] = mapped_column(ForeignKey("documents.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=clock.now, index=True)


class ImagingSeries(Base):
    """A series of an imaging study."""

    __tablename__ = "imaging_series"
    __table_args__ = (UniqueConstraint("study_id", "series_instance_uid", name="uq_imaging_series_study_uid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("imaging_studies.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    series_number: Mapped[int | None] = mapped_column(Integer)
    modality: Mapped[str] = mapped_column(String(16), default="OT")
    description: Mapped[str] = mapped_column(String(255), default="")
    body_part: Mapped[str | None] = mapped_column(String(64))


class ImagingInstance(Base):
    """One DICOM object (SOP instance) of a series, stored as a file.

    The file lives in ``<DSP_STATE_DIR>/imaging/<storage_name>`` (uuid4 hex, mode 0600). ``frames`` is 0
    for objects without pixel data (structured reports, key object selections), which are indexed but
    never rendered.
    """

    __tablename__ = "imaging_instances"
    __table_args__ = (UniqueConstraint("series_id", "sop_instance_uid", name="uq_imaging_instances_series_uid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("imaging_series.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64), default="")
    instance_number: Mapped[int | None] = mapped_column(Integer)
    frames: Mapped[int] = mapped_column(Integer, default=1)
    is_key: Mapped[bool] = mapped_column(Boolean, default=False)
    renderable: Mapped[bool] = mapped_column(Boolean, default=False)
    storage_name: Mapped[str] = mapped_column(String(32), unique=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(Integer)
    transfer_syntax: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=clock.now)


class HelpdeskAgent(Base):
    """A member of the helpdesk staff who signs in to the console (``dsp add-agent``).

    The password is stored as Argon2id; five wrong passwords in a row lock the sign-in for 15 minutes.
    """

    __tablename__ = "helpdesk_agents"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(100))
    password_hash: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=clock.now)


class AgentSession(Base):
    """A console session of an agent: the cookie's token stored as an HMAC, with its CSRF token.

    It ends at ``expires_at`` (8 hours after sign-in), after 30 minutes without a request, or at sign-out.
    """

    __tablename__ = "agent_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("helpdesk_agents.id"), index=True)
    #: Sent back in a hidden field of every console form (not a credential on its own).
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=clock.now)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime, default=clock.now)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime)


class Ticket(Base):
    """A helpdesk request opened by the assistant for one conversation: ``open``, ``claimed``, ``closed``.

    ``transcript_json`` holds the redacted conversation (``[[speaker, text], ...]``), ``tried_json`` what
    the assistant already did (``["form:login_form", "error:otp_wrong", ...]``).
    """

    __tablename__ = "tickets"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: ``HD-000042`` (from the id, set when the row is inserted).
    reference: Mapped[str | None] = mapped_column(String(16), unique=True)
    conversation_id: Mapped[str] = mapped_column(String(255), index=True)
    channel: Mapped[str] = mapped_column(String(16))
    category: Mapped[str] = mapped_column(String(16), index=True)
    priority: Mapped[str] = mapped_column(String(8))
    language: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(8), default="open", index=True)
    reason: Mapped[str | None] = mapped_column(String(64))
    tried_json: Mapped[str] = mapped_column(Text, default="[]")
    transcript_json: Mapped[str] = mapped_column(Text, default="[]")
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=clock.now, index=True)
    claimed_by_agent_id: Mapped[int | None] = mapped_column(ForeignKey("helpdesk_agents.id"))
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime)
    closed_by_agent_id: Mapped[int | None] = mapped_column(ForeignKey("helpdesk_agents.id"))
    closed_at: Mapped[datetime | None] = mapped_column(DateTime)


class TicketMessage(Base):
    """A message of a ticket: from the ``user``, an ``agent`` (to deliver), a ``note`` (internal), a ``system`` notice.

    Agent replies and system notices (``notice`` ``claimed`` or ``closed``) are delivered to the user's chat
    once; ``delivered_at`` records when.
    """

    __tablename__ = "ticket_messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    author: Mapped[str] = mapped_column(String(8))
    notice: Mapped[str | None] = mapped_column(String(16))
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("helpdesk_agents.id"))
    text: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=clock.now)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime, index=True)
