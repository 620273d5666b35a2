"""Unit tests of the voice layer (bot/gateway/voice.py) and its memory in the gateway store (issue 7).

Spoken input: numbers, codes and e-mail addresses said in French, German and English; commands and
choices. Speech: every response of the domain, in every language, renders to valid SSML and to
plain text without emoji, Markdown or URL; options are numbered and paged.
"""

from __future__ import annotations

import re
import unicodedata
import xml.etree.ElementTree as ET

import pytest

from bot.gateway import voice
from tests.test_domain_files import language_of, load_domain

SSML = "{http://www.w3.org/2001/10/synthesis}"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
URLISH = re.compile(r"https?://|www\.|/viewer/|/v1/|\b[a-z0-9-]+\.(?:lu|org|com|net|eu|fr|de)\b", re.IGNORECASE)
MARKDOWN = re.compile(r"\*|__|`|^#|\[[^\]]*\]\(|\{|\}|\[\[")


# --------------------------------------------------------------------------- spoken numbers and codes

@pytest.mark.parametrize(("heard", "digits"), [
    ("dix-neuf quatre-vingt-cinq zéro quatre douze", "19850412"),
    ("soixante-dix-sept quatre-vingt-dix-neuf soixante et onze", "779971"),
    ("quatre-vingts, septante, huitante, nonante", "80708090"),
    ("un neuf huit cinq zéro quatre un deux", "19850412"),
    ("dix-neuf cent quatre-vingt-cinq", "1985"),
    ("deux mille vingt-six", "2026"),
    ("double cinq deux", "552"),
    ("neunzehnhundertfünfundachtzig null vier zwölf", "19850412"),
    ("neunzehn fünfundachtzig, null vier, zwölf", "19850412"),
    ("einundzwanzig doppel drei", "2133"),
    ("achtundvierzig neunundzwanzig dreizehn", "482913"),
    ("nineteen eighty-five oh four twelve", "19850412"),
    ("one nine eight five double oh", "198500"),
    ("twenty-one, ninety-nine, seventy", "219970"),
    ("mon matricule c'est 1985 04 12 123 45", "1985041212345"),
    ("vingt, cinq", "205"),  # a pause keeps two numbers apart
])
def test_spoken_numbers_become_digits(heard, digits):
    assert voice.normalise_protected(heard, "matricule") == digits


def test_a_code_keeps_its_letters_and_a_phone_its_plus():
    assert voice.normalise_protected("mon code d'activation c'est K sept Q deux M neuf P R", "activation_code") \
        == "K7Q2M9PR"
    assert voice.normalise_protected("k sieben q zwei m neun p r", "activation_code") == "K7Q2M9PR"
    assert voice.normalise_protected("plus trois cinq deux six deux un", "phone") == "+352621"
    assert voice.normalise_protected("+352 621 123 456", "phone") == "+352621123456"


def test_words_that_are_not_numbers_stay_and_the_check_refuses_them():
    assert voice.normalise_protected("je ne sais pas", "otp") != ""
    assert not voice.normalise_protected("je ne sais pas", "otp").isdigit()


@pytest.mark.parametrize(("heard", "address"), [
    ("jean point dupont arobase example point lu", "jean.dupont@example.lu"),
    ("p tiret un a deux b arobase example point org", "p-1a2b@example.org"),
    ("jean tiret bas martin at example dot com", "jean_martin@example.com"),
    ("Anna Bindestrich Schmit at example Punkt lu", "anna-schmit@example.lu"),
    ("Jean.Dupont @example.lu", "jean.dupont@example.lu"),
])
def test_spoken_email_addresses(heard, address):
    assert voice.normalise_protected(heard, "email") == address


@pytest.mark.parametrize("language", ["fr", "de", "en"])
def test_codes_said_as_callers_say_them_round_trip(language):
    import random
    import uuid

    from tests.support import said_characters, said_digits

    rng = random.Random(7)
    for _ in range(300):
        matricule = "".join(rng.choice("0123456789") for _ in range(13))
        for by in (1, 2):
            assert voice.normalise_protected(said_digits(matricule, language, by), "matricule") == matricule
        code = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(8))
        assert voice.normalise_protected(said_characters(code, language), "activation_code") == code
        address = f"p-{uuid.UUID(int=rng.getrandbits(128)).hex[:8]}@example.org"
        assert voice.normalise_protected(said_characters(address, language, words=True), "email") == address


def test_passwords_and_tokens_are_taken_as_heard():
    assert voice.normalise_protected(" Velo Rouge 42 ", "password") == " Velo Rouge 42 "
    assert voice.normalise_protected("abc", "reset_token") == "abc"


def test_number_words_in_free_text_become_digits_for_the_redaction():
    assert "19850412" in voice.digits_in_text("mon matricule c'est dix-neuf quatre-vingt-cinq zéro quatre douze")
    assert voice.digits_in_text("je veux voir deux documents") == "je veux voir deux documents"


# --------------------------------------------------------------------------- commands and choices

@pytest.mark.parametrize(("heard", "command"), [
    ("répète", "repeat"), ("Noch einmal, bitte", "repeat"), ("repeat", "repeat"),
    ("retour", "back"), ("zurück", "back"), ("back", "back"),
    ("aide", "help"), ("Hilfe", "help"), ("help please", "help"),
    ("annuler", "cancel"), ("abbrechen", "cancel"), ("cancel", "cancel"),
    ("un conseiller", "helpdesk"), ("einen Berater", "helpdesk"), ("helpdesk", "helpdesk"),
    ("suivant", "next"), ("weiter", "next"), ("next", "next"),
    ("oui", "yes"), ("ja", "yes"), ("yes please", "yes"), ("non merci", "no"), ("nein", "no"), ("no", "no"),
])
def test_commands_in_each_language(heard, command):
    assert voice.command_of(heard)[0] == command


def test_a_sentence_holding_a_command_word_is_not_a_command():
    assert voice.command_of("je veux annuler l'accès de mon médecin") is None
    assert voice.command_of("") is None


@pytest.mark.parametrize(("heard", "number"), [
    ("un", 1), ("une", 1), ("deux", 2), ("2", 2), ("option 2", 2), ("numéro deux", 2), ("le deuxième", 2),
    ("la troisième", 3), ("zwei", 2), ("Nummer drei", 3), ("die zweite", 2), ("eins", 1), ("three", 3),
    ("number two", 2), ("the second one", 2), ("option four", 4), ("le dernier", 4), ("quatorze", 14),
])
def test_spoken_choices(heard, number):
    assert voice.choice_of(heard, 4) == number


@pytest.mark.parametrize("heard", ["je cherche muller", "un deux trois quatre cinq six", "trois cents", "", "zéro"])
def test_what_is_not_a_choice(heard):
    assert voice.choice_of(heard, 4) is None


# --------------------------------------------------------------------------- speech


def parse(ssml: str, language: str) -> ET.Element:
    """Parse SSML with an XML parser and check the root."""
    root = ET.fromstring(ssml)  # noqa: S314 - our own output
    assert root.tag == f"{SSML}speak"
    assert root.get(XML_LANG) == voice.XML_LANG[language]
    return root


def assert_speakable(text: str) -> None:
    """No emoji, no Markdown, no URL, no template left."""
    assert text.strip()
    assert not URLISH.search(text), text
    assert not MARKDOWN.search(text), text
    assert not [ch for ch in text if unicodedata.category(ch) == "So"], text


def test_options_are_numbered_and_paged_with_absolute_numbers():
    labels = [f"Dr Müller {n}" for n in range(1, 8)]
    first = voice.plain(voice.options_segments(labels, "fr", 0))
    assert first.startswith("Dites un pour Dr Müller 1, deux pour Dr Müller 2, trois pour Dr Müller 3.")
    assert "suivant" in first
    second = voice.plain(voice.describe_page(labels, "fr", 3))
    assert second.startswith("Dites quatre pour Dr Müller 4, cinq pour")
    last = voice.plain(voice.describe_page(labels, "de", 6))
    assert last == "Sagen Sie sieben für Dr Müller 7."
    assert voice.plain(voice.describe_page(labels, "en", 9)) == "There are no more choices."


def test_text_is_escaped_in_ssml_and_kept_in_the_text():
    rendered = voice.render([{"text": "Voici le document.", "file": {"name": "R&D <bilan> \"1\".pdf"}}], "fr")
    speech = voice.speech_of(rendered.segments, "fr")
    root = parse(speech.ssml, "fr")
    assert "R&D <bilan>" in "".join(root.itertext())
    assert "R&D <bilan>" in speech.text and "Mes documents" in speech.text


def test_phone_numbers_are_read_digit_by_digit():
    speech = voice.speech_of(voice.say(["Appelez le +352 27 12 50 18 33."], "fr"), "fr")
    assert "plus 3 5 2, 2 7, 1 2, 5 0, 1 8, 3 3" in speech.text
    root = parse(speech.ssml, "fr")
    spelled = [e.text for e in root.iter(f"{SSML}say-as") if e.get("interpret-as") == "characters"]
    assert spelled == ["352", "27", "12", "50", "18", "33"]


def test_french_labels_are_tagged_in_german_and_english():
    for language in ("de", "en"):
        root = parse(voice.speech_of(voice.say(["Öffnen Sie « Mes documents »."], language), language).ssml,
                     language)
        assert [e.get(XML_LANG) for e in root.iter(f"{SSML}lang")] == ["fr-FR"]
    root = parse(voice.speech_of(voice.say(["Ouvrez « Mes documents »."], "fr"), "fr").ssml, "fr")
    assert not list(root.iter(f"{SSML}lang"))


def test_imaging_reply_is_described_not_shown():
    messages = [
        {"text": "Scanner (CT) du 5 mars 2026 — Thorax. 1 série(s), 3 image(s)."},
        {"text": "Voici le rapport de l'examen (« Images radiologiques ou autres… » dans l'app).",
         "file": {"name": "compte-rendu.txt"}},
        {"text": "Image clé (« Key images Document Radiology »).", "image": "/v1/conversations/c/images/tok"},
        {"text": "Pour parcourir… :\nhttp://127.0.0.1:8000/viewer/abc.def"},
    ]
    speech = voice.speech_of(voice.render(messages, "fr").segments, "fr")
    assert_speakable(speech.text)
    assert "1 série, 3 images" in speech.text
    assert "Image clé de l'examen Scanner (CT) du 5 mars 2026, Thorax" in speech.text
    assert "« compte-rendu »" in speech.text and "Ouvrir le viewer web" in speech.text


def test_goodbye_ends_and_reset_link_prompt_says_what_to_do():
    assert voice.render([{"text": "Au revoir.", "custom": {"end": True}}], "fr").end
    prompt = [{"text": "Ouvrez le lien reçu par e-mail… Vous pouvez aussi coller ici le lien.",
               "protected_input": {"kind": "reset_token"}}]
    text = voice.plain(voice.render(prompt, "fr").segments)
    assert "coller" not in text and "annuler" in text


#: Sample values of the responses' placeholders (what actions fill in).
SAMPLES = {
    "masked_address": "m•••@e•••.org", "ticket_reference": "HD-000042", "tries_left": "2", "min_length": "8",
    "max_length": "128", "retry_after_seconds": "30", "limit_mb": "20", "quota_mb": "200", "min_letters": "3",
    "count": "42", "upload_limit_mb": "20", "formats": "PDF, JPEG, PNG, TIFF, texte, DICOM",
    "professional_name": "Dr Anna Müller", "professional_profession": "Cardiologie",
}
#: What the gateway's views add to a response (see bot/gateway/views.py).
VIEW_LINES = ["• Mon bilan 2026 — Expression du titulaire — 01/03/2026 — Marie Hoffmann",
              "• Scanner (CT) du 5 mars 2026 — Thorax", "• Directives — Directives anticipées — 12.02.2025"]


def as_gateway_message(variation: dict) -> dict:
    """Build the message the gateway would send for one response variation, placeholders filled."""
    text = re.sub(r"\{([a-z_]+)\}", lambda m: SAMPLES.get(m.group(1), "3"), variation.get("text") or "")
    text = text.replace("[[study]]", "Scanner (CT) du 5 mars 2026 — Thorax. 1 série(s), 3 image(s).")
    text = text.replace("[[person]]", "Marie Hoffmann")
    buttons = [{"title": b["title"], "payload": b["payload"]} for b in variation.get("buttons") or []]
    custom = dict(variation.get("custom") or {})
    message: dict = {"text": text, "buttons": buttons}
    view = custom.pop("view", None)
    if view in ("documents", "studies", "assisted"):
        lines = VIEW_LINES if view != "assisted" else []
        message["text"] = "\n".join([text, *lines])
        message["buttons"] += [{"title": f"choice {n}", "payload": f"/choose{{\"id\":\"{n}\"}}"}
                               for n in range(len(lines) or 2)]
    elif view == "document_file":
        message["file"] = {"name": "Compte rendu 2026.pdf"}
    elif view == "key_image":
        message["image"] = "/v1/conversations/c/images/token"
    elif view == "viewer":
        message["text"] = f"{text}\nhttp://127.0.0.1:8000/viewer/token.mac"
    if custom.get("protected_input"):
        message["protected_input"] = custom.pop("protected_input")
    message["custom"] = custom or None
    return message


RESPONSES = load_domain()["responses"]
VARIANTS = [(name, index) for name in sorted(RESPONSES) for index in range(len(RESPONSES[name]))]


@pytest.mark.parametrize(("name", "index"), VARIANTS, ids=[f"{n}-{i}" for n, i in VARIANTS])
def test_every_response_renders_to_valid_ssml_and_clean_text(name, index):
    variation = RESPONSES[name][index]
    language = language_of(variation)
    assert language in voice.LANGUAGES
    message = as_gateway_message(variation)
    rendered = voice.render([message], language, [b["payload"] for b in message["buttons"]])
    speech = voice.speech_of(rendered.segments, language)
    assert_speakable(speech.text)
    root = parse(speech.ssml, language)
    assert_speakable("".join(root.itertext()))
    assert len(rendered.labels) == len(message["buttons"])
    if message["buttons"]:
        first = {"fr": "Dites un pour", "de": "Sagen Sie eins für", "en": "Say one for"}[language]
        assert first in speech.text
        assert len(list(root.iter(f"{SSML}break"))) >= min(len(message["buttons"]), voice.PAGE_SIZE) - 1
    if language != "fr" and "«" in speech.text:
        assert list(root.iter(f"{SSML}lang"))
    assert rendered.end == (name == "utter_goodbye")


# --------------------------------------------------------------------------- memory between turns


def test_voice_memory_is_stored_with_the_conversation_and_old_rows_still_load(tmp_path, monkeypatch):
    from bot.dsp.db import reset_engine
    from bot.dsp.settings import get_settings
    from bot.gateway import store

    monkeypatch.setenv("DSP_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("DSP_DATABASE_URL", f"sqlite:///{tmp_path / 'dsp.sqlite3'}")
    get_settings.cache_clear()
    reset_engine()
    try:
        store.create_tables()
        state = store.ConversationState("v-1", "fr", "otp", ["/affirm"], ["/affirm"])
        state.voice = {"said": [["text", "Bonjour.", ""]], "options": ["Oui"], "page": 0, "silences": 1}
        store.save(state)
        assert store.load("v-1").voice == state.voice
        store.save(store.ConversationState("v-2", "de"))  # a chat conversation: no voice memory
        assert store.load("v-2").voice == {}
        from bot.dsp.db import get_sessionmaker

        with get_sessionmaker().begin() as session:  # a row written before voice existed
            session.get(store.ConversationRow, "v-2").offered_json = '{"offered": ["/deny"], "last": []}'
        assert store.load("v-2").voice == {} and store.load("v-2").offered == ["/deny"]
    finally:
        reset_engine()
        get_settings.cache_clear()
