"""Shared pieces of the actions: slot names, the domain-call helper, error replies."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from rasa_sdk import Tracker
from rasa_sdk.events import EventType, SlotSet
from rasa_sdk.executor import CollectingDispatcher

from bot.dsp import DspError, UnitOfWork

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Slot names (domain/slots_forms.yml).
LANGUAGE = "language"
TASK_ABORTED = "task_aborted"
CONTACT_CHANNEL = "contact_channel"
MATRICULE_REF = "matricule_ref"
ACTIVATION_CODE_REF = "activation_code_ref"
NEW_PASSWORD_REF = "new_password_ref"
PASSWORD_CONFIRM_REF = "password_confirm_ref"
CONTACT_ADDRESS_REF = "contact_address_ref"
OTP_REF = "otp_ref"
PASSWORD_REF = "password_ref"
EMAIL_REF = "email_ref"
RESET_TOKEN_REF = "reset_token_ref"
PIN_REF = "pin_ref"
LOGIN_PIN_REF = "login_pin_ref"
LOGIN_WITH_PASSWORD = "login_with_password"
PIN_CONFIRM_REF = "pin_confirm_ref"
REQUESTED_SLOT = "requested_slot"
# Record tasks (issue 3): ids and codes only.
PENDING_TASK = "pending_task"
UPLOAD_REF = "upload_ref"
UPLOAD_ERROR = "upload_error"
UPLOAD_LIMIT_MB = "upload_limit_mb"
DOCUMENT_TYPE = "document_type"
PROFESSIONAL_QUERY = "professional_query"
PROFESSIONAL_ID = "professional_id"
PROFESSIONAL_NAME = "professional_name"
PROFESSIONAL_PROFESSION = "professional_profession"
ACCESS_CONFIRMED = "access_confirmed"
HOLDER_ID = "holder_id"
SWITCH_CONFIRMED = "switch_confirmed"

#: Every slot that belongs to a task; cleared when a task ends, is cancelled or is switched.
TASK_SLOTS = (
    TASK_ABORTED, CONTACT_CHANNEL, MATRICULE_REF, ACTIVATION_CODE_REF, NEW_PASSWORD_REF,
    PASSWORD_CONFIRM_REF, CONTACT_ADDRESS_REF, OTP_REF, PASSWORD_REF, EMAIL_REF, RESET_TOKEN_REF,
    PIN_REF, PIN_CONFIRM_REF, LOGIN_PIN_REF, LOGIN_WITH_PASSWORD,
    PENDING_TASK, UPLOAD_REF, UPLOAD_ERROR, DOCUMENT_TYPE, PROFESSIONAL_QUERY, PROFESSIONAL_ID, PROFESSIONAL_NAME,
    PROFESSIONAL_PROFESSION, ACCESS_CONFIRMED, HOLDER_ID, SWITCH_CONFIRMED,
)
SUPPORTED_LANGUAGES = ("fr", "de", "en")


class ServiceFailure(Exception):
    """An unexpected failure of the domain layer (not a business refusal); details are logged only."""


async def call_service(service: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one domain service in a worker thread inside its own unit of work.

    The service gets a fresh `UnitOfWork` as first argument. The work is committed when the
    service returns *and* when it raises a `DspError`: a business refusal is an outcome whose
    bookkeeping (failure counters, audit rows) must persist. Any other exception rolls back.

    Raises:
        DspError: the service's business refusal (has `code` and safe `params`).
        ServiceFailure: anything else; the original is logged with its type only.
    """

    def run() -> T:
        with UnitOfWork() as uow:
            try:
                result = service(uow, *args, **kwargs)
            except DspError:
                uow.commit()
                raise
            uow.commit()
            return result

    try:
        return await asyncio.to_thread(run)
    except DspError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user gets utter_err_internal, the log the type
        logger.error("domain service %s failed: %s", getattr(service, "__name__", "?"), type(exc).__name__)
        raise ServiceFailure(type(exc).__name__) from None


async def call_or_say(dispatcher: CollectingDispatcher, service: Callable[..., T], *args: Any,
                      **kwargs: Any) -> tuple[bool, T | None]:
    """Run a service with `call_service`; on a refusal or failure, answer it to the user.

    Returns:
        (True, the service's result), or (False, None) once the error was answered.
    """
    try:
        return True, await call_service(service, *args, **kwargs)
    except (DspError, ServiceFailure) as error:
        utter_error(dispatcher, error)
        return False, None


def utter_error(dispatcher: CollectingDispatcher, error: Exception) -> None:
    """Answer a failure with its named response (`utter_err_<code>`, or `utter_err_internal`)."""
    if isinstance(error, DspError):
        dispatcher.utter_message(response=f"utter_err_{error.code}", **error.params)
    else:
        dispatcher.utter_message(response="utter_err_internal")


def language_of(tracker: Tracker) -> str:
    """Return the conversation's language code (fr, de or en)."""
    value = tracker.get_slot(LANGUAGE)
    return value if value in SUPPORTED_LANGUAGES else "fr"


def turn_of(tracker: Tracker) -> str | None:
    """Return the identity of the user turn being answered, for the domain to recognise a repeat.

    The gateway's ``turn_id`` (message metadata, kept when the gateway sends a turn again after a
    failure), else Rasa's id of the message; None when neither is there (the domain then treats the
    request as new). At most 200 characters.
    """
    message = tracker.latest_message or {}
    metadata = message.get("metadata")
    for value in ((metadata or {}).get("turn_id") if isinstance(metadata, dict) else None, message.get("message_id")):
        if isinstance(value, str) and value:
            return value[:200]
    return None


def clear_task_slots() -> list[EventType]:
    """Return the events that forget every task slot."""
    return [SlotSet(name, None) for name in TASK_SLOTS] + [SlotSet(REQUESTED_SLOT, None)]
