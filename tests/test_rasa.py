"""Rasa's own checks: test stories must predict perfectly; rasa-sdk serves Rasa 3.6's forms.

`rasa test core` (Rasa 3.6) predicts each next action and replays the story's events as written:
it does not call the action server (checked: the stories pass with the endpoint on a dead port).
The stories' events were copied from real conversations through the gateway; what the actions
really do is asserted by the conversation tests.
"""

from __future__ import annotations

import subprocess

import pytest

from bot.launcher import RASA_BIN, latest_model
from tests.support import REPO

pytestmark = pytest.mark.services


def test_test_stories_predict_without_error(services, tmp_path):
    endpoints = tmp_path / "endpoints.yml"
    endpoints.write_text(f"action_endpoint:\n  url: {services.actions_url}/webhook\n", encoding="utf-8")
    result = subprocess.run(
        [str(RASA_BIN), "test", "core", "--model", str(latest_model()), "--stories", "tests/stories",
         "--endpoints", str(endpoints), "--out", str(tmp_path / "results"), "--fail-on-prediction-errors"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**services.env, "RASA_TELEMETRY_ENABLED": "false"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_rasa_sdk_serves_forms_validation_and_events(services):
    """Rasa 3.6 ran our rasa-sdk 3.21 form validation: its events are in the tracker."""
    from tests.test_conversations import UTTERANCES, Chat, new_letter

    patient = new_letter(services)
    chat = Chat(services.gateway_url, services.key, services.env, "en")
    chat.say(UTTERANCES["en"]["activate"])
    chat.protect(patient["matricule"][:-1] + str((int(patient["matricule"][-1]) + 1) % 10))
    chat.protect(patient["matricule"])
    events = services.rasa.tracker(chat.id)["events"]
    loops = [e.get("name") for e in events if e["event"] == "active_loop"]
    assert "activation_form" in loops
    refs = [e["value"] for e in events if e["event"] == "slot" and e["name"] == "matricule_ref"]
    # The validation action first refused the mistyped value (slot reset to None), then kept the good one.
    assert None in refs and any(isinstance(v, str) and v.startswith("pi_") for v in refs)
    bot_names = services.rasa.responses(chat.id)
    assert "utter_err_matricule_checksum" in bot_names
    assert bot_names.count("utter_ask_matricule_ref") == 2
