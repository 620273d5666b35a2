"""Account services: letters, activation, login with one-time code, sessions, PIN, password reset.

Steps follow the MyDSP quick guide ("Activation du compte eSanté", "Première connexion",
"Mot de passe oublié"); authentication rules follow NIST SP 800-63B.

Conventions shared by every service:

* ``uow`` first, then ``conversation_id`` (the chat "device" a session or PIN is bound to);
* secrets arrive as vault references (``*_ref``) that the service reveals itself; a ref that is
  unknown, expired or from another conversation raises ``input_expired``;
* services commit their own work; failure counters and audit rows are committed *before* the
  error is raised, so they survive the caller's rollback;
* every authentication decision is audited with a pseudonymous conversation tag as actor and
  the internal patient id (never the matricule); no secret appears in audit, log or error;
* a step that runs again has its effect once (issue 9, :mod:`bot.dsp.idempotency`): under a lock
  on the account, a code or reset mail already sent for the same step (at or after its input was
  given, or less than :data:`bot.dsp.otp.REPEAT_WINDOW_SECONDS` ago for the first code of a login
  or activation, or by the same request key for "send me a new code") is not sent again (audited
  ``already_sent``); a code, or a reset link, that a retried step presents after its own request
  succeeded answers that success again (audited ``already_done``) instead of "expired".
"""

from __future__ import annotations

import hmac
import logging
import math
import re
import secrets
import unicodedata
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, NoReturn

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from phonenumbers import PhoneNumberType
from sqlalchemy import select, update

from bot.dsp import audit, clock, idempotency, otp, vault
from bot.dsp.errors import (
    ActivationError,
    AuthError,
    CodeRejected,
    ContactInvalid,
    DspError,
    PasswordRejected,
    PinError,
    ResetTokenInvalid,
    VaultMiss,
)
from bot.dsp.matricule import generate_matricule, normalize_matricule
from bot.dsp.messages import otp_message, reset_message
from bot.dsp.notify import get_notifier, mask_address
from bot.dsp.orm import (
    Account,
    ActivationProbe,
    LoginProbe,
    LoginSession,
    Patient,
    PendingActivation,
    ResetToken,
)
from bot.dsp.passwords import check_password_policy, hash_password, verify_password
from bot.dsp.security import conversation_tag, keyed_hash, same_hash
from bot.dsp.settings import get_settings

if TYPE_CHECKING:
    from bot.dsp.uow import UnitOfWork

log = logging.getLogger(__name__)

#: Wrong activation-code tries before the letter is locked (helpdesk needed).
MAX_ACTIVATION_FAILURES = 5
#: Consecutive login failures after which delays start (NIST SP 800-63B 5.2.2 rate limiting).
DELAY_AFTER_FAILURES = 3
#: First delay in seconds; it doubles with each further failure.
BASE_DELAY_SECONDS = 30
#: Consecutive login failures after which the account is locked for good (helpdesk needed).
LOCK_AFTER_FAILURES = 10
#: Wrong PIN tries before the PIN is removed.
MAX_PIN_FAILURES = 5

_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I
_ACTIVATION_CODE_LENGTH = 8
_WEAK_PINS = frozenset(
    {"1212", "1122", "1313", "2580", "0852", "6969", "1004", "2000", "121212", "112233", "123123"}
)


@dataclass(frozen=True)
class Letter:
    """The activation letter of a new patient (the code is shown once, never stored in clear)."""

    matricule: str
    activation_code: str = field(repr=False)


@dataclass(frozen=True)
class LoginResult:
    """Outcome of a completed login.

    Attributes:
        needs_terms: The terms of use must still be accepted (quick guide, "Première connexion").
        has_pin: A PIN is set for this account on this conversation.
    """

    needs_terms: bool
    has_pin: bool


@dataclass(frozen=True)
class SessionInfo:
    """The live login session of a conversation.

    Attributes:
        patient_id: Internal id of the logged-in patient.
        needs_terms: The terms of use are not accepted yet.
        method: ``password`` or ``pin``.
    """

    patient_id: int
    needs_terms: bool
    method: str


# --------------------------------------------------------------------------- helpers


def _fail(uow: UnitOfWork, error: DspError) -> NoReturn:
    """Commit counters and audit rows, then raise."""
    uow.commit()
    raise error


PASSWORD_KINDS = ("password", "password_confirm")
PIN_KINDS = ("pin", "pin_confirm")
ADDRESS_KINDS = ("email", "phone")


def _reveal(uow: UnitOfWork, conversation_id: str, ref: str, kinds: tuple[str, ...]) -> str:
    """Return the value behind a vault reference, if it was asked as one of `kinds`.

    Raises:
        VaultMiss: ``input_expired`` also when the reference holds another kind of value (an
            answer given to another question is never used in its place).
    """
    kind, value = vault.reveal(uow, conversation_id, ref)
    if kind not in kinds:
        raise VaultMiss()
    return value


def _matricule(uow: UnitOfWork, conversation_id: str, ref: str) -> str:
    return normalize_matricule(_reveal(uow, conversation_id, ref, ("matricule",)))


def _account_for(uow: UnitOfWork, matricule: str) -> Account | None:
    return uow.session.scalars(
        select(Account).join(Patient, Account.patient_id == Patient.id).where(Patient.matricule == matricule)
    ).first()


def _audit(
    uow: UnitOfWork,
    conversation_id: str,
    action: str,
    outcome: str,
    account: Account | None = None,
    *,
    patient_id: int | None = None,
    **detail: int | str,
) -> None:
    audit.record(
        uow,
        actor=conversation_tag(conversation_id),
        action=action,
        outcome=outcome,
        patient_id=account.patient_id if account is not None else patient_id,
        detail=dict(detail) or None,
    )


def _normalize_code(code: str) -> str:
    return re.sub(r"[\s\-]+", "", code or "").upper()


def _hash_activation_code(code: str) -> str:
    return keyed_hash("activation", code)


def _new_activation_code() -> str:
    return "".join(secrets.choice(_CODE_ALPHABET) for _ in range(_ACTIVATION_CODE_LENGTH))


def normalize_email(value: str) -> str:
    """Validate an e-mail address (syntax only, no DNS) and return its normalized form.

    Raises:
        ContactInvalid: ``contact_invalid_email``.
    """
    try:
        return validate_email((value or "").strip(), check_deliverability=False).normalized
    except EmailNotValidError:
        raise ContactInvalid("contact_invalid_email") from None


def normalize_phone(value: str) -> str:
    """Validate a mobile phone number (default region Luxembourg) and return it in E.164.

    Raises:
        ContactInvalid: ``contact_invalid_phone`` if unparsable, invalid, or not a mobile
            (or fixed-line-or-mobile) number: one-time codes go by SMS.
    """
    try:
        number = phonenumbers.parse((value or "").strip(), "LU")
    except phonenumbers.NumberParseException:
        raise ContactInvalid("contact_invalid_phone") from None
    if not phonenumbers.is_valid_number(number) or phonenumbers.number_type(number) not in (
        PhoneNumberType.MOBILE,
        PhoneNumberType.FIXED_LINE_OR_MOBILE,
    ):
        raise ContactInvalid("contact_invalid_phone")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _channel(channel: str) -> str:
    value = (channel or "").strip().lower()
    if value in ("phone", "sms"):
        return "sms"
    if value in ("email", "e-mail", "mail"):
        return "email"
    raise ValueError("channel must be 'email' or 'sms'")


def _normalize_address(channel: str, address: str) -> str:
    return normalize_email(address) if channel == "email" else normalize_phone(address)


def _contact_address(account: Account) -> str | None:
    patient = account.patient
    return patient.email if account.contact_channel == "email" else patient.phone


def _minutes(seconds: int) -> int:
    return max(1, math.ceil(seconds / 60))


def _send_code(uow: UnitOfWork, channel: str, address: str, code: str, language: str | None) -> None:
    subject, body = otp_message(channel, language, code, _minutes(get_settings().otp_ttl_seconds))
    get_notifier(uow).send("email" if channel == "email" else "sms", address, subject, body)


def _lock_account(uow: UnitOfWork, account: Account) -> None:
    """Serialize the steps that send something to this account (across processes, until commit)."""
    idempotency.serialize(uow, f"account:{account.id}")


def _first_code_since(uow: UnitOfWork, conversation_id: str, input_ref: str) -> datetime:
    """Earliest time a usable code counts as already sent by this step.

    That is when the step's input was given (a retry carries the same reference), or the start of
    the repeat window (the user gave the input again), whichever is earlier.
    """
    window_start = clock.now() - timedelta(seconds=otp.REPEAT_WINDOW_SECONDS)
    return min(vault.given_at(uow, conversation_id, input_ref), window_start)


def _same_step(uow: UnitOfWork, conversation_id: str, input_ref: str, done_at: datetime | None) -> bool:
    """True when the input behind ``input_ref`` was given before ``done_at`` (the step already had its effect)."""
    if done_at is None:
        return False
    try:
        return vault.given_at(uow, conversation_id, input_ref) <= done_at
    except VaultMiss:
        return False


def _code_already_accepted(
    uow: UnitOfWork, conversation_id: str, account: Account, purpose: str, code: str, otp_ref: str
) -> bool:
    """True when this very code, given in this step, was already accepted for this conversation.

    A retried completion (same reference, given before the code was used) or a concurrent double
    submission: its request succeeded, so it answers that success again instead of "expired".
    """
    row = otp.latest(uow, account, purpose, conversation_id)
    return (
        row is not None
        and row.used_at is not None
        and otp.matches(account, row, code)
        and _same_step(uow, conversation_id, otp_ref, row.used_at)
    )


# --------------------------------------------------------------------------- letters


def issue_letter(
    uow: UnitOfWork,
    *,
    email: str | None = None,
    phone: str | None = None,
    given_name: str | None = None,
    family_name: str | None = None,
    birth_date: date | None = None,
) -> Letter:
    """Create a patient with an account in state ``issued`` and return the letter contents.

    The Agence eSanté sends the holder a letter with an activation code (quick guide,
    "Activation du compte eSanté"). The code has 8 characters from ``A-Z2-9`` without the
    ambiguous ``0 O 1 I`` (about 40 bits) and is stored only as an HMAC-SHA256.

    Args:
        uow: Unit of work.
        email: Optional e-mail already known for the patient (needed for a password reset).
        phone: Optional mobile number.
        given_name: Optional given name.
        family_name: Optional family name.
        birth_date: Birth date (random adult birth date when omitted).

    Returns:
        The matricule (unique, valid check digits) and the clear activation code.

    Raises:
        ContactInvalid: ``contact_invalid_email`` / ``contact_invalid_phone``.
    """
    clean_email = normalize_email(email) if email else None
    clean_phone = normalize_phone(phone) if phone else None
    if birth_date is None:
        birth_date = date(1940, 1, 1) + timedelta(days=secrets.randbelow(365 * 65))
    while True:
        matricule = generate_matricule(birth_date, secrets.randbelow(1000))
        taken = uow.session.scalars(select(Patient.id).where(Patient.matricule == matricule)).first()
        if taken is None:
            break
    code = _new_activation_code()
    patient = Patient(
        matricule=matricule,
        given_name=given_name or "",
        family_name=family_name or "",
        birth_date=birth_date,
        email=clean_email,
        phone=clean_phone,
    )
    uow.session.add(patient)
    uow.session.flush()
    account = Account(patient_id=patient.id, state="issued", activation_code_hash=_hash_activation_code(code))
    uow.session.add(account)
    uow.session.flush()
    audit.record(uow, actor="system", action="letter.issue", outcome="ok", patient_id=patient.id)
    uow.commit()
    return Letter(matricule=matricule, activation_code=code)


# --------------------------------------------------------------------------- activation


def check_matricule(uow: UnitOfWork, conversation_id: str, matricule_ref: str) -> None:
    """Check the format of a matricule (no database lookup, so nothing is revealed).

    Raises:
        VaultMiss: ``input_expired``.
        MatriculeInvalid: ``matricule_format``, ``matricule_old_format``, ``matricule_date``,
            ``matricule_checksum`` (see :func:`bot.dsp.matricule.normalize_matricule`).
    """
    _matricule(uow, conversation_id, matricule_ref)


def _verify_activation(uow: UnitOfWork, conversation_id: str, matricule: str, code: str) -> Account:
    action = "activation.verify_code"
    account = _account_for(uow, matricule)
    if account is None:
        # Unknown matricule: count failures under its keyed hash so that the answers are
        # exactly those of a known matricule with a wrong code (no enumeration).
        key = keyed_hash("activation-probe", matricule)
        probe = uow.session.scalars(select(ActivationProbe).where(ActivationProbe.key_hash == key)).first()
        if probe is None:
            probe = ActivationProbe(key_hash=key, failures=0)
            uow.session.add(probe)
        if probe.failures >= MAX_ACTIVATION_FAILURES:
            _audit(uow, conversation_id, action, "locked_unknown_matricule")
            _fail(uow, ActivationError("activation_locked"))
        probe.failures += 1
        _audit(uow, conversation_id, action, "unknown_matricule")
        if probe.failures >= MAX_ACTIVATION_FAILURES:
            _fail(uow, ActivationError("activation_locked"))
        _fail(
            uow, ActivationError("activation_code_wrong", tries_left=MAX_ACTIVATION_FAILURES - probe.failures)
        )
    if account.activation_failures >= MAX_ACTIVATION_FAILURES:
        _audit(uow, conversation_id, action, "activation_locked", account)
        _fail(uow, ActivationError("activation_locked"))
    if not same_hash(account.activation_code_hash, _hash_activation_code(_normalize_code(code))):
        account.activation_failures += 1
        _audit(uow, conversation_id, action, "activation_code_wrong", account)
        if account.activation_failures >= MAX_ACTIVATION_FAILURES:
            _fail(uow, ActivationError("activation_locked"))
        tries_left = MAX_ACTIVATION_FAILURES - account.activation_failures
        _fail(uow, ActivationError("activation_code_wrong", tries_left=tries_left))
    if account.state != "issued":
        _audit(uow, conversation_id, action, "account_already_active", account)
        _fail(uow, ActivationError("account_already_active"))
    return account


def verify_activation_code(uow: UnitOfWork, conversation_id: str, matricule_ref: str, code_ref: str) -> None:
    """Check a matricule and the activation code of the letter (quick guide, "Activer mon DSP").

    The code is compared case-insensitively, spaces and dashes ignored. An unknown matricule
    gets exactly the answers of a wrong code (counted too). Five wrong tries lock the letter.

    Raises:
        VaultMiss: ``input_expired``.
        MatriculeInvalid: ``matricule_*`` (format).
        ActivationError: ``activation_code_wrong`` {tries_left}, ``activation_locked`` (call the
            helpdesk), ``account_already_active`` (only once the right code is given).
    """
    matricule = _matricule(uow, conversation_id, matricule_ref)
    code = _reveal(uow, conversation_id, code_ref, ("activation_code",))
    account = _verify_activation(uow, conversation_id, matricule, code)
    _audit(uow, conversation_id, "activation.verify_code", "ok", account)
    uow.commit()


def check_new_password(
    uow: UnitOfWork, conversation_id: str, password_ref: str, matricule_ref: str | None = None
) -> None:
    """Check a new password against the policy (see :mod:`bot.dsp.passwords`, NIST SP 800-63B).

    Raises:
        VaultMiss: ``input_expired``.
        PasswordRejected: ``password_too_short`` {min_length}, ``password_too_long``
            {max_length}, ``password_common``.
    """
    password = _reveal(uow, conversation_id, password_ref, PASSWORD_KINDS)
    matricule = None
    if matricule_ref:
        try:
            matricule = _matricule(uow, conversation_id, matricule_ref)
        except DspError:
            matricule = None
    check_password_policy(password, matricule)


def confirm_password(uow: UnitOfWork, conversation_id: str, password_ref: str, confirm_ref: str) -> None:
    """Check that the confirmation equals the new password.

    Raises:
        VaultMiss: ``input_expired``.
        PasswordRejected: ``password_mismatch``.
    """
    first = unicodedata.normalize("NFKC", _reveal(uow, conversation_id, password_ref, PASSWORD_KINDS)).encode()
    second = unicodedata.normalize("NFKC", _reveal(uow, conversation_id, confirm_ref, PASSWORD_KINDS)).encode()
    if not hmac.compare_digest(first, second):
        raise PasswordRejected("password_mismatch")


def check_contact(uow: UnitOfWork, conversation_id: str, channel: str, address_ref: str) -> str:
    """Validate the e-mail address or mobile number that will receive one-time codes.

    Args:
        uow: Unit of work.
        conversation_id: Conversation.
        channel: ``email`` or ``sms`` (``phone`` accepted).
        address_ref: Vault ref of the address.

    Returns:
        The masked address, e.g. ``m•••@e•••.org``.

    Raises:
        VaultMiss: ``input_expired``.
        ContactInvalid: ``contact_invalid_email`` / ``contact_invalid_phone``.
        ValueError: Unknown channel (a programming error).
    """
    kind = _channel(channel)
    return mask_address(kind, _normalize_address(kind, _reveal(uow, conversation_id, address_ref, ADDRESS_KINDS)))


def begin_activation(
    uow: UnitOfWork,
    conversation_id: str,
    *,
    matricule_ref: str,
    code_ref: str,
    password_ref: str,
    channel: str,
    address_ref: str,
    language: str = "fr",
) -> str:
    """Re-verify everything, keep the chosen password and contact, and send a one-time code.

    Quick guide: "Définissez un mot de passe personnel ... Un code à usage unique vous sera
    envoyé par SMS ou e-mail". A new call replaces the pending choice and the older code, except
    that the same step run again (same address and channel, and a usable code sent to this
    conversation since ``address_ref`` was given or within :data:`bot.dsp.otp.REPEAT_WINDOW_SECONDS`)
    sends no second code: the pending choice is updated, the code already sent stays valid
    (audited ``already_sent``). Concurrent calls send one code.

    Returns:
        The masked address the code was sent to (also when it was already sent).

    Raises:
        VaultMiss: ``input_expired``.
        MatriculeInvalid: ``matricule_*``.
        ActivationError: as :func:`verify_activation_code`.
        PasswordRejected: ``password_*``.
        ContactInvalid: ``contact_invalid_*``.
    """
    matricule = _matricule(uow, conversation_id, matricule_ref)
    code = _reveal(uow, conversation_id, code_ref, ("activation_code",))
    account = _verify_activation(uow, conversation_id, matricule, code)
    password = _reveal(uow, conversation_id, password_ref, PASSWORD_KINDS)
    check_password_policy(password, matricule)
    kind = _channel(channel)
    address = _normalize_address(kind, _reveal(uow, conversation_id, address_ref, ADDRESS_KINDS))
    password_hash = hash_password(password)
    _lock_account(uow, account)
    previous = _pending(uow, account, conversation_id)
    already_sent = (
        previous is not None
        and (previous.channel, previous.address) == (kind, address)
        and otp.sent_since(
            uow, account, "activation", conversation_id, _first_code_since(uow, conversation_id, address_ref)
        )
        is not None
    )
    for old in uow.session.scalars(
        select(PendingActivation).where(PendingActivation.account_id == account.id)
    ):
        uow.session.delete(old)
    uow.session.add(
        PendingActivation(
            account_id=account.id,
            conversation_id=conversation_id,
            password_hash=password_hash,
            channel=kind,
            address=address,
            created_at=clock.now(),
        )
    )
    if already_sent:
        _audit(uow, conversation_id, "activation.begin", "already_sent", account, channel=kind)
    else:
        code = otp.issue(uow, account, "activation", conversation_id)
        _send_code(uow, kind, address, code, language)
        _audit(uow, conversation_id, "activation.begin", "ok", account, channel=kind)
    uow.commit()
    return mask_address(kind, address)


def _pending(uow: UnitOfWork, account: Account, conversation_id: str) -> PendingActivation | None:
    return uow.session.scalars(
        select(PendingActivation)
        .where(
            PendingActivation.account_id == account.id, PendingActivation.conversation_id == conversation_id
        )
        .order_by(PendingActivation.id.desc())
        .execution_options(populate_existing=True)
    ).first()


def complete_activation(uow: UnitOfWork, conversation_id: str, *, matricule_ref: str, otp_ref: str) -> None:
    """Check the one-time code and activate the account (password, channel and address saved).

    Raises:
        VaultMiss: ``input_expired``.
        MatriculeInvalid: ``matricule_*``.
        CodeRejected: ``otp_wrong`` {tries_left}, ``otp_exhausted``, ``otp_expired`` (also when
            nothing is pending for this conversation, e.g. a replay after success with a code typed
            again). The same step run again (the same ``otp_ref``, given before its code was
            accepted) returns normally: the account is already active (audited ``already_done``).
    """
    matricule = _matricule(uow, conversation_id, matricule_ref)
    code = _reveal(uow, conversation_id, otp_ref, ("otp",))
    action = "activation.complete"
    account = _account_for(uow, matricule)
    pending = (
        _pending(uow, account, conversation_id) if account is not None and account.state == "issued" else None
    )
    if account is None or pending is None:
        if account is not None and _code_already_accepted(uow, conversation_id, account, "activation", code, otp_ref):
            _audit(uow, conversation_id, action, "already_done", account)
            uow.commit()
            return
        _audit(uow, conversation_id, action, "nothing_pending", account)
        _fail(uow, CodeRejected("otp_expired"))
    try:
        otp.verify(uow, account, "activation", conversation_id, code)
    except CodeRejected as error:
        if error.code == "otp_expired" and _code_already_accepted(
            uow, conversation_id, account, "activation", code, otp_ref
        ):  # a concurrent submission of the same step won
            _audit(uow, conversation_id, action, "already_done", account)
            uow.commit()
            return
        _audit(uow, conversation_id, action, error.code, account)
        _fail(uow, error)
    now = clock.now()
    account.password_hash = pending.password_hash
    account.contact_channel = pending.channel
    if pending.channel == "email":
        account.patient.email = pending.address
    else:
        account.patient.phone = pending.address
    account.state = "activated"
    account.activated_at = now
    uow.session.delete(pending)
    _audit(uow, conversation_id, action, "ok", account, channel=pending.channel)
    uow.commit()


def resend_code(
    uow: UnitOfWork,
    conversation_id: str,
    *,
    matricule_ref: str,
    purpose: str,
    language: str = "fr",
    request_key: str | None = None,
) -> str:
    """Send a new one-time code for a pending activation or login of this conversation.

    The new code supersedes the older ones. For ``login`` the password must have been checked
    by :func:`begin_login` in this conversation within ``DSP_SESSION_IDLE_SECONDS``. The user asks
    for it explicitly, so a new request always sends one (within the hourly cap); but the same
    request run again (same ``request_key``) while the code it sent, or a newer one, can still be
    used sends nothing (audited ``already_sent``), also when two such calls run at once.

    Args:
        uow: Unit of work.
        conversation_id: The conversation.
        matricule_ref: Vault ref of the matricule.
        purpose: ``activation`` or ``login``.
        language: Language of the message.
        request_key: Identity of the request (the gateway's ``turn_id``), or None (every call sends).

    Returns:
        The masked address (also when the code was already sent for this request).

    Raises:
        VaultMiss: ``input_expired``.
        MatriculeInvalid: ``matricule_*``.
        CodeRejected: ``otp_expired`` when nothing is pending (start again).
        AuthError: ``account_locked`` / ``login_delay`` for a login.
        ValueError: Unknown purpose.
    """
    if purpose not in otp.PURPOSES:
        raise ValueError("purpose must be 'activation' or 'login'")
    matricule = _matricule(uow, conversation_id, matricule_ref)
    account = _account_for(uow, matricule)
    action = f"{purpose}.resend_code"
    if purpose == "activation":
        pending = _pending(uow, account, conversation_id) if account and account.state == "issued" else None
        if account is None or pending is None:
            _audit(uow, conversation_id, action, "nothing_pending", account)
            _fail(uow, CodeRejected("otp_expired"))
        channel, address = pending.channel, pending.address
    else:
        last = otp.latest(uow, account, "login", conversation_id) if account is not None else None
        horizon = clock.now() - timedelta(seconds=get_settings().session_idle_seconds)
        address_or_none = _contact_address(account) if account is not None else None
        if account is None or last is None or last.used_at is not None or last.created_at < horizon:
            _audit(uow, conversation_id, action, "nothing_pending", account)
            _fail(uow, CodeRejected("otp_expired"))
        _check_not_locked(uow, conversation_id, account, action)
        if address_or_none is None or account.contact_channel is None:
            _fail(uow, CodeRejected("otp_expired"))
        channel, address = account.contact_channel, address_or_none
    _lock_account(uow, account)
    tagged: dict[str, str] = {}
    if request_key:
        tagged["request"] = idempotency.request_tag(conversation_id, request_key)
        done = idempotency.done_by_request(uow, action=action, patient_id=account.patient_id, tag=tagged["request"])
        current = otp.latest(uow, account, purpose, conversation_id)
        if done is not None and current is not None and otp.usable(current):
            _audit(uow, conversation_id, action, "already_sent", account, channel=channel, **tagged)
            uow.commit()
            return mask_address(channel, address)
    code = otp.issue(uow, account, purpose, conversation_id)
    _send_code(uow, channel, address, code, language)
    _audit(uow, conversation_id, action, "ok", account, channel=channel, **tagged)
    uow.commit()
    return mask_address(channel, address)


# --------------------------------------------------------------------------- login


def _delay_seconds(failures: int) -> int:
    return BASE_DELAY_SECONDS * 2 ** (failures - DELAY_AFTER_FAILURES)


def _check_not_locked(uow: UnitOfWork, conversation_id: str, account: Account | LoginProbe, action: str) -> None:
    audited = account if isinstance(account, Account) else None
    if account.permanently_locked:
        _audit(uow, conversation_id, action, "account_locked", audited)
        _fail(uow, AuthError("account_locked"))
    now = clock.now()
    if account.locked_until is not None and account.locked_until > now:
        wait = math.ceil((account.locked_until - now).total_seconds())
        _audit(uow, conversation_id, action, "login_delay", audited)
        _fail(uow, AuthError("login_delay", retry_after_seconds=wait))


def _register_failure(account: Account | LoginProbe) -> AuthError:
    """Count a failed login (password or one-time code) and return the error to answer."""
    account.failed_logins += 1
    if account.failed_logins >= LOCK_AFTER_FAILURES:
        account.permanently_locked = True
        account.locked_until = None
        return AuthError("account_locked")
    if account.failed_logins >= DELAY_AFTER_FAILURES:
        delay = _delay_seconds(account.failed_logins)
        account.locked_until = clock.now() + timedelta(seconds=delay)
        return AuthError("login_delay", retry_after_seconds=delay)
    return AuthError("credentials_wrong")


def begin_login(
    uow: UnitOfWork, conversation_id: str, *, matricule_ref: str, password_ref: str, language: str = "fr"
) -> str:
    """Check matricule and password and send a login one-time code on the activation channel.

    Quick guide "Première connexion": matricule + password, then a code by e-mail or SMS.
    Rate limiting (NIST SP 800-63B 5.2.2): from the 3rd consecutive failure a delay of 30 s
    that doubles with each failure (``login_delay``); at the 10th the account is locked for
    good (``account_locked``, helpdesk). One-time-code failures count too.

    The same step run again (a usable login code sent to this conversation since ``password_ref``
    was given, or within :data:`bot.dsp.otp.REPEAT_WINDOW_SECONDS`) sends no second code (audited
    ``already_sent``); concurrent calls send one.

    Returns:
        The masked address the code was sent to (also when it was already sent).

    Raises:
        VaultMiss: ``input_expired``.
        MatriculeInvalid: ``matricule_*``.
        AuthError: ``credentials_wrong`` (unknown matricule or wrong password: same answer),
            ``login_delay`` {retry_after_seconds}, ``account_locked``, ``account_not_active``.
    """
    matricule = _matricule(uow, conversation_id, matricule_ref)
    password = _reveal(uow, conversation_id, password_ref, PASSWORD_KINDS)
    action = "login.password"
    account = _account_for(uow, matricule)
    if account is None:
        verify_password(None, password)  # same work as for a known account
        key = keyed_hash("login-probe", matricule)
        probe = uow.session.scalars(select(LoginProbe).where(LoginProbe.key_hash == key)).first()
        if probe is None:
            probe = LoginProbe(key_hash=key, failed_logins=0, permanently_locked=False)
            uow.session.add(probe)
        _check_not_locked(uow, conversation_id, probe, action)
        error = _register_failure(probe)
        _audit(uow, conversation_id, action, "unknown_matricule")
        _fail(uow, error)
    _check_not_locked(uow, conversation_id, account, action)
    if account.state != "activated" or account.password_hash is None:
        _audit(uow, conversation_id, action, "account_not_active", account)
        _fail(uow, AuthError("account_not_active"))
    if not verify_password(account.password_hash, password):
        error = _register_failure(account)
        _audit(uow, conversation_id, action, "password_wrong", account, failures=account.failed_logins)
        _fail(uow, error)
    address = _contact_address(account)
    if address is None or account.contact_channel is None:  # pragma: no cover - inconsistent data
        _audit(uow, conversation_id, action, "no_contact", account)
        _fail(uow, AuthError("account_not_active"))
    _lock_account(uow, account)
    since = _first_code_since(uow, conversation_id, password_ref)
    if otp.sent_since(uow, account, "login", conversation_id, since) is not None:
        _audit(uow, conversation_id, action, "already_sent", account, channel=account.contact_channel)
    else:
        code = otp.issue(uow, account, "login", conversation_id)
        _send_code(uow, account.contact_channel, address, code, language)
        _audit(uow, conversation_id, action, "ok", account, channel=account.contact_channel)
    uow.commit()
    return mask_address(account.contact_channel, address)


def _start_session(uow: UnitOfWork, conversation_id: str, account: Account, method: str) -> LoginResult:
    now = clock.now()
    uow.session.execute(
        update(LoginSession)
        .where(LoginSession.conversation_id == conversation_id, LoginSession.ended_at.is_(None))
        .values(ended_at=now)
    )
    needs_terms = account.terms_accepted_at is None
    uow.session.add(
        LoginSession(
            conversation_id=conversation_id,
            patient_id=account.patient_id,
            method=method,
            created_at=now,
            last_seen_at=now,
            pending_terms=needs_terms,
        )
    )
    has_pin = account.pin_hash is not None and account.pin_conversation_id == conversation_id
    return LoginResult(needs_terms=needs_terms, has_pin=has_pin)


def complete_login(uow: UnitOfWork, conversation_id: str, *, matricule_ref: str, otp_ref: str) -> LoginResult:
    """Check the login one-time code and open a session bound to this conversation.

    Raises:
        VaultMiss: ``input_expired``.
        MatriculeInvalid: ``matricule_*``.
        CodeRejected: ``otp_wrong`` {tries_left}, ``otp_exhausted``, ``otp_expired`` (also when
            no code was sent to this conversation). Wrong codes also count as login failures.
        AuthError: ``account_locked``, ``login_delay`` {retry_after_seconds} (a wrong code that
            reaches the lock threshold answers ``account_locked``).

    The same step run again (the same ``otp_ref``, given before its code was accepted, while the
    session it opened is live) returns that session's result and opens no other (audited
    ``already_done``).
    """
    matricule = _matricule(uow, conversation_id, matricule_ref)
    code = _reveal(uow, conversation_id, otp_ref, ("otp",))
    action = "login.otp"
    account = _account_for(uow, matricule)
    if account is None or account.state != "activated":
        _audit(uow, conversation_id, action, "nothing_pending", account)
        _fail(uow, CodeRejected("otp_expired"))
    _check_not_locked(uow, conversation_id, account, action)
    try:
        otp.verify(uow, account, "login", conversation_id, code)
    except CodeRejected as error:
        done = None
        if error.code == "otp_expired":  # a retried or concurrent submission of a step that succeeded?
            done = _login_already_done(uow, conversation_id, account, code, otp_ref)
        if done is not None:
            _audit(uow, conversation_id, action, "already_done", account)
            uow.commit()
            return done
        if error.code != "otp_expired":
            failure = _register_failure(account)
            _audit(uow, conversation_id, action, error.code, account, failures=account.failed_logins)
            _fail(uow, failure if failure.code == "account_locked" else error)
        _audit(uow, conversation_id, action, error.code, account)
        _fail(uow, error)
    account.failed_logins = 0
    account.locked_until = None
    result = _start_session(uow, conversation_id, account, "password")
    _audit(uow, conversation_id, action, "ok", account)
    uow.commit()
    return result


def _login_already_done(
    uow: UnitOfWork, conversation_id: str, account: Account, code: str, otp_ref: str
) -> LoginResult | None:
    """The result of the login this step already completed (its code accepted, its session live), or None."""
    if not _code_already_accepted(uow, conversation_id, account, "login", code, otp_ref):
        return None
    row = _live_session(uow, conversation_id)
    if row is None or row.patient_id != account.patient_id:
        return None
    has_pin = account.pin_hash is not None and account.pin_conversation_id == conversation_id
    return LoginResult(needs_terms=row.pending_terms, has_pin=has_pin)


def _live_session(uow: UnitOfWork, conversation_id: str) -> LoginSession | None:
    row = uow.session.scalars(
        select(LoginSession)
        .where(LoginSession.conversation_id == conversation_id, LoginSession.ended_at.is_(None))
        .order_by(LoginSession.id.desc())
    ).first()
    if row is None:
        return None
    now = clock.now()
    if (now - row.last_seen_at).total_seconds() > get_settings().session_idle_seconds:
        row.ended_at = now
        _audit(uow, conversation_id, "session.expire", "idle", patient_id=row.patient_id)
        uow.commit()
        return None
    row.last_seen_at = now
    return row


def current_session(uow: UnitOfWork, conversation_id: str) -> SessionInfo | None:
    """Return the live session of a conversation and refresh its last-seen time.

    A session idle for more than ``DSP_SESSION_IDLE_SECONDS`` is ended (audited) and None is
    returned.
    """
    row = _live_session(uow, conversation_id)
    if row is None:
        return None
    uow.commit()
    return SessionInfo(patient_id=row.patient_id, needs_terms=row.pending_terms, method=row.method)


def _require_session(uow: UnitOfWork, conversation_id: str) -> LoginSession:
    row = _live_session(uow, conversation_id)
    if row is None:
        raise AuthError("not_logged_in")
    return row


def _account_of_patient(uow: UnitOfWork, patient_id: int) -> Account:
    return uow.session.scalars(select(Account).where(Account.patient_id == patient_id)).one()


def accept_terms(uow: UnitOfWork, conversation_id: str) -> None:
    """Record that the logged-in holder accepts the terms of use (quick guide, "J'accepte").

    Raises:
        AuthError: ``not_logged_in``.
    """
    row = _require_session(uow, conversation_id)
    account = _account_of_patient(uow, row.patient_id)
    account.terms_accepted_at = clock.now()
    row.pending_terms = False
    _audit(uow, conversation_id, "terms.accept", "ok", account)
    uow.commit()


def log_out(uow: UnitOfWork, conversation_id: str) -> bool:
    """End the session of this conversation.

    Returns:
        True if a live session was ended.
    """
    row = _live_session(uow, conversation_id)
    if row is None:
        return False
    row.ended_at = clock.now()
    _audit(uow, conversation_id, "session.logout", "ok", patient_id=row.patient_id)
    uow.commit()
    return True


# --------------------------------------------------------------------------- PIN


def _pin_is_weak(pin: str) -> bool:
    if len(set(pin)) == 1 or pin in _WEAK_PINS:
        return True
    steps = {int(b) - int(a) for a, b in zip(pin, pin[1:], strict=False)}
    return steps in ({1}, {-1})


def set_pin(uow: UnitOfWork, conversation_id: str, *, pin_ref: str, confirm_ref: str) -> None:
    """Set a 4-to-6-digit PIN for quicker logins from this conversation only.

    Quick guide "Première connexion": "faciliter vos accès futurs par code PIN". Weak PINs
    (one repeated digit, ascending/descending sequences such as 1234 or 9876, a few very common
    ones) are refused. The PIN is stored as Argon2id and bound to this conversation.

    Raises:
        AuthError: ``not_logged_in``.
        VaultMiss: ``input_expired``.
        PinError: ``pin_format``, ``pin_weak``, ``pin_mismatch``.
    """
    row = _require_session(uow, conversation_id)
    pin = _reveal(uow, conversation_id, pin_ref, PIN_KINDS).strip()
    if not re.fullmatch(r"[0-9]{4,6}", pin):
        raise PinError("pin_format")
    if _pin_is_weak(pin):
        raise PinError("pin_weak")
    confirm = _reveal(uow, conversation_id, confirm_ref, PIN_KINDS).strip()
    if not hmac.compare_digest(pin.encode(), confirm.encode()):
        raise PinError("pin_mismatch")
    account = _account_of_patient(uow, row.patient_id)
    account.pin_hash = hash_password(pin)
    account.pin_conversation_id = conversation_id
    account.pin_failures = 0
    _audit(uow, conversation_id, "pin.set", "ok", account)
    uow.commit()


def pin_available(uow: UnitOfWork, conversation_id: str) -> bool:
    """Return True when a PIN was set from this conversation (the chat is the "device").

    Guide: Première connexion — a PIN eases later access on the same device.
    """
    return (
        uow.session.scalars(
            select(Account.id).where(Account.pin_conversation_id == conversation_id, Account.pin_hash.is_not(None))
        ).first()
        is not None
    )


def log_in_with_pin(
    uow: UnitOfWork, conversation_id: str, *, matricule_ref: str, pin_ref: str
) -> LoginResult:
    """Log in with matricule + PIN from the conversation where the PIN was set.

    Raises:
        VaultMiss: ``input_expired``.
        MatriculeInvalid: ``matricule_*``.
        PinError: ``pin_not_set`` (also for an unknown matricule or another conversation),
            ``pin_wrong`` {tries_left}, ``pin_locked`` (5th wrong PIN: the PIN is removed).
        AuthError: ``account_locked``, ``login_delay`` {retry_after_seconds}.
    """
    matricule = _matricule(uow, conversation_id, matricule_ref)
    pin = _reveal(uow, conversation_id, pin_ref, PIN_KINDS).strip()
    action = "login.pin"
    account = _account_for(uow, matricule)
    if (
        account is None
        or account.state != "activated"
        or account.pin_hash is None
        or account.pin_conversation_id != conversation_id
    ):
        verify_password(None, pin)
        _audit(uow, conversation_id, action, "pin_not_set", account)
        _fail(uow, PinError("pin_not_set"))
    _check_not_locked(uow, conversation_id, account, action)
    if not verify_password(account.pin_hash, pin):
        account.pin_failures += 1
        if account.pin_failures >= MAX_PIN_FAILURES:
            account.pin_hash = None
            account.pin_conversation_id = None
            account.pin_failures = 0
            _audit(uow, conversation_id, action, "pin_locked", account)
            _fail(uow, PinError("pin_locked"))
        _audit(uow, conversation_id, action, "pin_wrong", account)
        _fail(uow, PinError("pin_wrong", tries_left=MAX_PIN_FAILURES - account.pin_failures))
    account.pin_failures = 0
    result = _start_session(uow, conversation_id, account, "pin")
    _audit(uow, conversation_id, action, "ok", account)
    uow.commit()
    return result


# --------------------------------------------------------------------------- password reset


def request_password_reset(
    uow: UnitOfWork, conversation_id: str, *, matricule_ref: str, email_ref: str, language: str = "fr"
) -> None:
    """Send a reset link if matricule and e-mail match an activated account; say nothing otherwise.

    Quick guide "Mot de passe oublié": matricule + e-mail, then a link by e-mail; without an
    e-mail on the account, the holder must call the helpdesk (the chat always says so). The
    token (``secrets.token_urlsafe(24)``) is stored only hashed, single use, valid
    ``DSP_RESET_TTL_SECONDS``; a new request invalidates the older tokens. The mail holds the
    link ``{DSP_PUBLIC_URL}/reset-password?token=...`` and the token for pasting in the chat.
    Permanently locked accounts get no link (helpdesk only).

    Returns normally whether or not the account exists or the e-mail matches (the audit row
    keeps the real outcome). The same step run again (an unused, unexpired token of the account
    made since ``email_ref`` was given) sends no second mail and keeps that token valid (audited
    ``already_sent``); concurrent calls send one. A new request (the e-mail given again) sends a
    new link, as before.

    Raises:
        VaultMiss: ``input_expired``.
        MatriculeInvalid: ``matricule_*`` (syntax only, says nothing about existence).
        ContactInvalid: ``contact_invalid_email`` (syntax only).
    """
    matricule = _matricule(uow, conversation_id, matricule_ref)
    email = normalize_email(_reveal(uow, conversation_id, email_ref, ("email",)))
    action = "password_reset.request"
    account = _account_for(uow, matricule)
    if account is None:
        outcome = "unknown_matricule"
    elif account.state != "activated":
        outcome = "account_not_active"
    elif account.permanently_locked:
        outcome = "account_locked"
    elif not account.patient.email:
        outcome = "no_email"
    elif account.patient.email.casefold() != email.casefold():
        outcome = "email_mismatch"
    else:
        outcome = "ok"
    if account is not None and outcome == "ok":
        _lock_account(uow, account)
        if _reset_sent_since(uow, account, vault.given_at(uow, conversation_id, email_ref)):
            outcome = "already_sent"
    if account is not None and outcome == "ok":
        now = clock.now()
        uow.session.execute(
            update(ResetToken)
            .where(ResetToken.account_id == account.id, ResetToken.used_at.is_(None))
            .values(used_at=now)
        )
        token = secrets.token_urlsafe(24)
        ttl = get_settings().reset_ttl_seconds
        uow.session.add(
            ResetToken(
                token_hash=keyed_hash("reset", token),
                account_id=account.id,
                created_at=now,
                expires_at=now + timedelta(seconds=ttl),
            )
        )
        link = f"{get_settings().public_url}/reset-password?token={token}"
        subject, body = reset_message(language, link, token, _minutes(ttl))
        get_notifier(uow).send("email", account.patient.email or email, subject, body)
    _audit(uow, conversation_id, action, outcome, account)
    uow.commit()


def _reset_sent_since(uow: UnitOfWork, account: Account, since: datetime) -> bool:
    """True when an unused, unexpired reset token of the account was made at or after ``since``."""
    return (
        uow.session.scalars(
            select(ResetToken.id).where(
                ResetToken.account_id == account.id,
                ResetToken.used_at.is_(None),
                ResetToken.expires_at > clock.now(),
                ResetToken.created_at >= since,
            )
        ).first()
        is not None
    )


def _extract_token(value: str) -> str:
    match = re.search(r"token=([A-Za-z0-9_\-]+)", value)
    return match.group(1) if match else value.strip()


def _valid_reset_token(uow: UnitOfWork, token: str) -> ResetToken | None:
    """Return the unused, unexpired reset-token row for `token`, or None."""
    row = uow.session.scalars(
        select(ResetToken).where(ResetToken.token_hash == keyed_hash("reset", token))
    ).first()
    if row is None or row.used_at is not None or row.expires_at <= clock.now():
        return None
    return row


def check_reset_token(uow: UnitOfWork, conversation_id: str, token_ref: str) -> None:
    """Check a pasted reset link or token before the new password is asked (it stays valid).

    Raises:
        VaultMiss: ``input_expired``.
        ResetTokenInvalid: ``reset_token_invalid`` (unknown, expired or used).
    """
    token = _extract_token(_reveal(uow, conversation_id, token_ref, ("reset_token",)))
    row = _valid_reset_token(uow, token)
    if row is None:
        _audit(uow, conversation_id, "password_reset.check", "reset_token_invalid")
        _fail(uow, ResetTokenInvalid())


def _reset_already_done(uow: UnitOfWork, conversation_id: str, row: ResetToken, token_ref: str, password: str) -> bool:
    """True (and audited ``already_done``, committed) when this step already set this password with this token."""
    if not _same_step(uow, conversation_id, token_ref, row.used_at):
        return False
    account = uow.session.get(Account, row.account_id, populate_existing=True)
    if account is None or not verify_password(account.password_hash, password):
        return False
    _audit(uow, conversation_id, "password_reset.complete", "already_done", account)
    uow.commit()
    return True


def complete_password_reset(
    uow: UnitOfWork, conversation_id: str, *, token_ref: str, password_ref: str
) -> None:
    """Set a new password with a reset token (bare token or the whole link).

    On success the token is used up, login failures and temporary delays are cleared, the PIN
    is removed and every session of the holder ends. A permanent lock is *not* lifted: only the
    helpdesk can do that (it follows suspected guessing). If the password breaks the policy the
    token stays valid so that the holder can try another one.

    The same step run again (the same ``token_ref``, given before the token was used, and the
    password it set still in place) returns normally and changes nothing (audited ``already_done``)
    instead of calling the used link invalid.

    Raises:
        VaultMiss: ``input_expired``.
        ResetTokenInvalid: ``reset_token_invalid`` (unknown, expired or used).
        PasswordRejected: ``password_*``.
    """
    token = _extract_token(_reveal(uow, conversation_id, token_ref, ("reset_token",)))
    password = _reveal(uow, conversation_id, password_ref, PASSWORD_KINDS)
    action = "password_reset.complete"
    row = uow.session.scalars(
        select(ResetToken).where(ResetToken.token_hash == keyed_hash("reset", token))
    ).first()
    now = clock.now()
    if row is not None and row.used_at is not None and _reset_already_done(uow, conversation_id, row, token_ref,
                                                                            password):
        return
    if row is None or row.used_at is not None or row.expires_at <= now:
        account = uow.session.get(Account, row.account_id) if row is not None else None
        _audit(uow, conversation_id, action, "reset_token_invalid", account)
        _fail(uow, ResetTokenInvalid())
    account = uow.session.get(Account, row.account_id)
    if account is None:  # pragma: no cover - foreign key guarantees it
        _fail(uow, ResetTokenInvalid())
    check_password_policy(password, account.patient.matricule)
    # Single use even under parallel requests: only the one request that flips used_at wins.
    claimed = uow.session.execute(
        update(ResetToken).where(ResetToken.id == row.id, ResetToken.used_at.is_(None)).values(used_at=now)
    )
    if claimed.rowcount != 1:
        uow.session.refresh(row)
        if _reset_already_done(uow, conversation_id, row, token_ref, password):  # a concurrent twin won
            return
        _audit(uow, conversation_id, action, "reset_token_invalid", account)
        _fail(uow, ResetTokenInvalid())
    account.password_hash = hash_password(password)
    account.failed_logins = 0
    account.locked_until = None
    account.pin_hash = None
    account.pin_conversation_id = None
    account.pin_failures = 0
    uow.session.execute(
        update(LoginSession)
        .where(LoginSession.patient_id == account.patient_id, LoginSession.ended_at.is_(None))
        .values(ended_at=now)
    )
    _audit(uow, conversation_id, action, "ok", account)
    uow.commit()
