"""The terminal chat during a helpdesk handoff: the agent's messages are printed as they arrive.

A small HTTP server on loopback plays the gateway (the outbox long-poll and the turns), scripted
by each test; no Rasa, no database.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from bot.chat import terminal

CONVERSATION = "term-0123456789ab"
OUTBOX = f"/v1/conversations/{CONVERSATION}/outbox"
CLAIMED = "Claire, du helpdesk, s'occupe de votre demande HD-000042."
AGENT = "Claire (helpdesk) : Bonjour, je regarde votre dossier."
CLOSED = "Claire a clôturé votre demande HD-000042. C'est de nouveau moi, l'assistant."
HELD = {"reference": "HD-000042", "status": "claimed", "agent": "Claire"}


class Script:
    """What the fake gateway answers, in order; each answer may first wait for an event of the test."""

    def __init__(self) -> None:
        self.gets: list[tuple[str, dict[str, list[str]], str]] = []
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.outbox: list[tuple[threading.Event | None, int, dict[str, Any]]] = []
        self.turns: list[dict[str, Any]] = []
        self.served = threading.Condition()
        self.hold_s = 0.3  # an empty long-poll lasts this long

    def get(self, path: str, query: dict[str, list[str]], auth: str) -> tuple[int, dict[str, Any]]:
        with self.served:
            self.gets.append((path, query, auth))
            self.served.notify_all()
        if not self.outbox:
            time.sleep(self.hold_s)
            return 200, {"messages": [], "language": "fr", "handoff": HELD}
        event, status, body = self.outbox.pop(0)
        if event is not None:
            assert event.wait(10)
        return status, body

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.served:
            self.posts.append((path, body))
            self.served.notify_all()
        return 200, self.turns.pop(0)

    def wait_for(self, condition: Callable[[], bool], limit_s: float = 10) -> None:
        """Block until condition() holds (checked whenever a request arrives)."""
        with self.served:
            assert self.served.wait_for(condition, limit_s), "timed out"


@pytest.fixture
def gateway() -> Iterator[tuple[str, Script]]:
    """The fake gateway's URL and script."""
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

        def answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            url = urlsplit(self.path)
            self.answer(*script.get(url.path, parse_qs(url.query), self.headers.get("Authorization", "")))

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            length = int(self.headers.get("Content-Length") or 0)
            self.answer(*script.post(self.path, json.loads(self.rfile.read(length) or b"{}")))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", script
    finally:
        server.shutdown()
        server.server_close()


def wait_until(condition: Callable[[], bool], limit_s: float = 10) -> None:
    """Wait (blocking) until condition() is true."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_listener_prints_each_message_then_the_prompt_and_stops_when_the_ticket_closes(gateway):
    url, script = gateway
    script.outbox = [(None, 503, {"detail": "down"}),  # a failure: waited out, then polled again
                     (None, 200, {"messages": [{"text": CLAIMED}], "language": "fr", "handoff": HELD}),
                     (None, 200, {"messages": [], "language": "fr", "handoff": HELD}),
                     (None, 200, {"messages": [{"text": AGENT}], "language": "fr", "handoff": HELD}),
                     (None, 200, {"messages": [{"text": CLOSED}], "language": "fr", "handoff": None})]
    out = io.StringIO()
    listener = terminal.HandoffListener(url + OUTBOX, {"Authorization": "Bearer k"}, wait_s=20, out=out,
                                        backoff_first_s=0.2)
    listener.prompt = "vous> "
    listener.start()
    wait_until(lambda: not listener.running)  # ended by itself with the closing notice
    assert len(script.gets) == 5 and script.outbox == []
    assert {(path, query["wait"][0], auth) for path, query, auth in script.gets} == {(OUTBOX, "20", "Bearer k")}
    assert out.getvalue() == f"\n  {CLAIMED}\nvous> \n  {AGENT}\nvous> \n  {CLOSED}\nvous> "
    time.sleep(0.4)
    assert len(script.gets) == 5  # no poll after the end


def test_the_listener_stops_on_exit_and_never_shows_a_private_entry(gateway, monkeypatch):
    url, script = gateway
    script.hold_s = 0.2

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    monkeypatch.setattr(terminal, "typed_so_far", lambda: "half-typed")
    listener = terminal.HandoffListener(url + OUTBOX, {}, wait_s=0.2, out=out)
    listener.start()
    wait_until(lambda: len(script.gets) >= 2)  # empty long-polls: it keeps polling while the ticket is open
    listener.stop(timeout_s=5)
    assert not listener.running
    polls = len(script.gets)
    time.sleep(0.4)
    assert len(script.gets) == polls and out.getvalue() == ""

    listener.prompt, listener.private = "Mot de passe (saisie privée) : ", True
    listener.emit([AGENT])
    assert out.getvalue() == f"\r\033[K  {AGENT}\nMot de passe (saisie privée) : "  # what was typed is not shown
    listener.private = False
    listener.prompt = "vous> "
    listener.emit([AGENT])
    assert out.getvalue().endswith(f"  {AGENT}\nvous> half-typed")  # the open line is shown again


def test_the_chat_listens_while_a_ticket_is_open_and_prints_nothing_for_a_relayed_text(gateway, monkeypatch,
                                                                                         capsys):
    url, script = gateway
    monkeypatch.setenv("GATEWAY_API_KEY", "term-key")

    class NoOutbox:
        def show_new(self, words: dict[str, str]) -> None:
            pass

    monkeypatch.setattr(terminal, "OutboxWatcher", NoOutbox)  # the SMS / e-mail outbox needs the database
    asking, relayed = threading.Event(), threading.Event()
    script.turns = [{"messages": [{"text": "Demande HD-000042 ouverte."}], "language": "fr",
                     "handoff": {"reference": "HD-000042", "status": "open", "agent": None}},
                    {"messages": [], "language": "fr", "handoff": HELD}]
    script.outbox = [(asking, 200, {"messages": [{"text": CLAIMED}], "language": "fr", "handoff": HELD}),
                     (relayed, 200, {"messages": [{"text": AGENT}], "language": "fr", "handoff": HELD}),
                     (None, 200, {"messages": [{"text": CLOSED}], "language": "fr", "handoff": None})]
    listeners: list[threading.Thread] = []

    def typed(prompt: str) -> str:
        number = len(script.posts)
        if number == 0:
            return "je veux parler au helpdesk"
        if number == 1:
            asking.set()  # the user is at the prompt when the agent claims the request
            script.wait_for(lambda: len(script.gets) >= 2)  # the claim was printed, the agent is writing
            listeners.extend(t for t in threading.enumerate() if t.name == "helpdesk-outbox")
            return "mon médecin ne voit plus mon dossier"
        relayed.set()
        script.wait_for(lambda: len(script.gets) >= 3)
        wait_until(lambda: not any(t.is_alive() for t in listeners))  # ended with the closing notice
        raise EOFError

    monkeypatch.setattr("builtins.input", typed)
    terminal.chat(url, "fr", CONVERSATION)
    assert [body for _, body in script.posts] == [{"text": "je veux parler au helpdesk", "language": "fr"},
                                                  {"text": "mon médecin ne voit plus mon dossier", "language": "fr"}]
    assert len(listeners) == 1 and len(script.gets) == 3
    lines = [line.strip() for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines[1:] == ["Demande HD-000042 ouverte.", CLAIMED, "vous>", AGENT, "vous>", CLOSED, "vous>",
                         "Au revoir."]
