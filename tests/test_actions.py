"""Action tests: a tracker built from a dict, the real domain layer on SQLite, exact events and
response names (the way rasa-sdk and rasa-demo test their actions)."""

from __future__ import annotations

import pytest
from rasa_sdk import Tracker
from rasa_sdk.events import ActiveLoop, SlotSet
from rasa_sdk.executor import CollectingDispatcher

from actions.accounts import ValidateActivationForm
from actions.common import MATRICULE_REF
from actions.conversation import (
    ActionCancelTask,
    ActionHandleFallback,
    ActionOutOfScope,
    ValidateSlotMappings,
)
from bot.dsp import UnitOfWork, VaultMiss, generate_matricule, vault
from bot.dsp.db import reset_engine
from bot.dsp.settings import get_settings

DOMAIN: dict = {"slots": {}, "forms": {}}


@pytest.fixture(autouse=True)
def dsp_database(tmp_path, monkeypatch):
    monkeypatch.setenv("DSP_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("DSP_DATABASE_URL", f"sqlite:///{tmp_path / 'dsp.sqlite3'}")
    get_settings.cache_clear()
    reset_engine()
    yield
    reset_engine()
    get_settings.cache_clear()


def tracker(*, intent: str = "greet", entities: list | None = None, slots: dict | None = None,
            events: list | None = None, metadata: dict | None = None, loop: str | None = None) -> Tracker:
    return Tracker.from_dict({
        "sender_id": "conv-actions",
        "slots": {"language": "fr", **(slots or {})},
        "latest_message": {"intent": {"name": intent, "confidence": 1.0}, "entities": entities or [],
                           "text": "…", "metadata": metadata or {}},
        "events": events or [],
        "active_loop": {"name": loop} if loop else {},
        "paused": False,
        "latest_input_channel": "rest",
    })


def protected(kind: str, value: str) -> str:
    with UnitOfWork() as uow:
        ref = vault.put(uow, "conv-actions", kind, value)
        uow.commit()
        return ref


async def test_a_mistyped_matricule_is_refused_and_asked_again():
    from datetime import date

    good = generate_matricule(date(1980, 5, 17), 123)
    bad = good[:-1] + str((int(good[-1]) + 1) % 10)
    dispatcher = CollectingDispatcher()
    result = await ValidateActivationForm().validate_matricule_ref(
        protected("matricule", bad), dispatcher, tracker(loop="activation_form"), DOMAIN)
    assert result == {MATRICULE_REF: None}
    assert [m["response"] for m in dispatcher.messages] == ["utter_err_matricule_checksum"]

    ref = protected("matricule", good)
    dispatcher = CollectingDispatcher()
    result = await ValidateActivationForm().validate_matricule_ref(ref, dispatcher, tracker(), DOMAIN)
    assert result == {MATRICULE_REF: ref}
    assert dispatcher.messages == []


async def test_an_unknown_reference_is_refused_as_expired():
    dispatcher = CollectingDispatcher()
    result = await ValidateActivationForm().validate_matricule_ref("pi_unknown", dispatcher, tracker(), DOMAIN)
    assert result == {MATRICULE_REF: None}
    assert dispatcher.messages[0]["response"] == "utter_err_input_expired"


async def test_cancel_ends_the_form_and_forgets_its_values():
    ref = protected("matricule", "1980051712345")
    dispatcher = CollectingDispatcher()
    events = await ActionCancelTask().run(
        dispatcher, tracker(intent="cancel", slots={MATRICULE_REF: ref}, loop="activation_form"), DOMAIN)
    assert events[0] == ActiveLoop(None)
    assert SlotSet(MATRICULE_REF, None) in events
    assert [m["response"] for m in dispatcher.messages] == ["utter_cancelled"]
    with UnitOfWork() as uow, pytest.raises(VaultMiss):
        vault.reveal(uow, "conv-actions", ref)


@pytest.mark.parametrize(("misses", "expected"), [(1, "utter_ask_rephrase"), (2, "utter_fallback_helpdesk")])
async def test_fallback_rephrase_then_helpdesk(misses, expected):
    user = [{"event": "user", "parse_data": {"intent": {"name": "nlu_fallback"}}}] * misses
    dispatcher = CollectingDispatcher()
    await ActionHandleFallback().run(dispatcher, tracker(intent="nlu_fallback", events=user), DOMAIN)
    assert [m["response"] for m in dispatcher.messages] == [expected]


@pytest.mark.parametrize(("topic", "expected"), [("emergency", "utter_emergency"),
                                                   ("medical", "utter_out_of_scope_medical"),
                                                   (None, "utter_out_of_scope")])
async def test_out_of_scope_medical_and_emergency(topic, expected):
    entities = [{"entity": "oos_topic", "value": topic}] if topic else []
    dispatcher = CollectingDispatcher()
    await ActionOutOfScope().run(dispatcher, tracker(intent="out_of_scope", entities=entities), DOMAIN)
    assert [m["response"] for m in dispatcher.messages] == [expected]


async def test_language_comes_from_metadata_and_an_explicit_request_wins():
    action = ValidateSlotMappings()
    dispatcher = CollectingDispatcher()
    assert await action.extract_language(dispatcher, tracker(metadata={"language": "de"}), DOMAIN) == {"language": "de"}
    assert await action.extract_language(dispatcher, tracker(metadata={"language": "fr"}), DOMAIN) == {}
    asked = tracker(intent="change_language", entities=[{"entity": "language", "value": "en"}],
                    metadata={"language": "fr"})
    assert await action.extract_language(dispatcher, asked, DOMAIN) == {"language": "en"}


def test_the_action_server_registers_exactly_the_domain_actions():
    from pathlib import Path

    import yaml
    from rasa_sdk.executor import ActionExecutor

    executor = ActionExecutor()
    executor.register_package("actions")
    domain = yaml.safe_load((Path(__file__).resolve().parents[1] / "domain" / "slots_forms.yml").read_text())
    assert set(executor.actions) == set(domain["actions"])
