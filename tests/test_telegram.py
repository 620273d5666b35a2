"""The Telegram front end against a fake Bot API on loopback, with the real gateway, Rasa and actions.

The real python-telegram-bot stack runs (Application, Updater long polling, rate limiter, handlers)
with `base_url` pointing at `tests/fake_telegram.py`, which feeds Telegram-shaped updates (Bot API
JSON: messages with entities, callback queries, documents, photo sizes, edited messages, stickers,
locations, voice notes, group chats, channel posts) and records every call the bot makes. Two tests
run `python -m bot.telegram` itself: in polling mode and in webhook mode with the secret token.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import logging
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pypdf import PdfWriter

from bot.telegram.app import SecretRedactingFilter, build_application, quiet_loggers
from bot.telegram.gateway import GatewayClient, Reply
from bot.telegram.handlers import ALLOWED_UPDATES
from bot.telegram.settings import TelegramSettings
from bot.telegram.texts import COMMANDS, text
from tests.fake_telegram import BOT_USER, Call, FakeBotApi, free_port
from tests.support import DSP, REPO, SECRETS, activate, new_letter, run_dsp

pytestmark = pytest.mark.services

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHAT_IDS = itertools.count(random.randint(10**8, 9 * 10**8))


def new_token() -> str:
    """Return a token shaped like BotFather's."""
    return f"{random.randint(10**8, 10**9 - 1)}:AA{secrets.token_urlsafe(24)}"


def plain(markdown: str) -> str:
    """Undo the MarkdownV2 escaping of a text the bot sent."""
    return re.sub(r"\\(.)", r"\1", markdown)


def pdf_bytes(pages: int = 1) -> bytes:
    """Return a small valid PDF."""
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=595, height=842)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def outbox_code(services, address: str) -> str:
    """Read the one-time code last "sent" to `address` (embedded outbox)."""
    body = run_dsp(services.env, "outbox", "--to", address, "--last")["body"]
    match = re.search(r"(?<![0-9A-Za-z])([0-9]{6,8})(?![0-9A-Za-z])", body)
    assert match, "no code in the message"
    SECRETS.add(match.group(1))
    return match.group(1)


class RecordingGateway(GatewayClient):
    """The real gateway client, recording each call: (conversation, endpoint, language, start, end)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log: list[tuple[str, str, str | None, float, float]] = []

    async def _post(self, path: str, **kwargs: Any) -> Reply:
        started = time.monotonic()
        try:
            return await super()._post(path, **kwargs)
        finally:
            parts = path.split("/")
            language = (kwargs.get("json") or kwargs.get("data") or {}).get("language")
            self.log.append((parts[3], parts[4], language, started, time.monotonic()))

    def calls(self, conversation: str) -> list[tuple[str, str | None]]:
        """(endpoint, language) of the calls of one conversation, in order."""
        return [(endpoint, language) for conv, endpoint, language, _, _ in self.log if conv == conversation]


@dataclass
class Harness:
    """A running bot (in this test's event loop) against the fake Bot API and the real gateway."""

    fake: FakeBotApi
    app: Any
    gateway: RecordingGateway
    services: Any
    errors: list[BaseException] = field(default_factory=list)

    async def feed(self, *updates: dict[str, Any]) -> list[int]:
        """Queue updates for getUpdates and wait until the bot has handled each (2 minutes at most)."""
        ids = self.fake.push(*updates)
        deadline = time.monotonic() + 120
        while not all(self.app.update_processor.finished(update_id) for update_id in ids):
            assert time.monotonic() < deadline, "updates not handled in time"
            await asyncio.sleep(0.005)
        return ids

    def user(self, language_code: str = "fr", chat_type: str = "private") -> TgUser:
        """A new Telegram user in a new private chat (or a group)."""
        return TgUser(self, next(CHAT_IDS), language_code, chat_type)


class TgUser:
    """One Telegram user and their chat, as the Bot API shows them in updates."""

    def __init__(self, harness: Harness, chat_id: int, language_code: str, chat_type: str) -> None:
        self.h = harness
        self.id = chat_id if chat_type == "private" else -chat_id
        self.user = {"id": chat_id, "is_bot": False, "first_name": "Ana", "last_name": "Schmit",
                     "username": f"ana{chat_id}", "language_code": language_code}
        self.chat: dict[str, Any] = ({"id": chat_id, "type": "private", "first_name": "Ana", "last_name": "Schmit",
                                      "username": f"ana{chat_id}"} if chat_type == "private"
                                     else {"id": self.id, "type": chat_type, "title": "Famille Schmit"})
        self.message_ids = itertools.count(1)
        self.since = 0

    @property
    def conversation(self) -> str:
        """The gateway conversation of this chat."""
        return f"tg-{self.id}"

    def message(self, **content: Any) -> dict[str, Any]:
        """A Message object from this user (Bot API JSON)."""
        return {"message_id": next(self.message_ids), "date": int(time.time()), "chat": self.chat,
                "from": self.user, **content}

    async def send(self, key: str = "message", **content: Any) -> dict[str, Any]:
        """Send one update of type `key` with a new message; return the message."""
        message = self.message(**content)
        self.since = self.h.fake.mark()
        await self.h.feed({key: message})
        return message

    async def say(self, words: str) -> int:
        """Send a text message (a command gets its bot_command entity); return its message id."""
        content: dict[str, Any] = {"text": words}
        if words.startswith("/"):
            content["entities"] = [{"type": "bot_command", "offset": 0, "length": len(words.split()[0])}]
        return int((await self.send(**content))["message_id"])

    async def edit(self, message_id: int, words: str) -> None:
        """Edit an earlier message (an `edited_message` update)."""
        self.since = self.h.fake.mark()
        await self.h.feed({"edited_message": {"message_id": message_id, "date": int(time.time()) - 60,
                                              "edit_date": int(time.time()), "chat": self.chat, "from": self.user,
                                              "text": words}})

    def keyboard_call(self, fragment: str) -> tuple[Call, str]:
        """The last message sent to this chat with a button whose title contains `fragment`, and its data."""
        for call in reversed(self.h.fake.calls):
            if call.chat_id != self.id or call.status != 200:
                continue
            for row in (call.params.get("reply_markup") or {}).get("inline_keyboard", []):
                for button in row:
                    if fragment in button["text"]:
                        return call, button["callback_data"]
        raise AssertionError(f"no button {fragment!r} in this chat; last replies: {self.replies}")

    async def tap(self, fragment: str = "", data: str | None = None, message_id: int | None = None) -> None:
        """Tap a button (or send forged callback data) as a callback_query update."""
        call, found = self.keyboard_call(fragment) if data is None else (None, data)
        message = {"message_id": message_id or (call.result["message_id"] if call else 1), "date": int(time.time()),
                   "chat": self.chat, "from": BOT_USER, "text": plain((call.params.get("text") if call else "") or "")}
        self.since = self.h.fake.mark()
        await self.h.feed({"callback_query": {"id": str(uuid.uuid4().int)[:19], "from": self.user,
                                              "chat_instance": str(self.id * 7), "data": found, "message": message}})

    def calls(self, method: str) -> list[Call]:
        """Calls of `method` for this chat since the last update this user sent."""
        return self.h.fake.calls_to(method, self.id, self.since)

    def answers(self) -> list[Call]:
        """answerCallbackQuery calls since the last update (they name the query, not the chat)."""
        return self.h.fake.calls_to("answerCallbackQuery", since=self.since)

    def file_calls(self) -> list[Call]:
        """getFile calls since the last update (they name the file, not the chat)."""
        return self.h.fake.calls_to("getFile", since=self.since)

    @property
    def replies(self) -> list[str]:
        """Texts (and captions) the bot sent to this chat since the last update, unescaped."""
        return [plain(str(c.params.get("text") or c.params.get("caption") or ""))
                for c in self.h.fake.calls[self.since:]
                if c.chat_id == self.id and c.status == 200
                and c.method in ("sendMessage", "sendPhoto", "sendDocument")]

    @property
    def last_text(self) -> str:
        """All reply texts since the last update."""
        return "\n".join(self.replies)

    @property
    def pending(self) -> str | None:
        """The private answer the bot waits for in this chat."""
        data = self.h.app.chat_data.get(self.id) or {}
        state = data.get("state")
        return state.pending_kind if state else None

    def gateway_calls(self) -> list[tuple[str, str | None]]:
        """(endpoint, language) of the gateway calls of this chat."""
        return self.h.gateway.calls(self.conversation)


@pytest.fixture
async def tg(services):
    """The bot in this test's event loop, polling the fake Bot API; its log goes to the state dir's logs."""
    token = new_token()
    fake = FakeBotApi(token).start()
    settings = TelegramSettings(token=token, gateway_url=services.gateway_url, gateway_api_key=services.key,
                                api_base_url=fake.url, poll_timeout_s=10)
    gateway = RecordingGateway(services.gateway_url, services.key)
    app = build_application(settings, gateway)
    harness = Harness(fake, app, gateway, services)

    async def record_error(update: object, context: Any) -> None:
        harness.errors.append(context.error)

    app.add_error_handler(record_error)
    log_file = logging.FileHandler(services.state_dir / "logs" / "telegram-tests.log", encoding="utf-8")
    log_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s - %(message)s"))
    log_file.addFilter(SecretRedactingFilter(token, services.key))
    root = logging.getLogger()
    root.addHandler(log_file)
    for name in ("bot.telegram", "telegram"):
        logging.getLogger(name).setLevel(logging.INFO)
    quiet_loggers()
    await app.initialize()
    await app.start()
    await app.updater.start_polling(poll_interval=0, timeout=10, allowed_updates=ALLOWED_UPDATES)
    try:
        yield harness
    finally:
        await app.updater.stop()
        await app.stop()
        await app.shutdown()
        await gateway.aclose()
        fake.stop()
        root.removeHandler(log_file)
        log_file.close()
    log_text = (services.state_dir / "logs" / "telegram-tests.log").read_text(encoding="utf-8")
    assert token not in log_text and token.split(":")[1] not in log_text


# --------------------------------------------------------------------------- the whole activation

async def test_full_activation_over_telegram_deletes_every_secret(tg, services):
    patient = await asyncio.to_thread(new_letter, services)
    SECRETS.add(patient["password"])
    ana = tg.user("fr")

    await ana.say("/start")
    assert ana.replies == [text("welcome", "fr")]
    assert ana.gateway_calls() == []  # the welcome is the bot's own

    await ana.say("je veux activer mon compte")
    assert ana.pending == "matricule"
    assert text("private_hint", "fr") in ana.last_text
    assert len(ana.calls("sendChatAction")) == 1  # "typing…" while the assistant works

    secret_messages: list[int] = []
    for kind, value in [("matricule", patient["matricule"]), ("activation_code", patient["activation_code"]),
                        ("password", patient["password"]), ("password_confirm", patient["password"])]:
        assert ana.pending == kind
        message_id = await ana.say(value)
        secret_messages.append(message_id)
        assert [c.params["message_id"] for c in ana.calls("deleteMessage")] == [message_id]
        assert ana.replies[0] == text("received", "fr")  # confirmed first, never echoed
        assert value not in ana.last_text

    # The e-mail / SMS choice as an inline keyboard; the callback is checked, then sent as the payload.
    keyboard, data = ana.keyboard_call("E-mail")
    assert len(data.encode()) <= 64 and "email" not in data
    await ana.tap("E-mail")
    assert len(ana.answers()) == 1
    edited = ana.calls("editMessageText")
    assert edited and edited[0].params["message_id"] == keyboard.result["message_id"]
    assert plain(edited[0].params["text"]).endswith("→ *E-mail*") and "reply_markup" not in edited[0].params
    assert ana.pending == "email"

    secret_messages.append(await ana.say(patient["email"]))
    assert ana.pending == "otp"
    code = await asyncio.to_thread(outbox_code, services, patient["email"])
    secret_messages.append(await ana.say(code))
    assert ana.pending is None
    responses = await asyncio.to_thread(services.rasa.responses, ana.conversation)
    assert responses[-1] == "utter_activation_done"

    deleted = [c.params["message_id"] for c in tg.fake.calls_to("deleteMessage", ana.id)]
    assert deleted == secret_messages  # each secret deleted from the chat, nothing else
    endpoints = [endpoint for endpoint, _ in ana.gateway_calls()]
    assert endpoints == ["messages"] + ["protected"] * 4 + ["messages"] + ["protected"] * 2
    sent = json.dumps([c.params for c in tg.fake.calls])
    for secret in (patient["matricule"], patient["activation_code"], patient["password"], patient["email"], code):
        assert secret not in sent  # no call to Telegram carries a secret
    assert tg.errors == []


async def test_a_reused_or_forged_callback_never_reaches_the_gateway(tg, services):
    ana = tg.user("fr")
    await ana.say("/start activate")
    assert ana.pending == "matricule"
    await ana.say("/cancel")
    assert [e for e, _ in ana.gateway_calls()] == ["messages", "messages"]  # "annuler", not a private answer
    assert ana.pending is None
    assert (await asyncio.to_thread(services.rasa.responses, ana.conversation))[-1] == "utter_cancelled"

    await ana.say("/language")
    keyboard, data = ana.keyboard_call("English")
    before = len(tg.gateway.log)
    await ana.tap("English")
    assert ana.replies == [] and plain(ana.calls("editMessageText")[0].params["text"]) == text("language_set", "en")
    await ana.tap(data="b:forged00:0")  # never offered
    assert ana.answers()[0].params["text"] == text("choice_expired", "en")
    await ana.tap(data='/inform{"contact_channel":"email"}')  # a payload smuggled as callback data
    assert ana.answers()[0].params["text"] == text("choice_expired", "en")
    assert len(tg.gateway.log) == before  # none of them reached the gateway

    await ana.say("hello")
    assert ana.gateway_calls()[-1] == ("messages", "en")  # the chosen language goes with every turn
    await ana.say("I want to activate my eSanté account")
    await ana.say("/cancel")
    assert tg.errors == []


async def test_deep_link_opens_the_task_in_the_users_language(tg, services):
    lena = tg.user("de-LU")
    await lena.say("/start reset_password")
    assert lena.replies[0] == text("welcome", "de")
    assert lena.gateway_calls() == [("messages", "de")]
    assert lena.pending == "matricule" and text("private_hint", "de") in lena.last_text
    responses = await asyncio.to_thread(services.rasa.responses, lena.conversation)
    assert responses[-1].startswith("utter_ask_") and "matricule" in responses[-1]
    await lena.say("/start no_such_task")  # unknown parameters only get the welcome
    assert lena.replies == [text("welcome", "de")] and len(lena.gateway_calls()) == 1
    await lena.say("/logout")
    assert lena.gateway_calls()[-1] == ("messages", "de")
    assert tg.errors == []


DEEP_LINK_INTENTS = {"activate": "activate_account", "login": "log_in", "reset_password": "reset_password",
                     "add_document": "upload_document", "my_documents": "list_documents",
                     "grant_access": "grant_access", "block_access": "block_access",
                     "unblock_access": "unblock_access", "access_list": "list_access", "imaging": "view_imaging",
                     "helpdesk": "request_human"}


@pytest.mark.parametrize("language", ["fr", "de", "en"])
async def test_every_deep_link_opens_its_task(tg, services, language):
    from bot.telegram.texts import DEEP_LINKS

    assert set(DEEP_LINK_INTENTS) == set(DEEP_LINKS)
    understood = {}
    for name in DEEP_LINK_INTENTS:
        user = tg.user(language)
        await user.say(f"/start {name}")
        tracker = await asyncio.to_thread(services.rasa.tracker, user.conversation)
        understood[name] = tracker["latest_message"]["intent"]["name"]
    assert understood == DEEP_LINK_INTENTS
    assert tg.errors == []


# --------------------------------------------------------------------------- files

async def log_in_over_telegram(user: TgUser, services, patient: dict[str, str]) -> None:
    """Log in through the Telegram chat: matricule, password, one-time code, terms (a button)."""
    await user.say("je veux me connecter à mon dossier")
    assert user.pending == "matricule"
    await user.say(patient["matricule"])
    assert user.pending == "password"
    await user.say(patient["password"])
    assert user.pending == "otp"
    await user.say(await asyncio.to_thread(outbox_code, services, patient["email"]))
    await user.tap("J'accepte")
    assert "utter_logged_in" in await asyncio.to_thread(services.rasa.responses, user.conversation)


async def test_document_upload_then_the_document_comes_back_as_a_document(tg, services, tmp_path):
    patient = await asyncio.to_thread(new_letter, services)
    await asyncio.to_thread(activate, services, "fr", patient)
    ana = tg.user("fr")
    await log_in_over_telegram(ana, services, patient)
    cwd_before = set(os.listdir(os.getcwd()))
    downloads = services.state_dir / "downloads"  # the terminal chat's folder (other tests may have used it)
    downloads_before = set(os.listdir(downloads)) if downloads.exists() else set()

    await ana.say("je veux ajouter un document à mon dossier")
    assert text("file_hint", "fr") in ana.last_text
    data = pdf_bytes(2)
    document = {**tg.fake.add_file(data), "file_name": "Bilan sanguin 2026.pdf", "mime_type": "application/pdf"}
    await ana.send(document=document, caption="mon bilan")
    assert [c.params["file_id"] for c in ana.file_calls()] == [document["file_id"]]
    assert len(ana.h.fake.calls_to("download", since=ana.since)) == 1
    assert ana.gateway_calls()[-1][0] == "files"
    await ana.tap("Expression du titulaire")
    assert "utter_document_added" in await asyncio.to_thread(services.rasa.responses, ana.conversation)

    # A photo: the largest size is fetched and sent.
    image = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 30, 30)).save(image, format="JPEG")
    small = tg.fake.add_file(b"thumbnail")
    large = tg.fake.add_file(image.getvalue())
    await ana.say("je veux ajouter un document")
    await ana.send(photo=[{**small, "width": 90, "height": 67}, {**large, "width": 64 * 20, "height": 48 * 20}])
    assert [c.params["file_id"] for c in ana.file_calls()] == [large["file_id"]]
    assert ana.gateway_calls()[-1][0] == "files"
    await ana.tap("Expression du titulaire")

    await ana.say("montre-moi mes documents")
    assert "Bilan sanguin 2026" in ana.last_text  # the title, filled in by the gateway
    await ana.tap("Bilan sanguin 2026")
    sent = ana.calls("sendDocument")
    assert len(sent) == 1 and sent[0].files["document"][1] == data
    assert sent[0].files["document"][0].endswith(".pdf")
    assert set(os.listdir(os.getcwd())) == cwd_before  # nothing written to the working directory
    assert (set(os.listdir(downloads)) if downloads.exists() else set()) == downloads_before
    assert tg.errors == []


async def test_an_oversize_document_is_refused_before_getfile(tg, services):
    ana = tg.user("en")
    document = {**tg.fake.add_file(b"%PDF-1.4 tiny", size=25 * 1024 * 1024), "file_name": "scan.pdf",
                "mime_type": "application/pdf"}
    await ana.send(document=document)
    assert ana.replies == [text("file_too_large", "en")]
    assert ana.file_calls() == [] and ana.gateway_calls() == []
    photo = tg.fake.add_file(b"x", size=21 * 1024 * 1024)
    await ana.send(photo=[{**photo, "width": 4000, "height": 3000}])
    assert ana.replies == [text("file_too_large", "en")] and ana.file_calls() == []
    assert tg.errors == []


async def test_a_key_image_arrives_as_a_photo(tg, services):
    from pydicom.data import get_testdata_file

    patient = await asyncio.to_thread(new_letter, services)
    await asyncio.to_thread(activate, services, "fr", patient)
    await asyncio.to_thread(subprocess.run, [str(DSP), "import-dicom", str(get_testdata_file("CT_small.dcm")),
                                             "--matricule", patient["matricule"]],
                            capture_output=True, env=services.env, timeout=120, check=True)
    ana = tg.user("fr")
    await log_in_over_telegram(ana, services, patient)
    await ana.say("je veux voir mes radios et le rapport du scanner")
    if "utter_studies_list" not in await asyncio.to_thread(services.rasa.responses, ana.conversation):
        pytest.skip("the trained model in models/ predates the imaging task (make model)")
    await ana.tap("Scanner (CT)")
    photos = ana.calls("sendPhoto")
    assert len(photos) == 1 and photos[0].files["photo"][1].startswith(PNG_SIGNATURE)  # fetched with the key
    assert any("/viewer/" in reply for reply in ana.replies)
    assert all(c.params.get("link_preview_options") == {"is_disabled": True} for c in ana.calls("sendMessage"))
    assert tg.errors == []


# --------------------------------------------------------------------------- robustness

async def test_edits_stickers_locations_voice_groups_and_channels_are_handled_without_errors(tg, services):
    ana = tg.user("fr")
    first = await ana.say("bonjour")
    calls_before = len(tg.gateway.log)

    await ana.edit(first, "bonjour, modifié")
    assert ana.replies == [text("edited", "fr")]
    await ana.send(sticker={"file_id": "CAACAgIAAxkBAAEB", "file_unique_id": "AgADsticker", "type": "regular",
                            "width": 512, "height": 512, "is_animated": False, "is_video": False, "emoji": "👍"})
    assert ana.replies == [text("sticker", "fr")]
    await ana.send(location={"latitude": 49.6116, "longitude": 6.1319})
    assert ana.replies == [text("location", "fr")]
    await ana.send(voice={"file_id": "AwACAgIAAxkBAAEC", "file_unique_id": "AgADvoice", "duration": 3,
                          "mime_type": "audio/ogg"})
    assert ana.replies == [text("voice", "fr")]
    await ana.send(contact={"phone_number": "+352621123456", "first_name": "Ana", "user_id": ana.id})
    assert ana.replies == [text("contact", "fr")]
    await ana.say("/nosuchcommand")
    assert ana.replies == [text("unknown_command", "fr")]
    assert len(tg.gateway.log) == calls_before  # none of these reached the gateway

    family = tg.user("fr", chat_type="group")
    await family.say("/start@mydsp_test_bot")
    assert family.replies == [text("private_only", "fr")]
    assert [c.params["chat_id"] for c in family.calls("leaveChat")] == [family.id]

    channel = tg.user("fr", chat_type="channel")
    channel.since = tg.fake.mark()
    await tg.feed({"channel_post": {"message_id": 1, "date": int(time.time()), "chat": channel.chat,
                                    "sender_chat": channel.chat, "text": "Nouvelles de la semaine"}})
    assert channel.replies == [] and len(channel.calls("leaveChat")) == 1
    assert not [log for log in tg.gateway.log if log[0] in (family.conversation, channel.conversation)]
    assert tg.errors == []


async def test_two_chats_interleaved_stay_in_order_and_run_concurrently(tg, services):
    ana, ben = tg.user("fr"), tg.user("fr")
    start = tg.fake.mark()
    await tg.feed({"message": ana.message(text="je veux activer mon compte")},
                  {"message": ben.message(text="je veux activer mon compte")},
                  {"message": ana.message(text="annuler")},
                  {"message": ben.message(text="annuler")})
    for user in (ana, ben):
        calls = [log for log in tg.gateway.log if log[0] == user.conversation]
        assert [endpoint for _, endpoint, _, _, _ in calls] == ["messages", "messages"]
        assert calls[1][3] >= calls[0][4]  # the second turn started after the first ended
        texts = [plain(c.params["text"]) for c in tg.fake.calls_to("sendMessage", user.id, start)]
        hint = text("private_hint", "fr")
        assert any(hint in t for t in texts[:-1]) and hint not in texts[-1]  # asked, then cancelled
        responses = await asyncio.to_thread(services.rasa.responses, user.conversation)
        assert responses[-1] == "utter_cancelled"
        assert tg.fake.calls_to("deleteMessage", user.id, start) == []  # "annuler" left the private prompt
    first_ana = next(log for log in tg.gateway.log if log[0] == ana.conversation)
    first_ben = next(log for log in tg.gateway.log if log[0] == ben.conversation)
    assert max(first_ana[3], first_ben[3]) < min(first_ana[4], first_ben[4])  # the two chats overlapped
    assert tg.errors == []


async def test_retry_after_is_honoured_and_the_message_is_sent_once(tg, services):
    ana = tg.user("en")
    tg.fake.fail_next("sendMessage", status=429, retry_after=1)
    await ana.say("/help")
    calls = ana.calls("sendMessage")
    assert [c.status for c in calls] == [429, 200]
    assert calls[0].params["text"] == calls[1].params["text"]
    assert calls[1].at - calls[0].at >= 1.0  # waited retry_after
    assert ana.replies == [text("help", "en")]
    assert tg.errors == []


async def test_network_errors_are_retried_only_when_no_action_repeats(tg, services):
    ana = tg.user("fr")
    await ana.say("/start activate")
    assert ana.pending == "matricule"
    tg.fake.fail_next("deleteMessage", status=502, description="Bad Gateway")  # idempotent: retried
    message_id = await ana.say("1234")
    assert [c.status for c in ana.calls("deleteMessage")] == [502, 200]
    assert all(c.params["message_id"] == message_id for c in ana.calls("deleteMessage"))
    assert ana.replies[0] == text("received", "fr")

    tg.fake.fail_next("sendMessage", status=502, description="Bad Gateway")  # may have arrived: not sent again
    await ana.say("/help")
    helps = [c for c in ana.calls("sendMessage") if plain(c.params["text"]) == text("help", "fr")]
    assert len(helps) == 1
    assert ana.replies == [text("unavailable", "fr")]  # the error handler told the user
    assert [type(e).__name__ for e in tg.errors] == ["NetworkError"]
    log_text = (services.state_dir / "logs" / "telegram-tests.log").read_text(encoding="utf-8")
    assert re.search(r"error while handling update \d+: NetworkError", log_text)


# --------------------------------------------------------------------------- the process: polling and webhook

def start_process(services, fake: FakeBotApi, name: str, **extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    """Run `python -m bot.telegram` against the fake Bot API; its log goes to the state dir's logs."""
    env = {**services.env, "TELEGRAM_BOT_TOKEN": fake.token, "TELEGRAM_API_BASE_URL": fake.url,
           "GATEWAY_URL": services.gateway_url, **extra}
    log = services.state_dir / "logs" / f"telegram-{name}.log"
    with log.open("ab") as handle:
        process = subprocess.Popen([sys.executable, "-m", "bot.telegram"], cwd=REPO, env=env, stdout=handle,
                                   stderr=subprocess.STDOUT)
    return process, log


def wait_until(condition: Any, timeout: float = 60, process: subprocess.Popen[bytes] | None = None) -> None:
    """Wait (blocking) until condition() is true."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process is None or process.poll() is None, "the bot exited"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def stop_process(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM, as the launcher does; return the exit code."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def update_json(chat_id: int, words: str, language_code: str = "fr") -> dict[str, Any]:
    """A text message update (a command gets its entity)."""
    message: dict[str, Any] = {
        "message_id": 1, "date": int(time.time()), "text": words,
        "chat": {"id": chat_id, "type": "private", "first_name": "Ana"},
        "from": {"id": chat_id, "is_bot": False, "first_name": "Ana", "language_code": language_code}}
    if words.startswith("/"):
        message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(words.split()[0])}]
    return {"message": message}


def test_polling_process_registers_the_menu_and_answers(services):
    fake = FakeBotApi(new_token()).start()
    process, log = start_process(services, fake, "polling")
    try:
        wait_until(lambda: fake.polls > 0, process=process)
        menus = fake.calls_to("setMyCommands")
        assert sorted(c.params.get("language_code", "") for c in menus) == ["", "de", "en", "fr"]
        for call in menus:
            language = call.params.get("language_code") or "fr"
            assert [c["command"] for c in call.params["commands"]] == [name for name, _ in COMMANDS[language]]
        assert fake.calls_to("deleteWebhook")  # polling mode drops any webhook
        chat_id = next(CHAT_IDS)
        fake.push(update_json(chat_id, "/start", "de"))
        wait_until(lambda: fake.calls_to("sendMessage", chat_id), process=process)
        assert plain(fake.calls_to("sendMessage", chat_id)[0].params["text"]) == text("welcome", "de")
        fake.push(update_json(chat_id, "Hallo, was kannst du alles?", "de"))
        wait_until(lambda: len(fake.calls_to("sendMessage", chat_id)) >= 2, process=process)
    finally:
        code = stop_process(process)
        fake.stop()
    assert code == 0
    output = log.read_text(encoding="utf-8", errors="replace")
    assert fake.token not in output and fake.token.split(":")[1] not in output
    assert "was kannst du" not in output  # no message text in the log


def test_webhook_refuses_a_forged_call_with_403_and_processes_a_signed_one(services):
    fake = FakeBotApi(new_token()).start()
    port = free_port()
    secret = "whs_" + secrets.token_urlsafe(24)
    public_url = "https://bot.example.invalid/telegram/hook"
    process, log = start_process(services, fake, "webhook", TELEGRAM_WEBHOOK_URL=public_url,
                                 TELEGRAM_WEBHOOK_SECRET=secret, TELEGRAM_WEBHOOK_PORT=str(port),
                                 TELEGRAM_WEBHOOK_LISTEN="127.0.0.1")
    forged_chat, real_chat = next(CHAT_IDS), next(CHAT_IDS)
    url = f"http://127.0.0.1:{port}/telegram/hook"
    try:
        wait_until(lambda: fake.calls_to("setWebhook"), process=process)
        webhook = fake.calls_to("setWebhook")[0].params
        assert webhook["url"] == public_url and webhook["secret_token"] == secret
        assert set(webhook["allowed_updates"]) >= {"message", "callback_query", "edited_message"}
        assert fake.calls_to("setMyCommands") and fake.polls == 0

        def listening() -> bool:
            try:
                httpx.get(url, timeout=1)
                return True
            except httpx.TransportError:
                return False

        wait_until(listening, process=process)
        forged = {"update_id": fake.new_update_id(), **update_json(forged_chat, "je veux activer mon compte")}
        assert httpx.post(url, json=forged, timeout=10).status_code == 403
        forged["update_id"] = fake.new_update_id()
        assert httpx.post(url, json=forged, headers={"X-Telegram-Bot-Api-Secret-Token": "wrong-secret"},
                          timeout=10).status_code == 403
        signed = {"X-Telegram-Bot-Api-Secret-Token": secret}
        assert httpx.post(url, json={"update_id": fake.new_update_id(), **update_json(real_chat, "/start")},
                          headers=signed, timeout=10).status_code == 200
        assert httpx.post(url, json={"update_id": fake.new_update_id(),
                                     **update_json(real_chat, "je veux activer mon compte")},
                          headers=signed, timeout=10).status_code == 200
        wait_until(lambda: len(fake.calls_to("sendMessage", real_chat)) >= 2, process=process)
        time.sleep(0.5)  # anything the forged calls could have started would show by now
    finally:
        code = stop_process(process)
        fake.stop()
    assert code == 0
    assert fake.calls_to("sendMessage", forged_chat) == [] and fake.calls_to("sendChatAction", forged_chat) == []
    gateway_log = (services.state_dir / "logs" / "gateway.log").read_text(encoding="utf-8", errors="replace")
    assert f"tg-{forged_chat}" not in gateway_log  # the forged updates never reached the gateway
    assert f"/v1/conversations/tg-{real_chat}/messages 200" in gateway_log
    output = log.read_text(encoding="utf-8", errors="replace")
    assert fake.token not in output and secret not in output and "activer mon compte" not in output
