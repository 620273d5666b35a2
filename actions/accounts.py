"""Account tasks: activation, login, password reset, PIN.

Guide sections: Activation du compte eSanté, Première connexion, Mot de passe oublié. Each
validator calls one domain service and answers with named responses.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from rasa_sdk import Action, FormValidationAction, Tracker
from rasa_sdk.events import EventType, FollowupAction, SlotSet
from rasa_sdk.executor import CollectingDispatcher
from rasa_sdk.types import DomainDict

from actions.common import (
    ACTIVATION_CODE_REF,
    CONTACT_ADDRESS_REF,
    CONTACT_CHANNEL,
    EMAIL_REF,
    LOGIN_PIN_REF,
    LOGIN_WITH_PASSWORD,
    MATRICULE_REF,
    NEW_PASSWORD_REF,
    OTP_REF,
    PASSWORD_CONFIRM_REF,
    PASSWORD_REF,
    PENDING_TASK,
    PIN_CONFIRM_REF,
    PIN_REF,
    RESET_TOKEN_REF,
    TASK_ABORTED,
    UPLOAD_REF,
    ServiceFailure,
    call_or_say,
    call_service,
    clear_task_slots,
    language_of,
    turn_of,
    utter_error,
)
from bot.dsp import DspError, accounts, documents, vault

Result = dict[str, Any]


class TaskFormValidation(FormValidationAction):
    """Base of the task forms: a validator may abort the task by setting `task_aborted`."""

    @abstractmethod
    def name(self) -> str:
        """Return the action name; concrete subclasses override it."""

    async def required_slots(
        self, domain_slots: list[str], dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> list[str]:
        """Return no slot once the task is aborted, so the form ends; else the domain's slots."""
        if tracker.get_slot(TASK_ABORTED):
            return []
        return domain_slots

    async def check(
        self, dispatcher: CollectingDispatcher, slot: str, value: Any, service: Any, *args: Any,
        retry: dict[str, tuple[str, ...]] | None = None, also: dict[str, Result] | None = None, **kwargs: Any,
    ) -> tuple[Result, Any]:
        """Run `service`; on a refusal, answer it and return the slots to ask again.

        Args:
            dispatcher: where replies go.
            slot: the slot being validated; cleared on refusal.
            value: its value (kept on success).
            service: domain function, called as `service(uow, *args, **kwargs)`.
            *args: positional arguments of the service after `uow`.
            retry: error code -> further slots to clear (ask again) for that refusal; a code
                mapped to `("__abort__",)` ends the task.
            also: error code -> further slot values to set for that refusal.
            **kwargs: keyword arguments of the service.

        Returns:
            (slot values to set, the service's result or None on refusal).
        """
        if value is None:  # a slot cleared by a task switch or a refusal: nothing to check
            return {slot: None}, None
        try:
            result = await call_service(service, *args, **kwargs)
        except (DspError, ServiceFailure) as error:
            utter_error(dispatcher, error)
            code = getattr(error, "code", "internal")
            extra = (retry or {}).get(code, ())
            if "__abort__" in extra or code == "internal" or isinstance(error, ServiceFailure):
                return {slot: None, TASK_ABORTED: True}, None
            return {slot: None, **{name: None for name in extra}, **(also or {}).get(code, {})}, None
        return {slot: value}, result

    # Validators shared by the forms that ask these slots (a form only calls those of its slots).

    async def validate_matricule_ref(
        self, value: str, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Result:
        """Check the matricule's form (13 digits, date, Luhn and Verhoeff digits)."""
        slots, _ = await self.check(dispatcher, MATRICULE_REF, value, accounts.check_matricule, tracker.sender_id,
                                    value)
        return slots

    async def validate_new_password_ref(
        self, value: str, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Result:
        """Check the new password against the policy."""
        slots, _ = await self.check(dispatcher, NEW_PASSWORD_REF, value, accounts.check_new_password,
                                    tracker.sender_id, value, tracker.get_slot(MATRICULE_REF))
        return slots


ABORT = ("__abort__",)


class ValidateActivationForm(TaskFormValidation):
    """Validate the activation form: matricule, letter code, password, contact, one-time code."""

    def name(self) -> str:
        """Return the action name."""
        return "validate_activation_form"

    async def validate_activation_code_ref(
        self, value: str, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Result:
        """Check the letter's activation code against the matricule."""
        slots, _ = await self.check(
            dispatcher, ACTIVATION_CODE_REF, value, accounts.verify_activation_code, tracker.sender_id,
            tracker.get_slot(MATRICULE_REF), value,
            retry={"activation_locked": ABORT, "account_already_active": ABORT, "input_expired": (MATRICULE_REF,)},
        )
        return slots

    async def validate_password_confirm_ref(
        self, value: str, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Result:
        """Check that the confirmation matches; on a mismatch ask the password again."""
        slots, _ = await self.check(
            dispatcher, PASSWORD_CONFIRM_REF, value, accounts.confirm_password, tracker.sender_id,
            tracker.get_slot(NEW_PASSWORD_REF), value,
            retry={"password_mismatch": (NEW_PASSWORD_REF,), "input_expired": (NEW_PASSWORD_REF,)},
        )
        return slots

    async def validate_contact_channel(
        self, value: str, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Result:
        """Keep only the two channels of the guide (SMS or e-mail); else ask again."""
        return {CONTACT_CHANNEL: value if value in ("email", "sms") else None}

    async def validate_contact_address_ref(
        self, value: str, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Result:
        """Check the address, then start the activation: a one-time code is sent there."""
        slots, _ = await self.check(dispatcher, CONTACT_ADDRESS_REF, value, accounts.check_contact,
                                    tracker.sender_id, tracker.get_slot(CONTACT_CHANNEL), value)
        if slots[CONTACT_ADDRESS_REF] is None:
            return slots
        slots, masked = await self.check(
            dispatcher, CONTACT_ADDRESS_REF, value, accounts.begin_activation, tracker.sender_id,
            matricule_ref=tracker.get_slot(MATRICULE_REF), code_ref=tracker.get_slot(ACTIVATION_CODE_REF),
            password_ref=tracker.get_slot(NEW_PASSWORD_REF), channel=tracker.get_slot(CONTACT_CHANNEL),
            address_ref=value, language=language_of(tracker),
            retry={"activation_locked": ABORT, "account_already_active": ABORT, "input_expired": ABORT,
                   "otp_send_limit": ABORT},
        )
        if masked:
            dispatcher.utter_message(response="utter_code_sent", masked_address=masked)
        return slots

    async def validate_otp_ref(
        self, value: str, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Result:
        """Check the one-time code; a right one activates the account."""
        slots, _ = await self.check(
            dispatcher, OTP_REF, value, accounts.complete_activation, tracker.sender_id,
            matricule_ref=tracker.get_slot(MATRICULE_REF), otp_ref=value,
            retry={"account_already_active": ABORT, "activation_locked": ABORT, "input_expired": ABORT},
        )
        return slots


class ValidateLoginForm(TaskFormValidation):
    """Validate the login form (guide: Première connexion).

    Matricule + password + one-time code; or matricule + PIN when a PIN was set from this
    conversation (the chat is the "device"), falling back to the password when the PIN fails.
    """

    def name(self) -> str:
        """Return the action name."""
        return "validate_login_form"

    async def required_slots(
        self, domain_slots: list[str], dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> list[str]:
        """Choose the PIN path or the password path."""
        slots = await super().required_slots(domain_slots, dispatcher, tracker, domain)
        if not slots:
            return slots
        use_pin = False
        if not tracker.get_slot(LOGIN_WITH_PASSWORD):
            try:
                use_pin = await call_service(accounts.pin_available, tracker.sender_id)
            except (DspError, ServiceFailure):
                use_pin = False
        keep = (MATRICULE_REF, LOGIN_PIN_REF) if use_pin else (MATRICULE_REF, PASSWORD_REF, OTP_REF)
        return [slot for slot in slots if slot in keep]

    async def validate_login_pin_ref(
        self, value: str, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Result:
        """Log in with the PIN; when it cannot serve, continue with the password."""
        # pin_wrong asks again; pin_locked / pin_not_set: continue with the password.
        use_password = {LOGIN_WITH_PASSWORD: True}
        slots, _ = await self.check(
            dispatcher, LOGIN_PIN_REF, value, accounts.log_in_with_pin, tracker.sender_id,
            matricule_ref=tracker.get_slot(MATRICULE_REF), pin_ref=value,
            retry={"input_expired": (MATRICULE_REF,), "account_locked": ABORT, "login_delay": ABORT},
            also={"pin_locked": use_password, "pin_not_set": use_password},
        )
        return slots

    async def validate_password_ref(
        self, value: str, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Result:
        """Check matricule + password; a right pair sends the one-time code."""
        slots, masked = await self.check(
            dispatcher, PASSWORD_REF, value, accounts.begin_login, tracker.sender_id,
            matricule_ref=tracker.get_slot(MATRICULE_REF), password_ref=value, language=language_of(tracker),
            retry={"credentials_wrong": (MATRICULE_REF,), "input_expired": (MATRICULE_REF,),
                   "account_not_active": ABORT, "account_locked": ABORT, "login_delay": ABORT,
                   "otp_send_limit": ABORT},
        )
        if masked:
            dispatcher.utter_message(response="utter_code_sent", masked_address=masked)
        return slots

    async def validate_otp_ref(
        self, value: str, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Result:
        """Check the one-time code; a right one opens a session for this conversation."""
        slots, _ = await self.check(
            dispatcher, OTP_REF, value, accounts.complete_login, tracker.sender_id,
            matricule_ref=tracker.get_slot(MATRICULE_REF), otp_ref=value,
            retry={"account_locked": ABORT, "login_delay": ABORT, "input_expired": ABORT},
        )
        return slots


class ValidateResetForm(TaskFormValidation):
    """Validate the password-reset form (guide: Mot de passe oublié)."""

    def name(self) -> str:
        """Return the action name."""
        return "validate_reset_form"

    async def validate_email_ref(
        self, value: str, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Result:
        """Ask for the reset e-mail; the reply is the same whether or not an account matches."""
        slots, _ = await self.check(
            dispatcher, EMAIL_REF, value, accounts.request_password_reset, tracker.sender_id,
            matricule_ref=tracker.get_slot(MATRICULE_REF), email_ref=value, language=language_of(tracker),
            retry={"input_expired": (MATRICULE_REF,)},
        )
        if slots[EMAIL_REF] is not None:
            dispatcher.utter_message(response="utter_reset_requested")
        return slots

    async def validate_reset_token_ref(
        self, value: str, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Result:
        """Check the pasted link or code before asking the new password."""
        slots, _ = await self.check(dispatcher, RESET_TOKEN_REF, value, accounts.check_reset_token,
                                    tracker.sender_id, value)
        return slots

    async def validate_password_confirm_ref(
        self, value: str, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Result:
        """Check the confirmation, then set the new password with the reset token."""
        slots, _ = await self.check(
            dispatcher, PASSWORD_CONFIRM_REF, value, accounts.confirm_password, tracker.sender_id,
            tracker.get_slot(NEW_PASSWORD_REF), value,
            retry={"password_mismatch": (NEW_PASSWORD_REF,), "input_expired": (NEW_PASSWORD_REF,)},
        )
        if slots[PASSWORD_CONFIRM_REF] is None:
            return slots
        slots, _ = await self.check(
            dispatcher, PASSWORD_CONFIRM_REF, value, accounts.complete_password_reset, tracker.sender_id,
            token_ref=tracker.get_slot(RESET_TOKEN_REF), password_ref=tracker.get_slot(NEW_PASSWORD_REF),
            retry={"reset_token_invalid": ABORT, "input_expired": ABORT},
        )
        return slots


class ValidatePinForm(TaskFormValidation):
    """Validate the PIN form (guide: Première connexion, code PIN)."""

    def name(self) -> str:
        """Return the action name."""
        return "validate_pin_form"

    async def required_slots(
        self, domain_slots: list[str], dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> list[str]:
        """Ask nothing unless someone is logged in with the terms accepted (the done action says why)."""
        session = await session_of(tracker)
        if session is None or session.needs_terms:
            return []
        return await super().required_slots(domain_slots, dispatcher, tracker, domain)

    async def validate_pin_confirm_ref(
        self, value: str, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Result:
        """Set the PIN once confirmed; on a refusal ask both again."""
        slots, _ = await self.check(
            dispatcher, PIN_CONFIRM_REF, value, accounts.set_pin, tracker.sender_id,
            pin_ref=tracker.get_slot(PIN_REF), confirm_ref=value,
            retry={"pin_format": (PIN_REF,), "pin_weak": (PIN_REF,), "pin_mismatch": (PIN_REF,),
                   "input_expired": (PIN_REF,), "not_logged_in": ABORT},
        )
        return slots


async def session_of(tracker: Tracker) -> accounts.SessionInfo | None:
    """Return the conversation's login session, or None (also when the lookup fails)."""
    try:
        return await call_service(accounts.current_session, tracker.sender_id)
    except (DspError, ServiceFailure):
        return None


async def end_task(tracker: Tracker) -> list[EventType]:
    """Forget the task's slots, the conversation's protected values and a file not filed."""
    try:
        await call_service(vault.discard, tracker.sender_id)
    except (DspError, ServiceFailure):
        pass  # expired values are purged by the vault itself
    upload_ref = tracker.get_slot(UPLOAD_REF)
    if upload_ref:
        try:
            await call_service(documents.discard_upload, tracker.sender_id, upload_ref)
        except (DspError, ServiceFailure):
            pass  # staged files expire on their own
    return clear_task_slots()


def resume_pending(tracker: Tracker, dispatcher: CollectingDispatcher, pending: str | None) -> list[EventType]:
    """After a login, go back to the record task that asked for it (`pending_task`), if any."""
    if not pending:
        return []
    dispatcher.utter_message(response="utter_resume_task")
    return [SlotSet(PENDING_TASK, pending), FollowupAction("action_start_record_task")]


class TaskDoneAction(Action, ABC):
    """Base of the actions that close a task with one confirmation (shared, abstract)."""

    #: Response confirming the task; an aborted task (its error already said) gets utter_anything_else.
    done_response: str

    @abstractmethod
    def name(self) -> str:
        """Return the action name; concrete subclasses override it."""

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[EventType]:
        """Confirm the task unless it was aborted, then forget its slots and protected values."""
        dispatcher.utter_message(
            response="utter_anything_else" if tracker.get_slot(TASK_ABORTED) else self.done_response
        )
        return await end_task(tracker)


class ActionActivationDone(TaskDoneAction):
    """Close the activation task."""

    done_response = "utter_activation_done"

    def name(self) -> str:
        """Return the action name."""
        return "action_activation_done"


class ActionLoginDone(Action):
    """Close the login task: terms of use first, then the PIN offer."""

    def name(self) -> str:
        """Return the action name."""
        return "action_login_done"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[EventType]:
        """Ask for the terms of use, or say the record is open and go back to the pending task or offer a PIN."""
        pending = tracker.get_slot(PENDING_TASK)
        events = await end_task(tracker)
        if tracker.get_slot(TASK_ABORTED):
            dispatcher.utter_message(response="utter_anything_else")
            return events
        session = await session_of(tracker)
        if session is None:
            dispatcher.utter_message(response="utter_err_not_logged_in")
        elif session.needs_terms:
            dispatcher.utter_message(response="utter_ask_terms")
            events.append(SlotSet(PENDING_TASK, pending))
        else:
            dispatcher.utter_message(response="utter_logged_in")
            if pending:
                return events + resume_pending(tracker, dispatcher, pending)
            if session.method != "pin":
                dispatcher.utter_message(response="utter_offer_pin")
        return events


class ActionResetDone(TaskDoneAction):
    """Close the password-reset task."""

    done_response = "utter_password_reset_done"

    def name(self) -> str:
        """Return the action name."""
        return "action_reset_done"


class ActionPinDone(Action):
    """Close the PIN task."""

    def name(self) -> str:
        """Return the action name."""
        return "action_pin_done"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[EventType]:
        """Confirm the PIN, or say that a login comes first."""
        if tracker.get_slot(PIN_CONFIRM_REF) and not tracker.get_slot(TASK_ABORTED):
            dispatcher.utter_message(response="utter_pin_set")
        elif not tracker.get_slot(TASK_ABORTED):
            session = await session_of(tracker)
            dispatcher.utter_message(response="utter_ask_terms" if session and session.needs_terms
                                     else "utter_not_logged_in")
        return await end_task(tracker)


class ActionAcceptTerms(Action):
    """Record the acceptance of the terms of use (CGU) and open the record."""

    def name(self) -> str:
        """Return the action name."""
        return "action_accept_terms"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[EventType]:
        """Accept the terms for the logged-in patient, then go back to the pending task or offer a PIN."""
        ok, _ = await call_or_say(dispatcher, accounts.accept_terms, tracker.sender_id)
        if not ok:
            return []
        dispatcher.utter_message(response="utter_logged_in")
        pending = tracker.get_slot(PENDING_TASK)
        if pending:
            return resume_pending(tracker, dispatcher, pending)
        dispatcher.utter_message(response="utter_offer_pin")
        return []


class ActionRefuseTerms(Action):
    """Refusing the terms of use closes the session: the record cannot open without them."""

    def name(self) -> str:
        """Return the action name."""
        return "action_refuse_terms"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[EventType]:
        """Log out and explain why, when the terms are still pending; otherwise change nothing.

        A refusal only means something while the terms wait for an answer (quick guide,
        "Première connexion"): once accepted, "I don't accept" keeps the record open and says
        so; nobody logged in hears that there is nothing to accept.
        """
        session = await session_of(tracker)
        if session is None:
            dispatcher.utter_message(response="utter_not_logged_in")
            return []
        if not session.needs_terms:
            dispatcher.utter_message(response="utter_terms_already_accepted")
            return []
        ok, _ = await call_or_say(dispatcher, accounts.log_out, tracker.sender_id)
        if ok:
            dispatcher.utter_message(response="utter_terms_refused")
        return []


class ActionLogOut(Action):
    """End the session of this conversation."""

    def name(self) -> str:
        """Return the action name."""
        return "action_log_out"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[EventType]:
        """Log out, or say nobody was logged in."""
        ok, ended = await call_or_say(dispatcher, accounts.log_out, tracker.sender_id)
        if not ok:
            return []
        dispatcher.utter_message(response="utter_logged_out" if ended else "utter_not_logged_in")
        return []


class ActionResendCode(Action):
    """Send a new one-time code for the task in progress."""

    def name(self) -> str:
        """Return the action name."""
        return "action_resend_code"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[EventType]:
        """Resend for the activation or login form once the code was first sent; else explain."""
        purpose = {"activation_form": "activation", "login_form": "login"}.get(tracker.active_loop_name or "")
        if purpose is None or tracker.get_slot("requested_slot") != "otp_ref":
            dispatcher.utter_message(response="utter_anything_else")
            return []
        # The same turn run again (gateway failover) sends no second code: the domain knows its key.
        ok, masked = await call_or_say(dispatcher, accounts.resend_code, tracker.sender_id,
                                       matricule_ref=tracker.get_slot(MATRICULE_REF), purpose=purpose,
                                       language=language_of(tracker), request_key=turn_of(tracker))
        if ok:
            dispatcher.utter_message(response="utter_new_code_sent", masked_address=masked)
        return []


class ActionAnswerOffer(Action):
    """A yes or no right after the login: it answers the terms question, else the PIN offer."""

    def name(self) -> str:
        """Return the action name."""
        return "action_answer_offer"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[EventType]:
        """Accept or refuse the pending terms of use; else start the PIN form or skip it."""
        yes = (tracker.latest_message.get("intent") or {}).get("name") == "affirm"
        session = await session_of(tracker)
        if session is None:
            dispatcher.utter_message(response="utter_anything_else")
            return []
        if session.needs_terms:
            action = ActionAcceptTerms() if yes else ActionRefuseTerms()
            return await action.run(dispatcher, tracker, domain)
        if yes:
            return [FollowupAction("pin_form")]
        dispatcher.utter_message(response="utter_pin_skipped")
        return []
