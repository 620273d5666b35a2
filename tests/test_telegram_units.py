"""Unit tests of the Telegram front end's parts that need no server: rendering, retries, logging, settings."""

from __future__ import annotations

import asyncio
import io
import logging

import httpx
import pytest
from telegram.error import BadRequest, NetworkError, TimedOut

from bot.telegram.app import SafeRetryRateLimiter, SecretRedactingFilter
from bot.telegram.gateway import GatewayClient, GatewayUnavailable
from bot.telegram.rendering import CALLBACK_DATA_MAX_BYTES, ChatState, escape, split_text
from bot.telegram.settings import TelegramSettings
from bot.telegram.texts import COMMANDS, DEEP_LINKS, TEXTS, is_escape_word, telegram_language, text
from tests.fake_telegram import markdown_v2_problem

TOKEN = "123456789:AAHk-Secret-Half-Of-The-Token_0123456"


def test_every_callback_data_fits_in_64_bytes_and_resolves_once_in_its_message():
    state = ChatState()
    buttons = [{"title": f"Dr {'Müller-' * 20}{i}", "payload": f'/choose{{"professional_id": {i}}}'} for i in range(30)]
    nonce, offer, markup = state.offer(buttons, "Choisissez :")
    offer.message_id = 41
    datas = [button.callback_data for row in markup.inline_keyboard for button in row]
    assert len(datas) == 30 and all(len(str(d).encode()) <= CALLBACK_DATA_MAX_BYTES for d in datas)
    assert all("professional_id" not in str(d) for d in datas)  # the payload never travels to Telegram
    assert state.take(str(datas[3]), 99) is None  # another message
    assert state.take(f"b:{nonce}:30", 41) is None  # no such button
    assert state.take("b:forged:0", 41) is None
    taken = state.take(str(datas[3]), 41)
    assert taken is not None and taken[0].payloads[taken[1]] == '/choose{"professional_id": 3}'
    assert state.take(str(datas[4]), 41) is None  # one choice per keyboard


def test_old_keyboards_expire():
    state = ChatState()
    first, offer, _ = state.offer([{"title": "A", "payload": "/a"}], "x")
    offer.message_id = 1
    for number in range(10):
        state.offer([{"title": "B", "payload": "/b"}], str(number))
    assert state.take(f"b:{first}:0", 1) is None


def test_short_choices_share_a_row():
    state = ChatState()
    _, _, markup = state.offer([{"title": "E-mail", "payload": "/e"}, {"title": "SMS", "payload": "/s"}], "?")
    assert len(markup.inline_keyboard) == 1 and len(markup.inline_keyboard[0]) == 2


@pytest.mark.parametrize("text", ["1. Pas *gras* _ni_ [lien](http://x) ! (a-b) {c} #d +e =f |g ~h `i` >j \\k.",
                                  "Dr. Müller — cardiologie (CHL), tél. +352 27 12 50 18 33!"])
def test_any_text_is_markdown_v2_safe(text):
    escaped = escape(text)
    assert markdown_v2_problem({"parse_mode": "MarkdownV2", "text": escaped}) is None
    assert markdown_v2_problem({"parse_mode": "MarkdownV2", "text": text}) is not None


def test_long_text_is_split_at_boundaries_within_telegram_limit():
    paragraph = ("Lorem ipsum dolor sit amet. " * 30).strip()
    text = "\n\n".join([paragraph] * 12)
    chunks = split_text(text, 4000)
    assert len(chunks) > 1 and all(0 < len(c) <= 4000 for c in chunks)
    assert "".join(chunks).replace(" ", "").replace("\n", "") == text.replace(" ", "").replace("\n", "")
    assert split_text("x" * 9000, 4000) == ["x" * 4000, "x" * 4000, "x" * 1000]
    assert split_text("") == [""]


def test_every_own_text_exists_in_three_languages():
    for key, variants in TEXTS.items():
        assert set(variants) == {"fr", "de", "en"}, key
    for name, variants in DEEP_LINKS.items():
        assert set(variants) == {"fr", "de", "en"} and len(name.encode()) <= 64, name
    assert {len(commands) for commands in COMMANDS.values()} == {5}


def test_escape_words_and_telegram_languages():
    assert is_escape_word("Annuler") and is_escape_word("abbrechen!") and is_escape_word("zurück")
    assert not is_escape_word("Velo-Rouge-2026") and not is_escape_word("annuler maintenant")
    assert telegram_language("de-LU", "fr") == "de" and telegram_language("lb", "fr") == "fr"
    assert telegram_language(None, "en") == "en"


def test_the_token_is_redacted_from_messages_arguments_and_tracebacks():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretRedactingFilter(TOKEN, "webhook-secret-value"))
    log = logging.getLogger("test.telegram.redaction")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        log.info("HTTP Request: POST https://api.telegram.org/bot%s/getUpdates", TOKEN)
        log.warning("half: %s, secret: %s", TOKEN.split(":")[1], "webhook-secret-value")
        try:
            raise RuntimeError(f"The token `{TOKEN}` was rejected by the server.")
        except RuntimeError as exc:
            log.error("failed", exc_info=exc)
    finally:
        log.removeHandler(handler)
    output = stream.getvalue()
    assert TOKEN not in output and TOKEN.split(":")[1] not in output and "webhook-secret-value" not in output
    assert output.count("[redacted]") >= 4 and "getUpdates" in output and "Traceback" in output


def test_gateway_posts_are_retried_only_when_they_never_left():
    attempts: list[str] = []

    def refuse_then_answer(request: httpx.Request) -> httpx.Response:
        attempts.append(request.url.path)
        if len(attempts) == 1:
            raise httpx.ConnectError("connection refused")
        return httpx.Response(200, json={"messages": [{"text": "ok"}], "language": "fr"})

    async def run() -> None:
        client = GatewayClient("http://gw", "k", retry_delay_s=0, transport=httpx.MockTransport(refuse_then_answer))
        reply = await client.send_text("tg-1", "bonjour")
        assert reply.messages == [{"text": "ok"}] and len(attempts) == 2
        await client.aclose()

    asyncio.run(run())

    sent: list[str] = []

    def time_out(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        raise httpx.ReadTimeout("the gateway may have acted")

    async def run_timeout() -> None:
        client = GatewayClient("http://gw", "k", retry_delay_s=0, transport=httpx.MockTransport(time_out))
        with pytest.raises(GatewayUnavailable):
            await client.send_protected("tg-1", "secret", "password")
        await client.aclose()

    asyncio.run(run_timeout())
    assert len(sent) == 1  # never sent twice


def test_gateway_downloads_only_its_own_links():
    async def run() -> None:
        client = GatewayClient("http://gw", "k", transport=httpx.MockTransport(lambda r: httpx.Response(200)))
        with pytest.raises(GatewayUnavailable):
            await client.fetch("https://elsewhere.example/steal-the-key")
        await client.aclose()

    asyncio.run(run())


def test_telegram_network_errors_are_retried_only_where_no_action_repeats():
    limiter = SafeRetryRateLimiter()
    refused = NetworkError("httpx.ConnectError: refused")
    refused.__cause__ = httpx.ConnectError("refused")
    unknown = NetworkError("Bad Gateway")
    read_timeout = TimedOut()
    read_timeout.__cause__ = httpx.ReadTimeout("slow")
    assert limiter.may_retry("sendMessage", refused)  # never left: safe
    assert not limiter.may_retry("sendMessage", unknown)  # may have been delivered
    assert not limiter.may_retry("sendDocument", read_timeout)
    assert limiter.may_retry("deleteMessage", unknown) and limiter.may_retry("answerCallbackQuery", read_timeout)
    assert not limiter.may_retry("deleteMessage", BadRequest("Message to delete not found"))


def test_settings_derive_the_urls():
    settings = TelegramSettings(token=TOKEN, gateway_url="http://127.0.0.1:8000", gateway_api_key="k",
                                webhook_url="https://bot.example.org/telegram/hook/", api_base_url="http://127.0.0.1:9/")
    assert settings.webhook_mode and settings.webhook_path == "telegram/hook"
    assert settings.base_url == "http://127.0.0.1:9/bot" and settings.base_file_url == "http://127.0.0.1:9/file/bot"


def test_the_launcher_starts_the_bot_once_the_gateway_is_healthy(monkeypatch, tmp_path):
    from bot import launcher

    started: list[tuple[list[str], dict[str, str]]] = []

    class FakePopen:
        def __init__(self, command, cwd, env, stdout, stderr, preexec_fn):
            started.append((command, env))
            self.pid = 0
            stdout.close()

        def poll(self):
            return None

    monkeypatch.setattr(launcher.subprocess, "Popen", FakePopen)
    monkeypatch.setattr(launcher.Services, "healthy", lambda self: True)
    monkeypatch.setattr(launcher, "latest_model", lambda: tmp_path / "model.tar.gz")
    monkeypatch.setenv("DSP_STATE_DIR", str(tmp_path))
    services = launcher.Services(gateway_port=18123, env={"DSP_STATE_DIR": str(tmp_path)}, telegram=True)
    services.start(timeout_s=5)
    assert [command[-1] for command, _ in started][-1] == "bot.telegram"
    assert started[-1][1]["GATEWAY_URL"] == "http://127.0.0.1:18123"
    services.processes.clear()
    started.clear()
    launcher.Services(gateway_port=18123, env={"DSP_STATE_DIR": str(tmp_path)}, telegram=False).start(timeout_s=5)
    assert all("bot.telegram" not in command for command, _ in started)


@pytest.fixture(autouse=True)
def fresh_settings():
    """Settings cached by a test (the launcher's reads DSP_STATE_DIR) are read again afterwards."""
    yield
    from bot.dsp.settings import get_settings

    get_settings.cache_clear()


async def test_images_become_photos_files_documents_and_long_texts_split():
    """The rendering with the real PTB stack and the fake Bot API, the gateway stubbed (no Rasa needed)."""
    import time

    from PIL import Image

    from bot.telegram.app import build_application
    from bot.telegram.handlers import ALLOWED_UPDATES
    from tests.fake_telegram import FakeBotApi

    png = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 90, 160)).save(png, format="PNG")
    base = "/v1/conversations/tg-4242"
    long_text = "\n\n".join(["Étape 1. Ouvrez l'app (MyDSP) ! Puis « Mes documents »."] * 120)
    fetched: list[tuple[str, str]] = []

    def gateway(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            fetched.append((request.url.path, request.headers.get("authorization", "")))
            if request.url.path.endswith("/images/tok"):
                return httpx.Response(200, content=png.getvalue(), headers={"content-type": "image/png"})
            if request.url.path.endswith("/downloads/tok"):
                return httpx.Response(200, content=b"%PDF-1.4 doc", headers={"content-type": "application/pdf"})
            return httpx.Response(404, json={"messages": [{"text": "expiré"}]})
        return httpx.Response(200, json={"language": "fr", "messages": [
            {"text": "Image clé (coupe 3/10) :", "image": f"{base}/images/tok"},
            {"text": "Votre document « Bilan » :", "file": {"name": "Bilan.pdf", "mime_type": "application/pdf",
                                                          "size_bytes": 12, "url": f"{base}/downloads/tok"},
             "buttons": [{"title": "Autre document", "payload": '/choose{"document_id": 7}'}]},
            {"text": "Lien expiré :", "file": {"name": "Vieux.pdf", "mime_type": "application/pdf", "size_bytes": 9,
                                              "url": f"{base}/downloads/old"}},
            {"text": long_text},
        ]})

    fake = FakeBotApi(TOKEN).start()
    settings = TelegramSettings(token=TOKEN, gateway_url="http://gw", gateway_api_key="gw-key", api_base_url=fake.url)
    client = GatewayClient("http://gw", "gw-key", transport=httpx.MockTransport(gateway))
    app = build_application(settings, client)
    errors: list[BaseException] = []

    async def record(update: object, context: object) -> None:
        errors.append(context.error)  # type: ignore[attr-defined]

    app.add_error_handler(record)
    chat = {"id": 4242, "type": "private", "first_name": "Ana"}
    user = {"id": 4242, "is_bot": False, "first_name": "Ana", "language_code": "fr"}
    try:
        await app.initialize()
        await app.start()
        await app.updater.start_polling(poll_interval=0, timeout=5, allowed_updates=ALLOWED_UPDATES)
        [update_id] = fake.push({"message": {"message_id": 1, "date": int(time.time()), "chat": chat, "from": user,
                                             "text": "montre-moi mes documents"}})
        deadline = time.monotonic() + 30
        while not app.update_processor.finished(update_id):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
    finally:
        await app.updater.stop()
        await app.stop()
        await app.shutdown()
        await client.aclose()
        fake.stop()
    assert errors == []
    photo = fake.calls_to("sendPhoto", 4242)
    assert len(photo) == 1 and photo[0].files["photo"][1] == png.getvalue() and photo[0].status == 200
    assert photo[0].params["caption"] == escape("Image clé (coupe 3/10) :")
    document = fake.calls_to("sendDocument", 4242)
    assert len(document) == 1 and document[0].files["document"] == ("Bilan.pdf", b"%PDF-1.4 doc")
    assert document[0].params["reply_markup"]["inline_keyboard"][0][0]["text"] == "Autre document"
    texts = fake.calls_to("sendMessage", 4242)
    assert all(c.status == 200 for c in texts)  # every text is valid MarkdownV2
    assert any(text("send_failed", "fr") in c.params["text"].replace("\\", "") for c in texts)  # the expired link
    long_parts = [c for c in texts if "Étape 1" in c.params["text"]]
    assert len(long_parts) == 2 and all(len(c.params["text"].replace("\\", "")) <= 4096 for c in long_parts)
    assert {auth for _, auth in fetched} == {"Bearer gw-key"}
