"""Test helpers: a gateway client that talks like a front end, and access to what Rasa stored."""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
DSP = REPO / ".venv" / "bin" / "dsp"


@dataclass
class Secrets:
    """Every secret value used by the tests, scanned for at the end (invariant 1)."""

    values: set[str] = field(default_factory=set)

    def add(self, *values: str) -> None:
        """Remember values that must never appear in the tracker, logs or audit table."""
        self.values.update(v for v in values if v)


SECRETS = Secrets()


def run_dsp(env: dict[str, str], *args: str) -> Any:
    """Run the `dsp` admin command with the test's environment and return its JSON output."""
    out = subprocess.run([str(DSP), *args], capture_output=True, text=True, env=env, timeout=120, check=True)
    return json.loads(out.stdout)


def run_dsp_lines(services: Any, *args: str) -> list[str]:
    """Run the `dsp` admin command with the services' environment and return its non-empty output lines."""
    out = subprocess.run([str(DSP), *args], capture_output=True, text=True, env=services.env, timeout=120,
                         check=True)
    return [line for line in out.stdout.splitlines() if line.strip()]


class Chat:
    """One conversation through the gateway, as a front end would hold it."""

    def __init__(self, base_url: str, key: str, env: dict[str, str], language: str | None = None) -> None:
        self.id = "t-" + uuid.uuid4().hex[:12]
        self.base = f"{base_url}/v1/conversations/{self.id}"
        self.client = httpx.Client(timeout=120, headers={"Authorization": f"Bearer {key}"})
        self.env = env
        self.language = language
        self.last: list[dict[str, Any]] = []

    def say(self, text: str) -> list[dict[str, Any]]:
        """Send free text; return the assistant's messages."""
        body: dict[str, Any] = {"text": text}
        if self.language:
            body["language"] = self.language
        response = self.client.post(f"{self.base}/messages", json=body)
        assert response.status_code == 200, response.text
        self.last = response.json()["messages"]
        return self.last

    def choose(self, payload: str) -> list[dict[str, Any]]:
        """Send a button's payload."""
        response = self.client.post(f"{self.base}/messages", json={"payload": payload})
        assert response.status_code == 200, response.text
        self.last = response.json()["messages"]
        return self.last

    def upload(self, name: str, data: bytes, mime: str = "application/octet-stream") -> dict[str, Any]:
        """Send a file to the /files endpoint; return the whole reply (messages and upload outcome)."""
        response = self.client.post(f"{self.base}/files", files={"file": (name, data, mime)},
                                    data={"language": self.language} if self.language else None)
        assert response.status_code == 200, response.text
        body = response.json()
        self.last = body["messages"]
        return dict(body)

    def download(self, url: str) -> httpx.Response:
        """Fetch a document offered in a reply (its token is a capability: never in a log)."""
        SECRETS.add(url.rstrip("/").rsplit("/", 1)[-1])
        return self.client.get(self.base.split("/v1/")[0] + url)

    def protect(self, value: str) -> list[dict[str, Any]]:
        """Answer the pending protected-input request."""
        SECRETS.add(value)
        response = self.client.post(f"{self.base}/protected", json={"value": value})
        assert response.status_code == 200, response.text
        self.last = response.json()["messages"]
        return self.last

    @property
    def pending(self) -> str | None:
        """Kind of the protected input asked in the last reply, if any."""
        for message in reversed(self.last):
            if message.get("protected_input"):
                return str(message["protected_input"]["kind"])
        return None

    @property
    def buttons(self) -> list[dict[str, str]]:
        """Buttons of the last reply."""
        for message in reversed(self.last):
            if message.get("buttons"):
                return list(message["buttons"])
        return []

    @property
    def text(self) -> str:
        """All texts of the last reply."""
        return "\n".join(m.get("text") or "" for m in self.last)

    def outbox_code(self, address: str) -> str:
        """Read the one-time code last sent to `address` (embedded outbox)."""
        message = run_dsp(self.env, "outbox", "--to", address, "--last")
        match = re.search(r"(?<![0-9A-Za-z])([0-9]{6,8})(?![0-9A-Za-z])", message["body"])
        assert match, "no code in the message"
        SECRETS.add(match.group(1))
        return match.group(1)

    def outbox_body(self, address: str) -> str:
        """Return the body of the last message sent to `address`."""
        return str(run_dsp(self.env, "outbox", "--to", address, "--last")["body"])


class RasaTracker:
    """Reads a conversation's tracker through Rasa's HTTP API (to assert response names)."""

    def __init__(self, rasa_url: str, token: str) -> None:
        self.rasa_url = rasa_url
        self.token = token

    def tracker(self, conversation_id: str) -> dict[str, Any]:
        """Return the whole tracker."""
        response = httpx.get(f"{self.rasa_url}/conversations/{conversation_id}/tracker",
                             params={"token": self.token, "include_events": "ALL"}, timeout=30)
        response.raise_for_status()
        return dict(response.json())

    def responses(self, conversation_id: str) -> list[str]:
        """Names of the responses the bot uttered, in order."""
        return [e.get("metadata", {}).get("utter_action", "")
                for e in self.tracker(conversation_id)["events"] if e.get("event") == "bot"]


def free_port() -> int:
    """Return a free TCP port on loopback."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_env(state_dir: Path) -> dict[str, str]:
    """Environment of the services and CLI calls of one test session."""
    return {**os.environ, "DSP_STATE_DIR": str(state_dir),
            "DSP_DATABASE_URL": f"sqlite:///{state_dir}/dsp.sqlite3",
            "GATEWAY_API_KEY": "test-key-" + uuid.uuid4().hex[:8]}


# --------------------------------------------------------------------------- journeys

UTTERANCES = {
    "fr": {"activate": "Bonjour, je voudrais activer mon compte eSanté avec la lettre",
           "login": "je veux me connecter à mon dossier", "reset": "j'ai oublié mon mot de passe",
           "cancel": "annuler"},
    "de": {"activate": "Hallo, ich möchte mein eSanté-Konto mit dem Aktivierungscode aktivieren",
           "login": "Ich möchte mich bei meiner Akte anmelden", "reset": "Ich habe mein Passwort vergessen",
           "cancel": "abbrechen"},
    "en": {"activate": "Hello, I want to activate my eSanté account with the letter I received",
           "login": "I want to log in to my record", "reset": "I forgot my password", "cancel": "cancel"},
}


def mistype(matricule: str) -> str:
    """Return the matricule with its last (Verhoeff) digit changed."""
    return matricule[:-1] + str((int(matricule[-1]) + 1) % 10)


def new_letter(services, with_email: bool = True, name: tuple[str, str] | None = None) -> dict[str, str]:
    """Issue an activation letter for a new test patient (optionally with a given and family name)."""
    email = f"p-{uuid.uuid4().hex[:8]}@example.org"
    names = ["--given-name", name[0], "--family-name", name[1]] if name else []
    letter = run_dsp(services.env, "issue-letter", "--email", email, *names) if with_email else \
        run_dsp(services.env, "issue-letter", "--phone", "+352621123456", *names)
    SECRETS.add(letter["matricule"], letter["activation_code"], email)
    return {"matricule": letter["matricule"], "activation_code": letter["activation_code"], "email": email,
            "password": "Velo-Rouge-" + uuid.uuid4().hex[:8]}


def activate(services, language: str, patient: dict[str, str]) -> Chat:
    """Activate the account of `patient` through the chat, the happy path."""
    chat = Chat(services.gateway_url, services.key, services.env, language)
    chat.say(UTTERANCES[language]["activate"])
    assert chat.pending == "matricule"
    chat.protect(patient["matricule"])
    assert chat.pending == "activation_code"
    chat.protect(patient["activation_code"])
    assert chat.pending == "password"
    chat.protect(patient["password"])
    assert chat.pending == "password_confirm"
    chat.protect(patient["password"])
    email_button = next(b for b in chat.buttons if "email" in b["payload"])
    chat.choose(email_button["payload"])
    assert chat.pending == "email"
    chat.protect(patient["email"])
    assert chat.pending == "otp"
    chat.protect(chat.outbox_code(patient["email"]))
    assert chat.pending is None
    assert services.rasa.responses(chat.id)[-1] == "utter_activation_done"
    return chat


def log_in(services, language: str, patient: dict[str, str], wrong_code_first: bool = False) -> Chat:
    """Log in through the chat; accept the terms if asked; decline the PIN offer."""
    chat = Chat(services.gateway_url, services.key, services.env, language)
    chat.say(UTTERANCES[language]["login"])
    assert chat.pending == "matricule"
    chat.protect(patient["matricule"])
    assert chat.pending == "password"
    chat.protect(patient["password"])
    assert chat.pending == "otp"
    if wrong_code_first:
        chat.protect("000000")
        assert chat.pending == "otp"
        assert "utter_err_otp_wrong" in services.rasa.responses(chat.id)
    chat.protect(chat.outbox_code(patient["email"]))
    return chat


def logged_in(services, language: str, name: tuple[str, str] | None = None) -> tuple[Chat, dict[str, str]]:
    """Activate a new patient's account, log in on a new conversation and accept the terms of use."""
    patient = new_letter(services, name=name)
    activate(services, language, patient)
    chat = log_in(services, language, patient)
    assert services.rasa.responses(chat.id)[-1] == "utter_ask_terms"
    chat.say({"fr": "oui", "de": "ja", "en": "yes"}[language])
    assert "utter_logged_in" in services.rasa.responses(chat.id)[-2:]
    return chat, patient
