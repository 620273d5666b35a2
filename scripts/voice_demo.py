"""A scripted voice call, to hear what a caller hears (`make voice-demo`).

Starts the action server, the Rasa server and the gateway on free loopback ports with a fresh
state directory (like the tests), issues an activation letter for a new fictitious patient, then
plays a call in French through the gateway's voice endpoint: activation (matricule said in pairs,
code letter by letter, e-mail spelled), a silence, "répète", login, the imaging of a study imported
for the demo, and goodbye. Each assistant turn is synthesised from its SSML with espeak-ng into
`var/voice-demo/NN-assistant.wav`; the transcript and the WAV paths are printed. What the caller
says at a private prompt is printed as "[private]", as a voice front end would log it.

espeak-ng implements SSML 1.0's <voice>, not SSML 1.1's <lang>: the French labels inside another
language are passed to it as <voice xml:lang="fr">.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bot.gateway import voice  # noqa: E402
from bot.launcher import Services  # noqa: E402
from tests.support import said_characters, said_digits  # noqa: E402

DSP = REPO / ".venv" / "bin" / "dsp"
OUT = REPO / "var" / "voice-demo"
ESPEAK_VOICES = {"fr": "fr", "de": "de", "en": "en-gb"}


def free_port() -> int:
    """Return a free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dsp(env: dict[str, str], *args: str) -> str:
    """Run the `dsp` admin command and return its output."""
    return subprocess.run([str(DSP), *args], capture_output=True, text=True, env=env, timeout=120,
                          check=True).stdout


def for_espeak(ssml: str) -> str:
    """Return SSML that espeak-ng reads: <lang xml:lang="fr-FR"> becomes <voice xml:lang="fr">."""
    ssml = re.sub(r'<lang xml:lang="([a-z]{2})-[A-Z]{2}">', r'<voice xml:lang="\1">', ssml)
    return ssml.replace("</lang>", "</voice>")


class Call:
    """The demo's call: says each line, prints the turn, writes the assistant's WAV."""

    def __init__(self, gateway_url: str, key: str, language: str) -> None:
        self.url = f"{gateway_url}/v1/voice/demo-{uuid.uuid4().hex[:8]}"
        self.client = httpx.Client(timeout=120, headers={"Authorization": f"Bearer {key}"})
        self.language = language
        self.turn = 0
        self.last: dict = {}

    def say(self, heard: str) -> dict:
        """Send one utterance; print it (hidden at a private prompt) and the answer; write the WAV."""
        private = bool(self.last.get("protected_input")) and voice.command_of(heard) is None
        response = self.client.post(self.url, json={"text": heard, "language": self.language})
        self.last = response.json()
        self.turn += 1
        wav = OUT / f"{self.turn:02d}-assistant.wav"
        espeak_voice = ESPEAK_VOICES.get(self.last.get("language") or self.language, "fr")
        subprocess.run(["espeak-ng", "-m", "-v", espeak_voice, "-s", "150", "-w", str(wav)],
                       input=for_espeak(self.last["ssml"]), text=True, check=True, timeout=120)
        shown = "[private]" if private and heard else (heard or "[silence]")
        print(f"\n{self.turn:02d} caller   : {shown}")
        print(f"   assistant: {self.last['text']}")
        notes = [str(wav.relative_to(REPO))]
        if self.last.get("protected_input"):
            notes.append(f"private prompt: {self.last['protected_input']['kind']}")
        if self.last.get("end"):
            notes.append("end of call")
        print(f"   ({', '.join(notes)})")
        return self.last


def main() -> int:
    """Run the demo call; return 0 when it went through."""
    if shutil.which("espeak-ng") is None:
        print("espeak-ng is missing: run `make speech` (Debian package espeak-ng).", file=sys.stderr)
        return 1
    state = Path(tempfile.mkdtemp(prefix="mydsp-voice-"))
    env_extra = {"DSP_STATE_DIR": str(state), "DSP_DATABASE_URL": f"sqlite:///{state}/dsp.sqlite3",
                 "GATEWAY_API_KEY": "voice-demo-" + uuid.uuid4().hex[:8],
                 "RASA_AUTH_TOKEN": "voice-demo-" + uuid.uuid4().hex[:8]}
    services = Services(gateway_port=free_port(), rasa_port=free_port(), actions_port=free_port(), env=env_extra,
                        telegram=False)
    env = services.environment()
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.wav"):
        old.unlink()
    print(f"Starting the services (state in {state}, about a minute)...", flush=True)
    dsp(env, "init-db")
    dsp(env, "seed-demo")
    services.start(timeout_s=420)
    try:
        email = f"demo-{uuid.uuid4().hex[:6]}@example.org"
        letter = json.loads(dsp(env, "issue-letter", "--email", email, "--given-name", "Lea", "--family-name",
                                "Demo"))
        password = "cheval orange batterie agrafe"
        call = Call(services.gateway_url, env_extra["GATEWAY_API_KEY"], "fr")

        def code_for(address: str) -> str:
            body = json.loads(dsp(env, "outbox", "--to", address, "--last"))["body"]
            return re.search(r"(?<![0-9A-Za-z])([0-9]{6,8})(?![0-9A-Za-z])", body).group(1)

        call.say("Bonjour, je voudrais activer mon compte eSanté avec la lettre")
        call.say("")  # silence: the question again
        call.say(said_digits(letter["matricule"], "fr"))
        call.say("répète")
        call.say(said_characters(letter["activation_code"], "fr"))
        call.say(password)
        call.say(password)
        call.say("un")
        call.say(said_characters(email, "fr", words=True))
        call.say(said_digits(code_for(email), "fr"))
        call.say("je veux me connecter à mon dossier")
        call.say(said_digits(letter["matricule"], "fr", by=1))
        call.say(password)
        call.say(said_digits(code_for(email), "fr", by=1))
        call.say("oui")
        call.say("non merci")
        from pydicom.data import get_testdata_file

        report = state / "Compte rendu scanner.txt"
        report.write_text("Scanner thoracique : pas d'anomalie décelée.", encoding="utf-8")
        dsp(env, "import-dicom", str(get_testdata_file("CT_small.dcm")), "--matricule", letter["matricule"],
            "--report", str(report))
        call.say("je veux voir mes radios et le rapport du scanner")
        call.say("le premier")
        call.say("au revoir")
        print(f"\n{call.turn} assistant turns written to {OUT.relative_to(REPO)}/ (play them with aplay or any "
              "audio player).")
        return 0
    finally:
        services.stop()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
