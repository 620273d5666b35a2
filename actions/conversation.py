"""Conversation-level actions: language, cancel and switch task, fallback, out of scope."""

from __future__ import annotations

from typing import Any

from rasa_sdk import Action, Tracker, ValidationAction
from rasa_sdk.events import ActiveLoop, EventType
from rasa_sdk.executor import CollectingDispatcher
from rasa_sdk.types import DomainDict

from actions.accounts import end_task
from actions.common import LANGUAGE, SUPPORTED_LANGUAGES

FALLBACK_INTENT = "nlu_fallback"


class ValidateSlotMappings(ValidationAction):
    """Fill the `language` slot each turn (run by Rasa's action_extract_slots).

    The gateway decides the language (client's choice, else the conversation's, else detected) and
    sends it as message metadata; an explicit request ("in English please") wins for its turn.
    """

    async def extract_language(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> dict[str, Any]:
        """Return the language for this turn, or nothing when it does not change."""
        latest = tracker.latest_message or {}
        wanted = None
        if (latest.get("intent") or {}).get("name") == "change_language":
            wanted = next(tracker.get_latest_entity_values("language"), None)
        if wanted is None:
            wanted = (latest.get("metadata") or {}).get("language")
        if wanted in SUPPORTED_LANGUAGES and wanted != tracker.get_slot(LANGUAGE):
            return {LANGUAGE: wanted}
        return {}


class ActionChangeLanguage(Action):
    """Confirm a language switch, and tell the gateway so it keeps the new language."""

    def name(self) -> str:
        """Return the action name."""
        return "action_change_language"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[EventType]:
        """Confirm in the new language; the custom payload updates the gateway's conversation."""
        language = tracker.get_slot(LANGUAGE)
        dispatcher.utter_message(response="utter_language_switched")
        dispatcher.utter_message(json_message={"set_language": language})
        return []


class ActionCancelTask(Action):
    """Stop the task in progress: nothing is kept, the form ends."""

    def name(self) -> str:
        """Return the action name."""
        return "action_cancel_task"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[EventType]:
        """Deactivate the form, forget its values, confirm."""
        events = [ActiveLoop(None), *await end_task(tracker)]
        intent = (tracker.latest_message.get("intent") or {}).get("name")
        dispatcher.utter_message(response="utter_goodbye" if intent == "goodbye" else "utter_cancelled")
        return events


class ActionSwitchTask(Action):
    """Leave the task in progress for the one the user just asked for."""

    def name(self) -> str:
        """Return the action name."""
        return "action_switch_task"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[EventType]:
        """Deactivate the form, forget its values, announce the switch."""
        dispatcher.utter_message(response="utter_switch_task")
        return [ActiveLoop(None), *await end_task(tracker)]


class ActionHandleFallback(Action):
    """Two-stage fallback: ask to rephrase, then offer the helpdesk."""

    def name(self) -> str:
        """Return the action name."""
        return "action_handle_fallback"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[EventType]:
        """Ask to rephrase on the first miss; on a second miss in a row give the helpdesk."""
        user_intents = [
            (event.get("parse_data") or {}).get("intent", {}).get("name")
            for event in tracker.events
            if event.get("event") == "user"
        ]
        misses = 0
        for name in reversed(user_intents):
            if name != FALLBACK_INTENT:
                break
            misses += 1
        topics = set(tracker.get_latest_entity_values("oos_topic"))
        if "emergency" in topics:  # never answer an emergency with "please rephrase"
            dispatcher.utter_message(response="utter_emergency")
        elif topics:
            dispatcher.utter_message(response="utter_out_of_scope_medical")
        elif misses >= 2:
            dispatcher.utter_message(response="utter_fallback_helpdesk")
        else:
            dispatcher.utter_message(response="utter_ask_rephrase")
        return []


class ActionOutOfScope(Action):
    """Out-of-scope requests; medical questions and emergencies get their own answer."""

    def name(self) -> str:
        """Return the action name."""
        return "action_out_of_scope"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[EventType]:
        """Answer with the emergency number, the no-medical-advice reply, or the general one."""
        topics = set(tracker.get_latest_entity_values("oos_topic"))
        if "emergency" in topics:
            dispatcher.utter_message(response="utter_emergency")
        elif topics:  # a partial extraction ("mal") still marks a health question
            dispatcher.utter_message(response="utter_out_of_scope_medical")
        else:
            dispatcher.utter_message(response="utter_out_of_scope")
        return []
