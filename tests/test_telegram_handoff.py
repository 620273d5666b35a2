"""Helpdesk handoff on Telegram: the gateway's outbox reaches the chats; a relayed text gets no answer.

The first tests run the real PTB stack against the fake Bot API (`tests/fake_telegram.py`) with the
gateway stubbed (httpx.MockTransport): no Rasa needed. The last ones (marker `services`) run the
whole stack: the helpdesk domain is driven in a subprocess with the services' environment, the bot
runs as `python -m bot.telegram` (polling mode: the outbox task starts in post_init).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from bot.telegram.app import build_application
from bot.telegram.gateway import GatewayClient, GatewayUnavailable
from bot.telegram.handlers import ALLOWED_UPDATES
from bot.telegram.outbox import OutboxDelivery, chat_of, start_outbox, stop_outbox
from bot.telegram.settings import TelegramSettings
from tests.fake_telegram import FakeBotApi
from tests.support import staff

TOKEN = "123456789:AAHk-Secret-Half-Of-The-Token_0123456"
CHAT = 5151
CLAIMED = "Claire, du helpdesk, s'occupe de votre demande HD-000042. Écrivez ici : vos messages lui sont transmis."
AGENT = "Claire (helpdesk) : Bonjour ! Votre accès (Dr. Müller) est-il *bloqué* ? [voir] 1+1=2 #test"
CLOSED = "Claire a clôturé votre demande HD-000042. C'est de nouveau moi, l'assistant : que puis-je faire ?"


def plain(markdown: str) -> str:
    """Undo the MarkdownV2 escaping of a text the bot sent."""
    return re.sub(r"\\(.)", r"\1", markdown)


def handoff(status: str | None) -> dict[str, Any] | None:
    """The `handoff` of a gateway reply."""
    return None if status is None else {"reference": "HD-000042", "status": status,
                                        "agent": "Claire" if status == "claimed" else None}


# --------------------------------------------------------------------------- the client

async def test_the_client_long_polls_the_outbox_and_refuses_what_is_not_the_contract():
    seen: list[httpx.Request] = []
    answers = [
        httpx.Response(200, json={"conversations": [
            {"conversation_id": "tg-42", "language": "de", "messages": [{"text": "x"}, "junk"],
             "handoff": handoff("claimed")},
            {"language": "fr", "messages": []},  # no id: skipped
        ]}),
        httpx.Response(503, json={"detail": "down"}),
        httpx.Response(401, json={"detail": "key"}),
        httpx.Response(200, json={"messages": []}),  # a turn's shape, not the outbox's
        httpx.Response(200, content=b"<html>"),
    ]

    def gateway(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers[len(seen) - 1]

    client = GatewayClient("http://gw", "gw-key", transport=httpx.MockTransport(gateway))
    try:
        [item] = await client.outbox("tg-", 20)
        for _ in range(4):
            with pytest.raises(GatewayUnavailable):
                await client.outbox("tg-", 20)
    finally:
        await client.aclose()
    assert item.conversation_id == "tg-42" and item.reply.messages == [{"text": "x"}]
    assert item.reply.language == "de" and item.reply.handoff == handoff("claimed") and item.reply.status == 200
    assert seen[0].method == "GET" and seen[0].url.path == "/v1/outbox"
    assert dict(seen[0].url.params) == {"prefix": "tg-", "wait": "20"}
    assert seen[0].headers["authorization"] == "Bearer gw-key"
    assert len(seen) == 5  # never retried by the client: the delivery loop polls again


def test_conversation_ids_map_to_chats():
    assert chat_of("tg-5151") == 5151 and chat_of("tg--100200") == -100200
    assert chat_of("term-ab12") is None and chat_of("tg-abc") is None and chat_of("tg-") is None


# --------------------------------------------------------------------------- the bot, gateway stubbed

@dataclass
class StubGateway:
    """The gateway's outbox and turn endpoints, scripted by the test (httpx.MockTransport handler)."""

    outbox: asyncio.Queue[dict[str, Any] | int] = field(default_factory=asyncio.Queue)
    turns: asyncio.Queue[tuple[float, dict[str, Any]]] = field(default_factory=asyncio.Queue)
    polls: list[float] = field(default_factory=list)
    posts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    turn_started: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path == "/v1/outbox":
            self.polls.append(time.monotonic())
            wait = float(request.url.params["wait"])
            try:
                answer = await asyncio.wait_for(self.outbox.get(), wait)
            except TimeoutError:
                return httpx.Response(200, json={"conversations": []})
            if isinstance(answer, int):
                return httpx.Response(answer, json={"detail": "failure"})
            return httpx.Response(200, json={"conversations": [answer]})
        self.posts.append((request.url.path, json.loads(request.content or b"{}")))
        self.turn_started.set()
        delay, body = await self.turns.get()
        await asyncio.sleep(delay)
        return httpx.Response(200, json=body)


@dataclass
class Bot:
    """The PTB application polling the fake Bot API, with the stubbed gateway."""

    fake: FakeBotApi
    app: Any
    gateway: StubGateway
    errors: list[BaseException]

    async def say(self, words: str, wait: bool = True) -> int:
        """Send a text from the chat's user; wait until the bot has handled it unless `wait` is False."""
        [update_id] = self.fake.push({"message": {
            "message_id": int(time.time() * 1000) % 10**6, "date": int(time.time()), "text": words,
            "chat": {"id": CHAT, "type": "private", "first_name": "Ana"},
            "from": {"id": CHAT, "is_bot": False, "first_name": "Ana", "language_code": "fr"}}})
        if wait:
            await self.handled(update_id)
        return update_id

    async def handled(self, update_id: int) -> None:
        """Wait until the update has been processed."""
        await until(lambda: self.app.update_processor.finished(update_id))

    def texts(self, since: int = 0) -> list[str]:
        """Texts the bot sent to the chat (unescaped), from call index `since` on."""
        return [plain(c.params["text"]) for c in self.fake.calls_to("sendMessage", CHAT, since) if c.status == 200]

    @property
    def state(self) -> Any:
        """The chat's state (bot/telegram/rendering.ChatState)."""
        return self.app.chat_data[CHAT]["state"]


async def until(condition: Callable[[], bool], limit_s: float = 15) -> None:
    """Wait (in the loop) until condition() is true."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.fixture
async def bot() -> AsyncIterator[Bot]:
    """The bot with a quick outbox delivery (long-poll 0.5 s, back-off from 0.2 s), the gateway stubbed."""
    gateway = StubGateway()
    fake = FakeBotApi(TOKEN).start()
    settings = TelegramSettings(token=TOKEN, gateway_url="http://gw", gateway_api_key="gw-key", api_base_url=fake.url)
    client = GatewayClient("http://gw", "gw-key", transport=httpx.MockTransport(gateway))
    app = build_application(settings, client)
    app.bot_data["outbox"] = OutboxDelivery(app, wait_s=0.5, min_interval_s=0.2, backoff_first_s=0.2,
                                            backoff_max_s=0.4)
    errors: list[BaseException] = []

    async def record(update: object, context: Any) -> None:
        errors.append(context.error)

    app.add_error_handler(record)
    await app.initialize()
    await app.start()
    await app.updater.start_polling(poll_interval=0, timeout=2, allowed_updates=ALLOWED_UPDATES)
    await start_outbox(app)
    try:
        yield Bot(fake, app, gateway, errors)
    finally:
        await app.updater.stop()
        await app.stop()
        await stop_outbox(app)
        await app.shutdown()
        await client.aclose()
        fake.stop()


async def test_agent_messages_reach_the_chat_in_order_and_a_relayed_text_gets_no_answer(bot, caplog):
    caplog.set_level(logging.DEBUG, logger="bot.telegram")  # PTB's own DEBUG holds texts: quieted in production
    gateway, delivery = bot.gateway, bot.app.bot_data["outbox"]
    await gateway.outbox.put(503)  # the gateway fails first: the loop backs off, then polls again
    await until(lambda: len(gateway.polls) >= 2)
    assert delivery.running and gateway.polls[1] - gateway.polls[0] >= 0.19

    # A turn is under way (it opens a ticket) when the agent claims it: the notice waits for the turn's reply.
    await gateway.turns.put((0.8, {"language": "fr", "messages": [{"text": "Votre demande HD-000042 est ouverte."}],
                                   "handoff": handoff("open")}))
    gateway.turn_started.clear()
    update_id = await bot.say("je veux parler au helpdesk", wait=False)
    await gateway.turn_started.wait()
    await gateway.outbox.put({"conversation_id": f"tg-{CHAT}", "language": "fr", "messages": [{"text": CLAIMED}],
                              "handoff": handoff("claimed")})
    await bot.handled(update_id)
    await until(lambda: len(bot.texts()) >= 2)
    assert bot.texts() == ["Votre demande HD-000042 est ouverte.", CLAIMED]
    assert bot.state.held_by_agent

    # While the agent holds the conversation: the text goes to the gateway, nothing comes back, no "typing…".
    mark = bot.fake.mark()
    await gateway.turns.put((0.0, {"language": "fr", "messages": [], "handoff": handoff("claimed")}))
    await bot.say("mon médecin ne voit plus mon dossier")
    assert gateway.posts[-1] == (f"/v1/conversations/tg-{CHAT}/messages",
                                 {"text": "mon médecin ne voit plus mon dossier"})
    assert bot.fake.calls_to("sendMessage", CHAT, mark) == [] and bot.fake.calls_to("sendChatAction", CHAT, mark) == []

    # The agent's reply: escaped (MarkdownV2-valid), split past 4096 characters, its buttons as a keyboard.
    mark = bot.fake.mark()
    long_reply = "Claire (helpdesk) : " + "\n\n".join(["Étape (1) : ouvrez l'app MyDSP ! Puis « Mes accès »."] * 120)
    choice = {"text": "Choisissez :", "buttons": [{"title": "Oui", "payload": "/affirm"}]}
    await gateway.outbox.put({"conversation_id": f"tg-{CHAT}", "language": "fr", "handoff": handoff("claimed"),
                              "messages": [{"text": AGENT}, {"text": long_reply}, choice]})
    await until(lambda: len(bot.texts(mark)) >= 4)
    sent = bot.fake.calls_to("sendMessage", CHAT, mark)
    assert all(c.status == 200 for c in sent)  # the fake refuses invalid MarkdownV2 with 400
    texts = bot.texts(mark)
    assert texts[0] == AGENT and "Étape (1)" in texts[1] and "Étape (1)" in texts[2] and texts[3] == "Choisissez :"
    assert all(len(t) <= 4096 for t in texts) and len(texts) == 4
    assert sent[3].params["reply_markup"]["inline_keyboard"][0][0]["text"] == "Oui"

    # The agent closes: the assistant answers again (and shows "typing…" again).
    await gateway.outbox.put({"conversation_id": f"tg-{CHAT}", "language": "fr", "messages": [{"text": CLOSED}],
                              "handoff": None})
    await until(lambda: bot.texts()[-1:] == [CLOSED])
    assert not bot.state.held_by_agent
    mark = bot.fake.mark()
    await gateway.turns.put((0.0, {"language": "fr", "messages": [{"text": "Que puis-je faire ?"}]}))
    await bot.say("merci")
    assert bot.texts(mark) == ["Que puis-je faire ?"] and len(bot.fake.calls_to("sendChatAction", CHAT, mark)) == 1

    # A conversation that is not a chat of the bot is skipped; the loop goes on.
    await gateway.outbox.put({"conversation_id": "term-abc", "messages": [{"text": "ailleurs"}], "handoff": None})
    polls = len(gateway.polls)
    await until(lambda: len(gateway.polls) >= polls + 2)
    assert bot.errors == [] and delivery.delivered == 5
    logged = "\n".join(record.getMessage() for record in caplog.records if record.name.startswith("bot.telegram"))
    assert "outbox: 3 message(s) delivered to a chat" in logged
    for words in ("Claire", "médecin", "Étape", "ailleurs", "HD-000042"):
        assert words not in logged  # no message content in the log
    assert "outbox poll failed (outbox answered 503)" in logged


async def test_a_failing_or_empty_outbox_never_polls_in_a_tight_loop():
    polls: list[float] = []
    mode = {"status": 200}

    def gateway(request: httpx.Request) -> httpx.Response:
        polls.append(time.monotonic())
        if mode["status"] != 200:
            return httpx.Response(mode["status"], json={"detail": "x"})
        return httpx.Response(200, json={"conversations": []})  # a gateway that ignores `wait`

    fake = FakeBotApi(TOKEN).start()
    settings = TelegramSettings(token=TOKEN, gateway_url="http://gw", gateway_api_key="k", api_base_url=fake.url)
    client = GatewayClient("http://gw", "k", transport=httpx.MockTransport(gateway))
    app = build_application(settings, client)
    delivery = OutboxDelivery(app, wait_s=20, min_interval_s=0.3, backoff_first_s=0.1, backoff_max_s=0.4)
    try:
        delivery.start()
        await asyncio.sleep(1.0)
        assert 2 <= len(polls) <= 5  # at most one per 0.3 s
        mode["status"] = 500
        polls.clear()
        await asyncio.sleep(1.5)  # waits of 0.1, 0.2, 0.4, 0.4 …
        assert 3 <= len(polls) <= 7
        assert delivery.running  # errors never end the task
        mode["status"] = 200
        await asyncio.sleep(0.6)
        assert delivery.running
    finally:
        await delivery.stop()
        await client.aclose()
        fake.stop()
    assert not delivery.running
    count = len(polls)
    await asyncio.sleep(0.4)
    assert len(polls) == count  # stopped: no more polls


async def test_the_application_starts_and_stops_the_outbox_with_its_hooks():
    fake = FakeBotApi(TOKEN).start()
    settings = TelegramSettings(token=TOKEN, gateway_url="http://gw", gateway_api_key="k", api_base_url=fake.url)
    polled = asyncio.Event()

    def gateway(request: httpx.Request) -> httpx.Response:
        polled.set()
        return httpx.Response(200, json={"conversations": []})

    client = GatewayClient("http://gw", "k", transport=httpx.MockTransport(gateway))
    app = build_application(settings, client)
    hooks: dict[str, Callable[[Any], Awaitable[None]]] = {
        "post_init": app.post_init, "post_stop": app.post_stop, "post_shutdown": app.post_shutdown}
    try:
        await app.initialize()
        await hooks["post_init"](app)  # what run_polling / run_webhook call after initialize
        await asyncio.wait_for(polled.wait(), 5)
        assert app.bot_data["outbox"].running and fake.calls_to("setMyCommands")
        await hooks["post_stop"](app)
        assert not app.bot_data["outbox"].running
        await app.shutdown()
        await hooks["post_shutdown"](app)  # idempotent; closes the gateway client
    finally:
        fake.stop()


# --------------------------------------------------------------------------- the whole stack

@pytest.mark.services
def test_an_agent_reply_made_in_the_domain_reaches_the_telegram_chat(services):
    from tests.test_telegram import CHAT_IDS, new_token, start_process, stop_process, update_json, wait_until

    fake = FakeBotApi(new_token()).start()
    started = time.monotonic()
    process, log = start_process(services, fake, "handoff")  # polling mode: the outbox task starts in post_init
    chat_id = next(CHAT_IDS)
    conversation = f"tg-{chat_id}"

    def texts(since: int = 0) -> list[str]:
        return [plain(c.params["text"]) for c in fake.calls_to("sendMessage", chat_id, since) if c.status == 200]

    try:
        wait_until(lambda: fake.polls > 0, process=process)
        fake.push(update_json(chat_id, "bonjour", "fr"))  # the conversation exists, in French
        wait_until(lambda: texts(), process=process)
        ticket = staff(services, f"""
            triage = helpdesk.triage(None, "asked")
            info = helpdesk.open_ticket(uow, {conversation!r}, language="fr", category=triage.category,
                                        priority=triage.priority, reason="asked",
                                        transcript=[helpdesk.TranscriptLine("user", "bonjour")], tried=[],
                                        patient_id=None)
            result = {{"id": info.id, "reference": info.reference}}
        """)
        agent_id = int(staff(services, "result = helpdesk.add_agent(uow, 'claire.tg', 'Claire Weber', "
                                       "'Helpdesk-Agent-Passphrase-2026')"))

        # A bot stopped by an earlier test may have left a long-poll open in the gateway (up to 20 s):
        # the outbox hands each message out once, so a message taken by that dead poll is lost
        # (a known limit: delivery is at most once). Let any such poll expire first.
        time.sleep(max(0.0, 21 - (time.monotonic() - started)))
        mark = fake.mark()
        staff(services, f"result = helpdesk.claim(uow, {agent_id}, {ticket['id']}).status")
        wait_until(lambda: texts(mark), process=process)
        assert texts(mark) == [f"Claire Weber, du helpdesk, s'occupe de votre demande {ticket['reference']}. "
                               "Écrivez ici : vos messages lui sont transmis directement."]

        # The user's text goes to the agent; the bot sends nothing back (no "typing…" either).
        mark = fake.mark()
        fake.push(update_json(chat_id, "Ma lettre d'activation n'est jamais arrivée.", "fr"))
        wait_until(lambda: "jamais arrivée" in str(staff(services, f"""
            result = repr(helpdesk.view_ticket(uow, {agent_id}, {ticket['id']}))
        """)), process=process)
        time.sleep(1.0)  # a reply, had there been one, would have been sent by now
        assert fake.calls_to("sendMessage", chat_id, mark) == []
        assert fake.calls_to("sendChatAction", chat_id, mark) == []

        staff(services, f"result = helpdesk.reply(uow, {agent_id}, {ticket['id']}, "
                        "'Une nouvelle lettre part demain (J+1) ! Code postal ? [merci]')")
        wait_until(lambda: texts(mark), process=process)
        assert texts(mark) == ["Claire Weber (helpdesk) : Une nouvelle lettre part demain (J+1) ! "
                               "Code postal ? [merci]"]

        mark = fake.mark()
        staff(services, f"result = helpdesk.close(uow, {agent_id}, {ticket['id']}).status")
        wait_until(lambda: texts(mark), process=process)
        assert texts(mark)[0].startswith(f"Claire Weber a clôturé votre demande {ticket['reference']}.")

        mark = fake.mark()  # the assistant answers again
        fake.push(update_json(chat_id, "merci, au revoir", "fr"))
        wait_until(lambda: texts(mark), process=process)
        assert fake.calls_to("sendChatAction", chat_id, mark)
    finally:
        code = stop_process(process)
        fake.stop()
    assert code == 0
    assert all(c.status == 200 for c in fake.calls_to("sendMessage", chat_id))
    output = log.read_text(encoding="utf-8", errors="replace")
    assert fake.token not in output and fake.token.split(":")[1] not in output
    for words in ("jamais arrivée", "nouvelle lettre", "Claire"):
        assert words not in output  # no message content in the bot's log
    assert "outbox: 1 message(s) delivered to a chat" in output
