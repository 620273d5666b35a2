"""Terminal chat: a client of the gateway for `make run`.

Buttons are shown as numbered choices (type the number), protected inputs are read without
echo (getpass), and the messages the demo "sends" by SMS or e-mail are printed from the outbox.
A file is sent with ``/file PATH`` (or by typing its path when the assistant asks for one); a
document the assistant sends is saved under ``<DSP_STATE_DIR>/downloads/``. Ctrl-D or Ctrl-C leaves.

While the conversation has a helpdesk ticket (a reply carried a ``handoff``), a background thread
(`HandoffListener`) long-polls the conversation's outbox and prints what the helpdesk agent writes
as it arrives, on a line of its own, then shows the prompt again; it stops when the ticket is closed
(the closing notice arrived) or when the chat ends. While an agent holds the conversation the
assistant is silent: a reply without messages prints nothing.
"""

from __future__ import annotations

import getpass
import os
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import httpx

from bot.gateway.settings import secret_file

PROMPTS = {
    "fr": {"you": "vous", "private": "(saisie privée, rien ne s'affiche ; Entrée seule pour revenir)",
           "choice": "Tapez le numéro ou écrivez.",
           "sent": "envoyé à", "bye": "Au revoir.", "error": "Le service ne répond pas",
           "file_saved": "document enregistré :", "no_file": "Fichier introuvable :",
           "file_hint": "(tapez le chemin du fichier, ou /file CHEMIN)"},
    "de": {"you": "Sie", "private": "(private Eingabe, nichts wird angezeigt; nur Enter: zurück)",
           "choice": "Nummer eingeben oder schreiben.", "sent": "gesendet an", "bye": "Auf Wiedersehen.",
           "error": "Der Dienst antwortet nicht", "file_saved": "Dokument gespeichert:",
           "no_file": "Datei nicht gefunden:", "file_hint": "(Dateipfad eingeben oder /file PFAD)"},
    "en": {"you": "you", "private": "(private entry, nothing is shown; Enter alone to go back)",
           "choice": "Type the number or write.",
           "sent": "sent to", "bye": "Goodbye.", "error": "The service does not answer",
           "file_saved": "document saved:", "no_file": "File not found:",
           "file_hint": "(type the file's path, or /file PATH)"},
}
KIND_LABELS = {
    "fr": {"matricule": "Matricule", "activation_code": "Code d'activation", "password": "Mot de passe",
           "password_confirm": "Mot de passe (confirmation)", "email": "E-mail", "phone": "Numéro de portable",
           "otp": "Code à usage unique", "reset_token": "Lien ou code de l'e-mail", "pin": "Code PIN",
           "pin_confirm": "Code PIN (confirmation)"},
    "de": {"matricule": "Matrikelnummer", "activation_code": "Aktivierungscode", "password": "Passwort",
           "password_confirm": "Passwort (Bestätigung)", "email": "E-Mail", "phone": "Handynummer",
           "otp": "Einmalcode", "reset_token": "Link oder Code aus der E-Mail", "pin": "PIN-Code",
           "pin_confirm": "PIN-Code (Bestätigung)"},
    "en": {"matricule": "Matricule", "activation_code": "Activation code", "password": "Password",
           "password_confirm": "Password (again)", "email": "E-mail", "phone": "Mobile number",
           "otp": "One-time code", "reset_token": "Link or code from the e-mail", "pin": "PIN",
           "pin_confirm": "PIN (again)"},
}


#: Serialises what the chat and the helpdesk listener print (their lines never mix).
PRINT_LOCK = threading.RLock()


def wrapped(text: str) -> list[str]:
    """Return the lines of a message as the chat prints them (indented, wrapped at 90 columns)."""
    return [textwrap.fill(paragraph, width=90, initial_indent="  ", subsequent_indent="  ") if paragraph else ""
            for paragraph in text.split("\n")]


def typed_so_far() -> str:
    """Return what the user has typed on the input line so far (readline), or "" when unknown."""
    try:
        import readline
    except ImportError:  # pragma: no cover - no readline on this platform
        return ""
    return str(readline.get_line_buffer())


class HandoffListener:
    """Long-polls a conversation's outbox in a thread and prints the helpdesk agent's messages.

    `GET <outbox_url>?wait=<wait_s>` answers `{"messages": [{"text"…}], "language", "handoff"}` as soon as
    a message arrives, each message once. The thread prints them (on a new line, then the prompt
    again with what was typed so far — never what a private entry holds) and stops when `handoff` is
    null (the ticket was closed: its notice is printed first) or when `stop()` is called. A failed
    call waits (1 s doubling up to 30 s) and tries again; nothing is printed about it.

    Attributes:
        prompt: the prompt to show again after printing ("" for none).
        private: True while the prompt is a private entry (what was typed is then never shown).
    """

    def __init__(self, outbox_url: str, headers: dict[str, str], *, wait_s: float = 20.0,
                 out: TextIO | None = None, backoff_first_s: float = 1.0, backoff_max_s: float = 30.0,
                 min_interval_s: float = 0.5) -> None:
        self.outbox_url = outbox_url
        self.headers = headers
        self.wait_s = wait_s
        self.out = out
        self.backoff_first_s = backoff_first_s
        self.backoff_max_s = backoff_max_s
        self.min_interval_s = min_interval_s
        self.prompt = ""
        self.private = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """True while the thread polls."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start polling (nothing when already polling)."""
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="helpdesk-outbox", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 0.0) -> None:
        """Ask the thread to stop (it ends after its current call: a daemon thread never delays the exit)."""
        self._stop.set()
        if self._thread is not None and timeout_s > 0:
            self._thread.join(timeout_s)

    def ask(self, read: Callable[[str], str], prompt: str, private: bool = False) -> str:
        """Read a line with `read(prompt)` (input or getpass); the prompt is shown again after a message."""
        self.prompt, self.private = prompt, private
        try:
            return read(prompt)
        finally:
            self.prompt, self.private = "", False

    def _run(self) -> None:
        delay = self.backoff_first_s
        with httpx.Client(headers=self.headers, timeout=httpx.Timeout(self.wait_s + 15, connect=5)) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = client.get(self.outbox_url, params={"wait": self.wait_s})
                    response.raise_for_status()
                    body = response.json()
                    if not isinstance(body, dict):
                        raise ValueError("not an object")
                except (httpx.HTTPError, ValueError):
                    self._stop.wait(delay)
                    delay = min(delay * 2, self.backoff_max_s)
                    continue
                delay = self.backoff_first_s
                texts = [str(m["text"]) for m in body.get("messages") or [] if isinstance(m, dict) and m.get("text")]
                if texts:
                    self.emit(texts)
                if body.get("handoff") is None:
                    return  # the ticket is closed: the assistant answers again
                if not texts and time.monotonic() - started < self.min_interval_s:
                    self._stop.wait(self.min_interval_s)

    def emit(self, texts: list[str]) -> None:
        """Print messages on lines of their own, then the prompt again (with the text typed so far)."""
        out = self.out or sys.stdout
        with PRINT_LOCK:
            tty = out.isatty()
            out.write("\r\033[K" if tty else "\n")  # clear the half-typed input line
            for message in texts:
                out.write("\n".join(wrapped(message)) + "\n")
            if self.prompt:
                out.write(self.prompt + (typed_so_far() if tty and not self.private else ""))
            out.flush()


class OutboxWatcher:
    """Prints the SMS and e-mails that the embedded notifier wrote since the last look."""

    def __init__(self) -> None:
        self.last_id = self._latest_id()

    @staticmethod
    def _latest_id() -> int:
        from bot.dsp.notify import outbox_since
        from bot.dsp.uow import UnitOfWork

        with UnitOfWork() as uow:
            messages = outbox_since(uow, 0)
        return messages[-1].id if messages else 0

    def show_new(self, words: dict[str, str]) -> None:
        """Print the messages sent since the last call."""
        from bot.dsp.notify import mask_address, outbox_since
        from bot.dsp.uow import UnitOfWork

        with UnitOfWork() as uow:
            messages = outbox_since(uow, self.last_id)
        for message in messages:
            self.last_id = message.id
            label = "SMS" if message.channel == "sms" else "E-mail"
            print(f"\n  ┌─ [{label} {words['sent']} {mask_address(message.channel, message.to_address)}]")
            for line in message.body.splitlines():
                print(f"  │ {line}")
            print("  └─")


def api_key() -> str:
    """Return the gateway key: GATEWAY_API_KEY, else the one generated in the state directory."""
    return os.environ.get("GATEWAY_API_KEY") or secret_file("gateway-api-key")


def downloads_dir() -> Path:
    """Return the folder where documents sent by the assistant are saved (created 0700)."""
    from bot.dsp import get_settings

    folder = Path(get_settings().state_dir) / "downloads"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


def save_download(client: httpx.Client, gateway_url: str, file: dict[str, Any]) -> Path:
    """Fetch a document offered in a reply and save it under a name that does not overwrite anything.

    Raises:
        httpx.HTTPError: the download failed.
    """
    response = client.get(gateway_url + str(file["url"]))
    response.raise_for_status()
    name = Path(str(file.get("name") or "document")).name or "document"
    target = downloads_dir() / name
    counter = 1
    while target.exists():
        target = target.with_name(f"{Path(name).stem}-{counter}{Path(name).suffix}")
        counter += 1
    target.write_bytes(response.content)
    target.chmod(0o600)
    return target


def expects_file(messages: list[dict[str, Any]]) -> bool:
    """Return True when the last message asks for a file."""
    return bool(messages) and (messages[-1].get("custom") or {}).get("expects") == "file"


def file_to_send(text: str, expecting: bool) -> Path | None:
    """Return the path of a file to upload: ``/file PATH``, or a typed path while a file is expected."""
    raw = text[6:].strip() if text.startswith("/file ") else (text if expecting else "")
    raw = raw.strip().strip("'\"")
    if not raw:
        return None
    path = Path(raw).expanduser()
    return path if (text.startswith("/file ") or path.is_file()) else None


def show(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
    """Print the assistant's messages; return the offered buttons and the pending protected kind."""
    buttons: list[dict[str, Any]] = []
    pending = None
    with PRINT_LOCK:
        for message in messages:
            if message.get("text"):
                for line in wrapped(str(message["text"])):
                    print(line)
            if message.get("buttons"):
                buttons = message["buttons"]
            if message.get("protected_input"):
                pending = message["protected_input"].get("kind")
        for number, button in enumerate(buttons, start=1):
            print(f"   {number}. {button['title']}")
    return buttons, pending


def chat(gateway_url: str, language: str | None = None, conversation: str | None = None) -> None:
    """Run the interactive chat until Ctrl-D / Ctrl-C (or the end of its input).

    Args:
        gateway_url: e.g. ``http://127.0.0.1:8000``.
        language: fr, de or en to fix the language; None lets the gateway detect it.
        conversation: Resume this conversation id instead of starting a new one.
    """
    conversation = conversation or "term-" + uuid.uuid4().hex[:12]
    headers = {"Authorization": f"Bearer {api_key()}"}
    base = f"{gateway_url}/v1/conversations/{conversation}"
    outbox = OutboxWatcher()
    helpdesk = HandoffListener(f"{base}/outbox", headers)
    lang = language or os.environ.get("DSP_DEFAULT_LANGUAGE", "fr")
    words = PROMPTS.get(lang, PROMPTS["fr"])
    buttons: list[dict[str, Any]] = []
    pending: str | None = None
    expecting = False
    print("\nMyDSP Assistant — français, Deutsch, English. "
          "Écrivez « bonjour » / Schreiben Sie „Hallo“ / Type \"hello\".\n")
    with httpx.Client(timeout=120, headers=headers) as client:
        while True:
            try:
                if pending:
                    label = KIND_LABELS.get(lang, KIND_LABELS["fr"]).get(pending, pending)
                    sys.stdout.flush()
                    value = helpdesk.ask(getpass.getpass, f"{label} {words['private']}: ", private=True)
                    if not value.strip():
                        pending = None  # an empty entry goes back to the open chat (e.g. to say "annuler")
                        continue
                    choice = value.strip()
                    if choice.isdigit() and len(choice) <= 2 and buttons and 1 <= int(choice) <= len(buttons):
                        # a choice shown with the question (e.g. "no e-mail address"): no secret is that short
                        payload = buttons[int(choice) - 1]["payload"]
                        response = client.post(f"{base}/messages", json={"payload": payload})
                    else:
                        response = client.post(f"{base}/protected", json={"value": value, "kind": pending})
                else:
                    if expecting:
                        print(f"  {words['file_hint']}")
                    text = helpdesk.ask(input, f"{words['you']}> ").strip()
                    if not text:
                        continue
                    path = file_to_send(text, expecting)
                    if path is not None:
                        if not path.is_file():
                            print(f"  {words['no_file']} {path}")
                            continue
                        with path.open("rb") as handle:
                            response = client.post(f"{base}/files", files={"file": (path.name, handle)},
                                                   data={"language": lang})
                    elif text.isdigit() and buttons and 1 <= int(text) <= len(buttons):
                        response = client.post(f"{base}/messages", json={"payload": buttons[int(text) - 1]["payload"]})
                    else:
                        body: dict[str, Any] = {"text": text}
                        if language:
                            body["language"] = language
                        response = client.post(f"{base}/messages", json=body)
            except (EOFError, KeyboardInterrupt):
                helpdesk.stop()
                print(f"\n{words['bye']}")
                return
            except httpx.HTTPError as exc:
                print(f"  {words['error']} ({type(exc).__name__}).")
                continue
            data = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
            buttons, pending = show(data.get("messages", []))
            if data.get("handoff"):
                helpdesk.start()  # a ticket is open: the agent's messages come through the outbox
            expecting = expects_file(data.get("messages", []))
            for message in data.get("messages", []):
                offered = message.get("file") or (
                    {"url": message["image"], "name": "image.png"} if str(message.get("image") or "").startswith("/")
                    else None)
                if offered:
                    try:
                        print(f"  [{words['file_saved']} {save_download(client, gateway_url, offered)}]")
                    except httpx.HTTPError as exc:
                        print(f"  {words['error']} ({type(exc).__name__}).")
            if data.get("language") in PROMPTS:
                lang = data["language"]
                words = PROMPTS[lang]
            outbox.show_new(words)


def main(argv: list[str] | None = None) -> int:
    """Command line: chat with an already running gateway (``make serve`` in another terminal)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bot.chat.terminal", description=main.__doc__)
    parser.add_argument("--gateway", default=os.environ.get("GATEWAY_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--language", choices=sorted(PROMPTS))
    parser.add_argument("--conversation", help="resume this conversation id")
    args = parser.parse_args(argv)
    chat(args.gateway.rstrip("/"), args.language, args.conversation)
    return 0


if __name__ == "__main__":
    sys.exit(main())
