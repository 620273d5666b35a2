"""Test helpers: a gateway client that talks like a front end, and access to what Rasa stored."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
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

    def leaks(self, places: dict[str, str]) -> list[tuple[str, str]]:
        """Return (place, secret prefix) for each secret found in a place's text.

        A secret counts as found only as a whole token: six digits inside a longer number (the
        fraction of a timestamp such as 1796085138.557861, a hex id) are not that code. Secrets
        shorter than six characters or of one repeated character are too common to scan for.
        """
        return [(where, secret[:2] + "…") for where, text in places.items() for secret in sorted(self.values)
                if len(secret) >= 6 and len(set(secret)) > 1
                and re.search(rf"(?<![0-9A-Za-z.]){re.escape(secret)}(?![0-9A-Za-z])", text)]


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


def outbox_code(env: dict[str, str], address: str) -> str:
    """Read the one-time code last sent to `address` (embedded outbox); it joins the secrets scanned for."""
    message = run_dsp(env, "outbox", "--to", address, "--last")
    match = re.search(r"(?<![0-9A-Za-z])([0-9]{6,8})(?![0-9A-Za-z])", message["body"])
    assert match, "no code in the message"
    SECRETS.add(match.group(1))
    return match.group(1)


def staff(services: Any, code: str) -> Any:
    """Run helpdesk domain code as staff would: a subprocess on the services' database.

    `code` runs inside ``with UnitOfWork() as uow:`` with `helpdesk` imported and must assign a
    JSON-serialisable `result`; the unit of work is committed after it.
    """
    script = "\n".join(["import json", "from bot.dsp import helpdesk", "from bot.dsp.uow import UnitOfWork",
                        "with UnitOfWork() as uow:", textwrap.indent(textwrap.dedent(code), "    "),
                        "    uow.commit()", "print(json.dumps(result, default=str))"])
    done = subprocess.run([sys.executable, "-c", script], env=services.env, cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


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
        return outbox_code(self.env, address)

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


# --------------------------------------------------------------------------- voice (issue 7)

#: Number words 0..19 and the tens, as a caller says them (independent of the gateway's parser).
_SAID_UNITS = {
    "fr": "zéro un deux trois quatre cinq six sept huit neuf dix onze douze treize quatorze quinze seize "
          "dix-sept dix-huit dix-neuf".split(),
    "de": "null eins zwei drei vier fünf sechs sieben acht neun zehn elf zwölf dreizehn vierzehn fünfzehn "
          "sechzehn siebzehn achtzehn neunzehn".split(),
    "en": "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
          "sixteen seventeen eighteen nineteen".split(),
}
_SAID_TENS = {"fr": ["", "", "vingt", "trente", "quarante", "cinquante", "soixante"],
              "de": ["", "", "zwanzig", "dreißig", "vierzig", "fünfzig", "sechzig", "siebzig", "achtzig", "neunzig"],
              "en": ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]}
#: Symbols of an e-mail address as said aloud.
_SAID_SYMBOLS = {"fr": {"@": "arobase", ".": "point", "-": "tiret", "_": "tiret bas"},
                 "de": {"@": "at", ".": "Punkt", "-": "Bindestrich", "_": "Unterstrich"},
                 "en": {"@": "at", ".": "dot", "-": "dash", "_": "underscore"}}


def said_number(n: int, language: str) -> str:
    """Return 0..99 as a caller says it ("quatre-vingt-dix-sept", "siebenundneunzig", "ninety-seven")."""
    units, tens = _SAID_UNITS[language], _SAID_TENS[language]
    if n < 20:
        return units[n]
    ten, unit = divmod(n, 10)
    if language == "de":
        return tens[ten] if not unit else f"{'ein' if unit == 1 else units[unit]}und{tens[ten]}"
    if language == "en":
        return tens[ten] if not unit else f"{tens[ten]}-{units[unit]}"
    if ten in (7, 9):  # soixante-dix-sept, quatre-vingt-onze
        base = "soixante" if ten == 7 else "quatre-vingt"
        return f"{base} et onze" if n == 71 else f"{base}-{units[10 + unit]}"
    if ten == 8:
        return "quatre-vingts" if not unit else f"quatre-vingt-{units[unit]}"
    return tens[ten] if not unit else f"{tens[ten]} et un" if unit == 1 else f"{tens[ten]}-{units[unit]}"


def said_digits(value: str, language: str, by: int = 2) -> str:
    """Return digits as a caller says them: in groups of `by` ("19 85 04" -> "dix-neuf, quatre-vingt-cinq,
    zéro quatre"), a group with a leading zero digit by digit, groups separated by a pause (a comma)."""
    groups = [value[i:i + by] for i in range(0, len(value), by)]
    said = []
    for group in groups:
        if group.startswith("0") or len(group) == 1 or by == 1:
            said.append(" ".join(_SAID_UNITS[language][int(d)] for d in group))
        else:
            said.append(said_number(int(group), language))
    return ", ".join(said)


def said_characters(value: str, language: str, words: bool = False) -> str:
    """Return a code or an e-mail address said character by character ("K sept Q", "p tiret un arobase").

    With `words`, a part made of 3 letters or more is said as a word ("example", "org").
    """
    out = []
    for word in re.split(r"([@.\-_])", value):
        if word in _SAID_SYMBOLS[language]:
            out.append(_SAID_SYMBOLS[language][word])
        elif words and word.isalpha() and len(word) > 2:
            out.append(word)  # "example", "org": said as words
        else:
            out.extend(_SAID_UNITS[language][int(ch)] if ch.isdigit() else ch for ch in word)
    return " ".join(part for part in out if part)


class VoiceChat:
    """One call through the gateway's voice endpoint: transcribed speech in, speech out.

    Every reply's SSML is parsed with an XML parser; `turns` counts the caller's utterances.
    """

    def __init__(self, services: Any, language: str | None = None) -> None:
        self.id = "v-" + uuid.uuid4().hex[:12]
        self.url = f"{services.gateway_url}/v1/voice/{self.id}"
        self.client = httpx.Client(timeout=120, headers={"Authorization": f"Bearer {services.key}"})
        self.env = services.env
        self.language = language
        self.turns = 0
        self.last: dict[str, Any] = {}
        self.transcript: list[tuple[str, str]] = []

    def say(self, heard: str, secret: bool = False) -> dict[str, Any]:
        """Send what speech recognition heard ("" for silence); return the voice reply.

        Args:
            heard: the utterance.
            secret: the utterance says a secret: it must never appear in a log or the tracker.
        """
        import xml.etree.ElementTree as ET

        if secret:
            SECRETS.add(heard)
        body: dict[str, Any] = {"text": heard}
        if self.language:
            body["language"] = self.language
        response = self.client.post(self.url, json=body)
        assert response.status_code == 200, response.text
        self.last = response.json()
        root = ET.fromstring(self.last["ssml"])  # noqa: S314 - the gateway's own output
        assert root.tag == "{http://www.w3.org/2001/10/synthesis}speak", self.last["ssml"]
        self.turns += 1
        self.transcript.append(("[secret]" if secret else heard, self.last["text"]))
        return self.last

    @property
    def text(self) -> str:
        """What the assistant said last (plain text)."""
        return str(self.last.get("text") or "")

    @property
    def pending(self) -> str | None:
        """Kind of the protected input the last reply asked for, if any."""
        return (self.last.get("protected_input") or {}).get("kind")

    def outbox_code(self, address: str) -> str:
        """Read the one-time code last sent to `address` (embedded outbox)."""
        return outbox_code(self.env, address)
