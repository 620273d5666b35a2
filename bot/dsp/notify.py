"""Sending e-mails and SMS: the outbox table (embedded default) or SMTP for e-mail."""

from __future__ import annotations

import logging
import smtplib
import ssl
from email.message import EmailMessage
from typing import TYPE_CHECKING, Literal, Protocol

import phonenumbers
from sqlalchemy import select

from bot.dsp import clock
from bot.dsp.orm import OutboxMessage
from bot.dsp.settings import Settings, get_settings

if TYPE_CHECKING:
    from bot.dsp.uow import UnitOfWork

log = logging.getLogger(__name__)

Channel = Literal["email", "sms"]


class Notifier(Protocol):
    """Something that delivers a message on a channel."""

    def send(self, channel: Channel, to: str, subject: str, body: str) -> None:
        """Deliver ``body`` to ``to`` (an e-mail address or an E.164 phone number)."""


class OutboxNotifier:
    """Writes messages to the ``outbox_messages`` table (committed with the unit of work).

    Args:
        uow: Unit of work.
    """

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    def send(self, channel: Channel, to: str, subject: str, body: str) -> None:
        """Add an outbox row; read it with ``dsp outbox --to ADDRESS --last``."""
        self._uow.session.add(
            OutboxMessage(channel=channel, to_address=to, subject=subject, body=body, created_at=clock.now())
        )
        log.info("message queued in outbox channel=%s", channel)


class SmtpNotifier:
    """Sends e-mail over SMTP; SMS still go to the outbox (no SMS gateway yet).

    Args:
        settings: SMTP settings.
        fallback: Notifier used for SMS.
    """

    def __init__(self, settings: Settings, fallback: Notifier) -> None:
        self._settings = settings
        self._fallback = fallback

    def send(self, channel: Channel, to: str, subject: str, body: str) -> None:
        """Send an e-mail over SMTP (STARTTLS unless disabled), or hand an SMS to the fallback.

        Raises:
            smtplib.SMTPException: or ``OSError`` when the server cannot be reached.
        """
        if channel != "email":
            self._fallback.send(channel, to, subject, body)
            return
        s = self._settings
        message = EmailMessage()
        message["From"] = s.smtp_from
        message["To"] = to
        message["Subject"] = subject
        message.set_content(body)
        with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=30) as smtp:
            if s.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if s.smtp_user:
                smtp.login(s.smtp_user, s.smtp_password)
            smtp.send_message(message)
        log.info("e-mail sent over SMTP")


def get_notifier(uow: UnitOfWork) -> Notifier:
    """Return the notifier for the configuration: SMTP when ``SMTP_HOST`` is set, else the outbox."""
    settings = get_settings()
    outbox = OutboxNotifier(uow)
    if settings.smtp_host:
        return SmtpNotifier(settings, outbox)
    return outbox


def mask_address(channel: str, address: str) -> str:
    """Mask an address for display, e.g. ``m•••@e•••.org`` or ``+352 ••• ••• 456``.

    Args:
        channel: ``email`` or ``sms``.
        address: E-mail address or phone number (E.164 preferred).

    Returns:
        The masked form: first letter of the local part and of the domain, the top-level
        domain; for a phone, the country code and the last 3 digits.
    """
    if channel == "email":
        local, _, domain = address.partition("@")
        name, _, tld = domain.rpartition(".")
        return f"{local[:1]}•••@{(name or tld)[:1]}•••.{tld}" if name else f"{local[:1]}•••@•••"
    digits = "".join(ch for ch in address if ch.isdigit())
    try:
        country = str(phonenumbers.parse(address, "LU").country_code)
    except phonenumbers.NumberParseException:
        country = ""
    prefix = f"+{country} " if country else ""
    return f"{prefix}••• ••• {digits[-3:]}"


def outbox_since(uow: UnitOfWork, after_id: int, limit: int = 50) -> list[OutboxMessage]:
    """Return the outbox messages with an id above ``after_id``, oldest first (embedded default).

    Args:
        uow: Unit of work.
        after_id: the last id already seen (0 for all).
        limit: at most this many messages.

    Returns:
        Detached-safe rows (the session does not expire them on close).
    """
    return list(
        uow.session.scalars(
            select(OutboxMessage).where(OutboxMessage.id > after_id).order_by(OutboxMessage.id).limit(limit)
        )
    )
