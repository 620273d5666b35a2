"""After the conversations: no secret in Rasa's tracker store, any log, or the audit table.

Named to run after the conversation tests (pytest runs files in order); it also drives one full
activation and login itself, so it checks real secrets even when run alone.
"""

from __future__ import annotations

import sqlite3

import httpx
import pytest

from tests.support import SECRETS, Chat
from tests.test_conversations import activate, log_in, new_letter

pytestmark = pytest.mark.services


def stored_text(services) -> dict[str, str]:
    """Return every place to scan, as text: tracker rows, each log file, audit rows."""
    places: dict[str, str] = {}
    tracker_db = services.state_dir / "rasa" / "tracker.sqlite3"
    with sqlite3.connect(tracker_db) as db:
        places["tracker store"] = "\n".join(str(row) for row in db.execute("SELECT * FROM events"))
    with sqlite3.connect(services.state_dir / "dsp.sqlite3") as db:
        places["audit table"] = "\n".join(str(row) for row in db.execute("SELECT * FROM audit_events"))
    for log in (services.state_dir / "logs").glob("*.log"):
        places[f"log {log.name}"] = log.read_text(encoding="utf-8", errors="replace")
    return places


def reset_on_the_web_page(services, patient) -> None:
    """Ask a reset in the chat, then set the new password on the e-mailed link's page."""
    chat = Chat(services.gateway_url, services.key, services.env, "en")
    chat.say("I forgot my password")
    chat.protect(patient["matricule"])
    chat.protect(patient["email"])
    link = next(w for w in chat.outbox_body(patient["email"]).split() if "reset-password?token=" in w)
    token = link.split("token=")[1].strip(".,)")
    SECRETS.add(token)
    path = "/reset-password?token=" + token
    assert httpx.get(services.gateway_url + path).status_code == 200
    new_password = "Web-Page-Passphrase-" + token[:4]
    SECRETS.add(new_password)
    page = httpx.post(services.gateway_url + "/reset-password",
                      data={"token": token, "password": new_password, "confirm": new_password})
    assert page.status_code == 200 and "<form" not in page.text  # done: no form again
    patient["password"] = new_password


def test_no_secret_reaches_tracker_logs_or_audit(services):
    patient = new_letter(services)
    activate(services, "de", patient)
    log_in(services, "de", patient, wrong_code_first=True)
    reset_on_the_web_page(services, patient)
    log_in(services, "en", patient)
    places = stored_text(services)
    assert places["tracker store"] and places["audit table"]
    assert len(SECRETS.values) >= 5
    leaks = SECRETS.leaks(places)
    assert not leaks, leaks


def test_no_service_has_a_secret_on_its_command_line(services):
    """`ps` shows command lines to every local user: Rasa's token and the gateway key stay off them."""
    secrets = [services.env["RASA_AUTH_TOKEN"], services.key]
    for name, pid in services.launcher.pids().items():
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            command = cmdline.read().decode(errors="replace")
        assert not any(secret in command for secret in secrets), name
