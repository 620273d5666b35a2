"""Unit tests of the gateway's pure parts: cleaning user text, converting Rasa's messages."""

from __future__ import annotations

import pytest

from bot.gateway import redact
from bot.gateway.store import MAX_OFFERED, ConversationState


@pytest.mark.parametrize(
    ("raw", "secret"),
    [
        ("mon matricule est 1985041212345", "1985041212345"),
        ("matricule 1985 0412 123 45", "1985 0412 123 45"),
        ("mon code c'est 482913", "482913"),
        ("écrivez-moi à jean.dupont@example.lu", "jean.dupont@example.lu"),
        ("mon portable +352 621 123 456", "621 123 456"),
        ("le code de la lettre: K7QZ2M9P", "K7QZ2M9P"),
        ("voici le lien https://dsp.example/reset-password?token=abc", "token=abc"),
    ],
)
def test_secrets_in_open_text_are_masked(raw, secret):
    cleaned, masked = redact.clean(raw)
    assert masked
    assert secret not in cleaned


def test_plain_questions_pass_unchanged():
    text = "Je n'arrive pas à me connecter à MyDSP depuis 2 jours"
    assert redact.clean(text) == (text, False)


@pytest.mark.parametrize(
    "raw", ['/provide_protected{"protected_ref": "pi_x"}', "  //restart", "/greet", '/ /inform{"x":"y"}', "/\t/restart"]
)
def test_a_leading_slash_never_reaches_rasa(raw):
    cleaned, _ = redact.clean(raw)
    assert not cleaned.startswith("/")


def test_text_is_bounded_and_control_characters_removed():
    cleaned, _ = redact.clean("a\x00b" + "x" * 5000)
    assert "\x00" not in cleaned
    assert len(cleaned) == redact.MAX_TEXT_CHARS


def test_offered_payloads_are_bounded_and_newest_kept():
    state = ConversationState("c")
    state.offer([f"/p{i}" for i in range(MAX_OFFERED + 10)])
    assert len(state.offered) == MAX_OFFERED
    assert state.offered[-1] == f"/p{MAX_OFFERED + 9}"
    assert "/p0" not in state.offered


def test_rasa_messages_become_contract_messages():
    from bot.gateway.app import Gateway

    state = ConversationState("c", language="fr")
    raw = [
        {"recipient_id": "c", "text": "Choisissez", "buttons": [{"title": "E-mail", "payload": "/inform"}]},
        {"recipient_id": "c", "text": "Votre matricule ?"},
        {"recipient_id": "c", "custom": {"protected_input": {"kind": "matricule"}}},
        {"recipient_id": "c", "custom": {"set_language": "de"}},
    ]
    reply = Gateway.to_reply(state, raw)
    assert [m.text for m in reply.messages] == ["Choisissez", "Votre matricule ?"]
    assert reply.messages[0].buttons[0].payload == "/inform"
    assert reply.messages[1].protected_input.kind == "matricule"
    assert state.pending_kind == "matricule"
    assert state.language == "de"
    assert "/inform" in state.offered


def test_language_detection_needs_clear_text():
    from bot.gateway.language import detect

    assert detect("Ich habe mein Passwort vergessen und brauche Hilfe") == "de"
    assert detect("I cannot log in to my health record") == "en"
    assert detect("je n'arrive pas à activer mon compte") == "fr"
    assert detect("ok") is None


@pytest.mark.parametrize(("text", "answer"), [("1985041212345", True), ("Velo-Rouge", True), ("annuler", False),
                                                ("Abbrechen!", False), ("je ne sais pas", False), ("zurück", False)])
def test_one_word_while_a_secret_is_pending_is_taken_as_the_answer(text, answer):
    from bot.gateway.app import looks_like_an_answer

    assert looks_like_an_answer(text) is answer


@pytest.mark.parametrize(("text", "kind", "answer"), [("000 743", "otp", True), ("1985 0412 123 45", "matricule", True),
                                                       ("K3NG 4GE6", "activation_code", True),
                                                       ("je ne sais pas", "otp", False),
                                                       ("violet tramway mange", "password", False)])
def test_grouped_codes_while_a_code_is_pending_are_the_answer(text, kind, answer):
    from bot.gateway.app import looks_like_an_answer

    assert looks_like_an_answer(text, kind) is answer


def test_download_names_of_any_script_make_a_valid_header():
    from bot.gateway.views import content_disposition

    header = content_disposition("Łódź wyniki 检查.pdf")
    header.encode("latin-1")  # what the HTTP server must be able to send
    assert header.startswith('attachment; filename="')
    assert "filename*=UTF-8''%C5%81%C3%B3d%C5%BA" in header
    assert content_disposition("检查.pdf").startswith('attachment; filename="document.pdf"')


def test_download_tokens_refuse_forgeries(monkeypatch, tmp_path):
    monkeypatch.setenv("DSP_STATE_DIR", str(tmp_path))
    from bot.dsp.settings import get_settings
    from bot.gateway.views import check_download_token, download_token, seal, unseal

    get_settings.cache_clear()
    token = download_token("conv-a", 12)
    assert check_download_token("conv-a", token) == 12
    assert check_download_token("conv-b", token) is None
    assert check_download_token("conv-a", "².1796097553.abc") is None  # not a 500
    assert check_download_token("conv-a", token, now=10**10) is None  # expired
    sealed = seal("viewer", {"c": "conv-a", "s": 4}, 60)
    assert unseal("viewer", sealed)["s"] == 4
    assert unseal("image", sealed) is None  # another purpose
    assert unseal("viewer", sealed[:-1] + ("0" if sealed[-1] != "0" else "1")) is None
    get_settings.cache_clear()


def test_conversation_state_is_written_only_when_it_changed(monkeypatch, tmp_path):
    monkeypatch.setenv("DSP_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("DSP_DATABASE_URL", raising=False)
    from sqlalchemy import event

    from bot.dsp.db import get_engine, reset_engine
    from bot.dsp.settings import get_settings
    from bot.gateway import store

    get_settings.cache_clear()
    reset_engine()
    writes: list[str] = []

    def count(conn, cursor, statement, *args):  # noqa: ANN001, ANN002 - SQLAlchemy's event signature
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE")):
            writes.append(statement)

    try:
        state = store.load("c-1")
        state.language = "fr"
        store.save(state)  # a new conversation: written
        event.listen(get_engine(), "before_cursor_execute", count)
        again = store.load("c-1")
        store.save(again)
        assert writes == []  # nothing changed: no write
        again.offer(["/greet"])
        store.save(again)
        store.save(again)
        assert len(writes) == 1
        again.voice["silences"] = 1  # changed in place
        store.save(again)
        assert len(writes) == 2
        stored = store.load("c-1")
        assert (stored.language, stored.offered, stored.voice) == ("fr", ["/greet"], {"silences": 1})
    finally:
        reset_engine()
        get_settings.cache_clear()
