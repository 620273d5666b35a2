"""Handoff to the helpdesk: the ticket the assistant opens for the user (guide: « Des questions ? »).

The user reaches it by asking for a person (then a button or "yes"), after the fallback failed twice,
or from a step where the guide sends to the helpdesk (locked account or activation, no e-mail on
the account for a reset, activation letter lost): the offer's button carries the reason. The action
sends the domain what the conversation holds — never a secret: protected answers are references
in the tracker and are written as a placeholder, uploaded files as a placeholder too.
"""

from __future__ import annotations

from typing import Any

from rasa_sdk import Action, Tracker
from rasa_sdk.events import ActiveLoop, EventType, SlotSet
from rasa_sdk.executor import CollectingDispatcher
from rasa_sdk.types import DomainDict

from actions.accounts import end_task, session_of
from actions.common import call_or_say, language_of
from bot.dsp import helpdesk

HANDOFF_REASON = "handoff_reason"
#: How many lines of the conversation go into a ticket (the latest ones).
MAX_TRANSCRIPT_LINES = 40
#: What a payload turn is written as in the transcript (the intent's name is no personal value).
PAYLOAD_PLACEHOLDERS = {"provide_protected": "[protected answer]", "provide_file": "[file sent]"}
#: Intents that name a task (the latest one is the ticket's subject when no reason or form says it).
TASK_INTENTS = frozenset({
    "activate_account", "log_in", "reset_password", "set_pin", "log_out", "upload_document", "list_documents",
    "grant_access", "block_access", "unblock_access", "list_access", "assistant_access", "switch_back",
    "view_imaging",
})
#: The intent each form serves (a ticket asked from inside a form is about that task).
FORM_INTENTS = {
    "activation_form": "activate_account", "login_form": "log_in", "reset_form": "reset_password",
    "pin_form": "set_pin", "upload_form": "upload_document", "grant_form": "grant_access",
    "block_form": "block_access", "unblock_form": "unblock_access", "assistant_form": "assistant_access",
}


def transcript_of(events: list[dict[str, Any]]) -> list[helpdesk.TranscriptLine]:
    """Return the conversation's user and assistant lines, payloads replaced by placeholders.

    Args:
        events: the tracker's events (Rasa event dicts), oldest first.

    Returns:
        At most MAX_TRANSCRIPT_LINES lines, the latest ones. A user turn that is a payload
        (``/intent{...}``) is written as its placeholder or ``[choice: intent]``: entity values of
        payloads are references and ids, meaningless to an agent.
    """
    lines: list[helpdesk.TranscriptLine] = []
    for event in events:
        if event.get("event") == "user":
            text = (event.get("text") or "").strip()
            if text.startswith("/"):
                intent = ((event.get("parse_data") or {}).get("intent") or {}).get("name") or "?"
                text = PAYLOAD_PLACEHOLDERS.get(intent, f"[choice: {intent}]")
            if text:
                lines.append(helpdesk.TranscriptLine("user", text))
        elif event.get("event") == "bot" and (event.get("text") or "").strip():
            lines.append(helpdesk.TranscriptLine("assistant", event["text"].strip()))
    return lines[-MAX_TRANSCRIPT_LINES:]


def tried_of(events: list[dict[str, Any]]) -> list[str]:
    """Return what the assistant already did, in order and without repeats.

    Entries are codes an agent reads with the console's legend: ``form:<name>`` for each task
    form run, ``error:<code>`` for each refusal answered, ``fallback`` for each misunderstanding.
    """
    tried: list[str] = []
    for event in events:
        entry = None
        if event.get("event") == "active_loop" and event.get("name"):
            entry = f"form:{event['name']}"
        elif event.get("event") == "bot":
            template = ((event.get("metadata") or {}).get("utter_action") or "")
            if template.startswith("utter_err_"):
                entry = "error:" + template.removeprefix("utter_err_")
            elif template in ("utter_ask_rephrase", "utter_fallback_helpdesk"):
                entry = "fallback"
        if entry and entry not in tried:
            tried.append(entry)
    return tried


def subject_intent(tracker: Tracker) -> str | None:
    """Return the intent the ticket is about: the active form's task, else the latest task intent."""
    form = (tracker.active_loop or {}).get("name")
    if form in FORM_INTENTS:
        return FORM_INTENTS[form]
    for event in reversed(tracker.events):
        if event.get("event") == "user":
            name = ((event.get("parse_data") or {}).get("intent") or {}).get("name")
            if name in TASK_INTENTS:
                return str(name)
    return None


class ActionOpenTicket(Action):
    """Open (or find) the conversation's helpdesk ticket and say its reference."""

    def name(self) -> str:
        """Return the action name."""
        return "action_open_ticket"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[EventType]:
        """Triage with the NLU's intents and the offer's reason, open the ticket, end any task."""
        reason = next(tracker.get_latest_entity_values(HANDOFF_REASON), None) or tracker.get_slot(HANDOFF_REASON)
        triage = helpdesk.triage(subject_intent(tracker), reason)
        existing_ok, existing = await call_or_say(dispatcher, helpdesk.active_ticket, tracker.sender_id)
        if not existing_ok:
            return []
        if existing is not None:
            dispatcher.utter_message(response="utter_ticket_already_open", ticket_reference=existing.reference)
            return [SlotSet(HANDOFF_REASON, None)]
        session = await session_of(tracker)
        ok, ticket = await call_or_say(
            dispatcher, helpdesk.open_ticket, tracker.sender_id, language=language_of(tracker),
            category=triage.category, priority=triage.priority, reason=reason or "asked",
            transcript=transcript_of(tracker.events), tried=tried_of(tracker.events),
            patient_id=session.patient_id if session else None,
        )
        events: list[EventType] = [SlotSet(HANDOFF_REASON, None)]
        if tracker.active_loop.get("name"):
            events += [ActiveLoop(None), *await end_task(tracker)]
        if ok and ticket is not None:
            dispatcher.utter_message(response="utter_ticket_opened", ticket_reference=ticket.reference)
        return events


class ActionOpenTicketInTask(ActionOpenTicket):
    """The same, asked from inside a task's form (the rules of a form end its loop)."""

    def name(self) -> str:
        """Return the action name."""
        return "action_open_ticket_in_task"
