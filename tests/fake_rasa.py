"""A small fake of Rasa's HTTP API on loopback, for the cluster tests (several instances, one tracker store).

Each `FakeRasa` serves, like `rasa run --enable-api`: POST /webhooks/rest/webhook (REST channel),
GET /status, GET /conversations/{id}/tracker, POST /conversations/{id}/tracker/events. The
instances of one `SharedStore` share the trackers and a per-conversation lock (as Rasa instances
share the tracker store and the Redis lock store). A `mode` makes an instance misbehave:

- "ok": run the turn, answer.
- "drop_before": close the connection without running the turn.
- "drop_after": run the turn (saved), then close the connection without an answer.
- "die_after": run the turn, then stop listening altogether (a killed instance).
- "die_before": stop listening without running the turn (killed while the request was in flight).
- "cancelled": like Rasa when its client gives up (read timeout): the turn is abandoned, not saved.
- "zombie_after": run the turn, then close every connection without an answer, this one and the next
  ones (a killed process while the kernel tears it down: connections accepted, then closed).
- "slow": run the turn after `delay_s` (the client's read timeout fires first), then answer.
- "error_after": run the turn, answer 500.
- "error_before": answer 500 without running it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class SharedStore:
    """What the fake instances share: trackers, conversation locks, and what happened."""

    trackers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    turns: list[tuple[str, str, str]] = field(default_factory=list)  # (instance, sender, turn_id)
    active: dict[str, int] = field(default_factory=dict)
    max_active: int = 0
    barriers: int = 0

    def lock(self, sender: str) -> asyncio.Lock:
        return self.locks.setdefault(sender, asyncio.Lock())

    def turn_ids(self, sender: str) -> list[str]:
        return [e["metadata"].get("turn_id") for e in self.trackers.get(sender, []) if e["event"] == "user"]


def answer_of(text: str) -> list[dict[str, Any]]:
    """The fake assistant's bot events for a user text: an echo with a button, then a plain text in two parts."""
    return [
        {"event": "bot", "timestamp": time.time(), "text": f"echo: {text}",
         "data": {"elements": None, "quick_replies": None, "buttons": [{"title": "Oui", "payload": "/affirm"}],
                  "attachment": None, "image": None, "custom": None}, "metadata": {"utter_action": "utter_echo"}},
        {"event": "bot", "timestamp": time.time(), "text": "first part\n\nsecond part",
         "data": {"elements": None, "quick_replies": None, "buttons": None, "attachment": None, "image": None,
                  "custom": {"expects": "file"}}, "metadata": {"utter_action": "utter_more"}},
    ]


def rest_output(sender: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the REST channel answers for `answer_of` (written out by hand, independently of the gateway's port)."""
    return [
        {"recipient_id": sender, "text": events[0]["text"], "buttons": events[0]["data"]["buttons"]},
        {"recipient_id": sender, "text": "first part"},
        {"recipient_id": sender, "text": "second part"},
        {"recipient_id": sender, "custom": {"expects": "file"}},
    ]


class FakeRasa:
    """One fake Rasa instance, served by `FakeRasaServers` on its own port."""

    def __init__(self, name: str, shared: SharedStore) -> None:
        self.name = name
        self.shared = shared
        self.mode = "ok"
        self.delay_s = 1.0
        self.port = 0
        self.received = 0
        self.zombie = False
        self.next_modes: list[str] = []  # modes of the next webhook requests, then `mode`
        self.server: asyncio.base_events.Server | None = None

    async def listen(self, port: int = 0) -> None:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", port or self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def die(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    async def run_turn(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        sender, text = body["sender"], body["message"]
        async with self.shared.lock(sender):
            self.shared.active[sender] = self.shared.active.get(sender, 0) + 1
            self.shared.max_active = max(self.shared.max_active, self.shared.active[sender])
            try:
                if self.mode == "slow":
                    await asyncio.sleep(self.delay_s)
                else:
                    await asyncio.sleep(0.02)
                events = [{"event": "user", "timestamp": time.time(), "text": text,
                           "metadata": body.get("metadata") or {}}, *answer_of(text)]
                self.shared.trackers.setdefault(sender, []).extend(events)
                self.shared.turns.append((self.name, sender, (body.get("metadata") or {}).get("turn_id")))
                return rest_output(sender, events[1:])
            finally:
                self.shared.active[sender] -= 1

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.zombie:
            writer.transport.abort()
            return
        try:
            request_line = (await reader.readline()).decode()
            if not request_line:
                return
            method, target, _ = request_line.split(" ", 2)
            headers = {}
            while (line := (await reader.readline()).decode().strip()):
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
            raw = await reader.readexactly(int(headers.get("content-length", "0")))
            url = urlsplit(target)
            query = parse_qs(url.query)
            status, payload = await self.route(method, url.path, query, json.loads(raw) if raw else None, reader)
            if status == 0:  # dropped
                writer.transport.abort()
                return
            data = json.dumps(payload).encode()
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + data)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def route(self, method: str, path: str, query: dict[str, list[str]], body: Any,
                    reader: asyncio.StreamReader) -> tuple[int, Any]:
        if path == "/status":
            return 200, {"model_id": "fake", "model_file": "fake.tar.gz"}
        if path == "/health":  # the action server's health (a fake instance can stand for one)
            return 200, {"status": "ok"}
        if path == "/webhooks/rest/webhook" and method == "POST":
            self.received += 1
            mode = self.next_modes.pop(0) if self.next_modes else self.mode
            if mode == "cancelled":
                await asyncio.sleep(self.delay_s)
                return 0, None
            if mode == "drop_before":
                return 0, None
            if mode == "die_before":
                await self.die()
                return 0, None
            if mode == "error_before":
                return 500, {"error": "boom"}
            out = await self.run_turn(body)
            if mode == "drop_after":
                return 0, None
            if mode == "die_after":
                await self.die()
                return 0, None
            if mode == "zombie_after":
                self.zombie = True
                return 0, None
            if mode == "error_after":
                return 500, {"error": "boom"}
            return 200, out
        if path.startswith("/conversations/") and query.get("token") != ["fake-token"]:
            return 401, {"error": "token"}
        if path.startswith("/conversations/") and path.endswith("/tracker/events") and method == "POST":
            sender = path.split("/")[2]
            async with self.shared.lock(sender):  # like Rasa: under the conversation lock, then refused
                self.shared.barriers += 1
                return 400, {"error": "no event"}
        if path.startswith("/conversations/") and path.endswith("/tracker") and method == "GET":
            sender = path.split("/")[2]
            return 200, {"sender_id": sender, "events": list(self.shared.trackers.get(sender, []))}
        return 404, {"error": "not found"}


class FakeRasaServers:
    """Fake Rasa instances sharing one store, served by an event loop in a background thread."""

    def __init__(self, count: int = 2) -> None:
        self.shared = SharedStore()
        self.instances = [FakeRasa(f"rasa-{n}", self.shared) for n in range(1, count + 1)]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> FakeRasaServers:
        self.thread.start()
        for instance in self.instances:
            self.call(instance.listen())
        return self

    def __exit__(self, *exc: object) -> None:
        for instance in self.instances:
            self.call(instance.die())
        self.call(self._cancel_handlers())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()

    @staticmethod
    async def _cancel_handlers() -> None:
        """Cancel the connections still open (keep-alive), so that the loop stops clean."""
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def revive(self, index: int) -> None:
        instance = self.instances[index]
        instance.mode, instance.zombie = "ok", False
        self.call(instance.listen(instance.port))

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{instance.port}" for instance in self.instances]
