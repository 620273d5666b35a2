"""Production layout: a restart of every service between two turns, one Rasa instance killed, no secret stored.

Named to run after the conversation tests of this package (the restart and the kill change the
running layout; the kill comes last).
"""

from __future__ import annotations

import httpx
import psycopg
import pytest

from tests.support import SECRETS, UTTERANCES, Chat, activate, log_in, new_letter

pytestmark = pytest.mark.services


def user_turn_ids(services, conversation_id: str) -> list[str]:
    """Turn ids (gateway metadata) of the conversation's user events, in order, from a live Rasa instance."""
    events = services.rasa.tracker(conversation_id)["events"]
    return [str((e.get("metadata") or {}).get("turn_id") or "") for e in events if e.get("event") == "user"]


def test_a_restart_of_every_service_between_two_turns_loses_nothing(services):
    """Activation: matricule given, every service (PostgreSQL and Redis too) restarted, then the code."""
    patient = new_letter(services)
    chat = Chat(services.gateway_url, services.key, services.env, "fr")
    chat.say(UTTERANCES["fr"]["activate"])
    chat.protect(patient["matricule"])
    assert chat.pending == "activation_code"
    before = services.rasa.responses(chat.id)

    services.launcher.stop(stores=True)
    with pytest.raises(httpx.HTTPError):
        httpx.get(services.gateway_url + "/health", timeout=2)
    services.launcher.start(timeout_s=600)

    assert services.rasa.responses(chat.id) == before  # the tracker survived in PostgreSQL
    chat.protect(patient["activation_code"])  # the form goes on where it was; the gateway knew the pending kind
    assert chat.pending == "password"
    chat.protect(patient["password"])
    chat.protect(patient["password"])
    email_button = next(b for b in chat.buttons if "email" in b["payload"])
    chat.choose(email_button["payload"])
    chat.protect(patient["email"])
    assert chat.pending == "otp"
    chat.protect(chat.outbox_code(patient["email"]))
    assert services.rasa.responses(chat.id)[-1] == "utter_activation_done"
    names = services.rasa.responses(chat.id)
    assert names.count("utter_ask_activation_code_ref") == 1  # nothing asked twice, nothing lost


def test_a_retried_request_with_the_same_key_is_answered_once(services):
    """A client that times out and sends the same turn again (same Idempotency-Key) gets one turn."""
    patient = new_letter(services)
    activate(services, "en", patient)
    chat = Chat(services.gateway_url, services.key, services.env, "en")
    headers = {"Idempotency-Key": "retry-" + chat.id}
    first = chat.client.post(f"{chat.base}/messages", json={"text": UTTERANCES["en"]["login"]}, headers=headers)
    again = chat.client.post(f"{chat.base}/messages", json={"text": UTTERANCES["en"]["login"]}, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert services.rasa.responses(chat.id).count("utter_ask_matricule_ref") == 1
    assert len(user_turn_ids(services, chat.id)) == 1


def test_one_rasa_instance_killed_mid_conversation_the_other_goes_on(services):
    """rasa-1 dies (SIGKILL) between two turns of a login; every following turn is answered, once."""
    patient = new_letter(services)
    activate(services, "de", patient)
    chat = Chat(services.gateway_url, services.key, services.env, "de")
    chat.say(UTTERANCES["de"]["login"])
    chat.protect(patient["matricule"])
    assert chat.pending == "password"

    services.launcher.kill("rasa-1")

    chat.protect(patient["password"])  # failover is the gateway's business: the client sees a plain answer
    assert chat.pending == "otp"
    chat.protect(chat.outbox_code(patient["email"]))
    assert services.rasa.responses(chat.id)[-1] in {"utter_ask_terms", "utter_offer_pin", "utter_logged_in"}
    turns = user_turn_ids(services, chat.id)
    assert len(turns) == len(set(turns)) == 4  # login text, matricule, password, code: each once
    health = httpx.get(services.gateway_url + "/health", timeout=10)
    assert health.status_code == 200  # one Rasa instance is enough to serve


def test_no_secret_in_the_postgresql_tracker_store_the_audit_table_or_the_logs(services):
    """Invariant 1 on the production layout: tracker events and audit rows in PostgreSQL, every log file."""
    patient = new_letter(services)
    activate(services, "fr", patient)
    log_in(services, "fr", patient)
    dsp_url = services.env["DSP_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    places: dict[str, str] = {}
    with psycopg.connect(services.tracker_url) as db:
        places["tracker store"] = "\n".join(str(row) for row in db.execute("SELECT * FROM events"))
    with psycopg.connect(dsp_url) as db:
        places["audit table"] = "\n".join(str(row) for row in db.execute("SELECT * FROM audit_events"))
    for log in (services.state_dir / "logs").rglob("*.log"):
        places[f"log {log.name}"] = log.read_text(encoding="utf-8", errors="replace")
    assert places["tracker store"] and places["audit table"]
    assert any(len(s) >= 6 for s in SECRETS.values)
    leaks = SECRETS.leaks(places)
    assert not leaks, leaks
