"""Voice conversations through the gateway's voice endpoint, with the real Rasa and action servers (issue 7).

Every test talks only as a caller would: transcribed speech ("dix-neuf, quatre-vingt-cinq…",
"K sept Q deux…", "p tiret un a arobase example point org", "le deuxième", "oui", "suivant", silence)
— never a payload, a button or the /protected endpoint. Activation, password reset, giving a doctor
access and medical imaging, in French, German and English; silences, the helpdesk, paging of options.
Assertions read the voice replies (plain text, SSML parsed by `VoiceChat`, protected input, end) and
the names of the responses Rasa uttered.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest
from pydicom.data import get_testdata_file

from tests.support import (
    DSP,
    SECRETS,
    UTTERANCES,
    VoiceChat,
    new_letter,
    run_dsp_lines,
    said_characters,
    said_digits,
    staff,
)

pytestmark = pytest.mark.services

YES = {"fr": "oui", "de": "ja", "en": "yes"}
NO = {"fr": "non merci", "de": "nein", "en": "no"}
FIRST = {"fr": "un", "de": "eins", "en": "one"}
SAY_ONE = {"fr": "Dites un pour", "de": "Sagen Sie eins für", "en": "Say one for"}
URLISH = re.compile(r"https?://|www\.|/viewer/|/v1/|\b[a-z0-9-]+\.(?:lu|org|com)\b", re.IGNORECASE)
SSML = "{http://www.w3.org/2001/10/synthesis}"
#: Caller's turns per task, collected for the voice-vs-chat comparison (printed with -s).
TURNS: dict[str, int] = {}


@pytest.fixture(scope="module", autouse=True)
def directory(services):
    """The professionals' directory of the demo data (for "muller")."""
    run_dsp_lines(services, "seed-demo")


@pytest.fixture(scope="module", autouse=True)
def turns_report():
    """Print the caller's turns per task at the end of the module (visible with -s)."""
    yield
    print("\nturns by voice:", json.dumps(TURNS))


def said(services, call: VoiceChat, last: int = 1) -> list[str]:
    """Names of the last responses of the call."""
    return services.rasa.responses(call.id)[-last:]


def voice_patient(services, name: tuple[str, str] | None = None) -> dict[str, str]:
    """A new letter, with a pass phrase a caller can say."""
    patient = new_letter(services, name=name)
    patient["password"] = f"cheval orange batterie {uuid.uuid4().hex[:6]}"
    SECRETS.add(patient["password"])
    return patient


def voice_activate(services, language: str, patient: dict[str, str]) -> VoiceChat:
    """Activate the account by voice: matricule in pairs, code letter by letter, e-mail spelled."""
    call = VoiceChat(services, language)
    call.say(UTTERANCES[language]["activate"])
    assert call.pending == "matricule"
    call.say(said_digits(patient["matricule"], language), secret=True)
    assert call.pending == "activation_code", call.text
    call.say(said_characters(patient["activation_code"], language), secret=True)
    assert call.pending == "password", call.text
    call.say(patient["password"], secret=True)
    assert call.pending == "password_confirm", call.text
    call.say(patient["password"], secret=True)
    assert call.pending is None and SAY_ONE[language] in call.text  # e-mail or SMS, read as options
    call.say(FIRST[language])
    assert call.pending == "email", call.text
    call.say(said_characters(patient["email"], language, words=True), secret=True)
    assert call.pending == "otp", call.text
    call.say(said_digits(call.outbox_code(patient["email"]), language), secret=True)
    assert call.pending is None
    assert said(services, call) == ["utter_activation_done"]
    return call


def voice_log_in(services, language: str, patient: dict[str, str]) -> VoiceChat:
    """Log in by voice (digits one by one this time), accept the terms, decline the PIN."""
    call = VoiceChat(services, language)
    call.say(UTTERANCES[language]["login"])
    assert call.pending == "matricule"
    call.say(said_digits(patient["matricule"], language, by=1), secret=True)
    assert call.pending == "password", call.text
    call.say(patient["password"], secret=True)
    assert call.pending == "otp", call.text
    call.say(said_digits(call.outbox_code(patient["email"]), language, by=1), secret=True)
    assert said(services, call) == ["utter_ask_terms"]
    assert SAY_ONE[language] in call.text and not URLISH.search(call.text)  # www.esante.lu is not read out
    call.say(YES[language])
    assert said(services, call, 2) == ["utter_logged_in", "utter_offer_pin"]
    call.say(NO[language])
    assert said(services, call) == ["utter_pin_skipped"]
    return call


def assert_nothing_secret_in_rasa(services, call: VoiceChat, patient: dict[str, str]) -> None:
    """Neither the values nor their spoken forms reached Rasa's tracker."""
    tracker = json.dumps(services.rasa.tracker(call.id), ensure_ascii=False)
    for value in (patient["matricule"], patient["activation_code"], patient["password"], patient["email"]):
        assert value not in tracker
    assert "orange batterie" not in tracker and "arobase" not in tracker.lower()


@pytest.mark.parametrize("language", ["fr", "de", "en"])
def test_activation_by_voice(services, language):
    patient = voice_patient(services)
    call = voice_activate(services, language, patient)
    TURNS[f"activation ({language})"] = call.turns
    assert_nothing_secret_in_rasa(services, call, patient)
    assert all(not URLISH.search(text) for _, text in call.transcript)


def test_silence_and_repeat_keep_a_secret_question_pending(services):
    patient = voice_patient(services)
    call = VoiceChat(services, "fr")
    question = call.say(UTTERANCES["fr"]["activate"])["text"]
    assert call.pending == "matricule"
    assert call.say("")["text"].startswith("Je n'ai rien entendu.")  # the question again, still private
    assert question in call.text and call.pending == "matricule"
    assert call.say("répète")["text"] == question and call.pending == "matricule"
    call.say(said_digits(patient["matricule"], "fr"), secret=True)  # the silence did not reach the vault
    assert call.pending == "activation_code"
    assert said(services, call) == ["utter_ask_activation_code_ref"]


@pytest.mark.parametrize("language", ["de", "en"])
def test_password_reset_by_voice(services, language):
    patient = voice_patient(services)
    voice_activate(services, language, patient)
    call = VoiceChat(services, language)
    call.say(UTTERANCES[language]["reset"])
    assert call.pending == "matricule"
    call.say(said_digits(patient["matricule"], language), secret=True)
    assert call.pending == "email"
    call.say(said_characters(patient["email"], language, words=True), secret=True)
    assert call.pending == "reset_token"
    assert {"de": "abbrechen", "en": "cancel"}[language] in call.text  # what to do, not "paste the link"
    assert not re.search(r"einfügen|paste", call.text)
    turns = call.turns
    # The caller opens the e-mail's link on their phone and sets the new password there.
    mail = subprocess.run([str(DSP), "outbox", "--to", patient["email"], "--last"], capture_output=True, text=True,
                          env=services.env, timeout=120, check=True)
    token = re.search(r"token=([A-Za-z0-9_\-]+)", json.loads(mail.stdout)["body"]).group(1)
    SECRETS.add(token)
    patient["password"] = f"nouvelle phrase secrète {uuid.uuid4().hex[:6]}"
    SECRETS.add(patient["password"])
    page = httpx.post(f"{services.gateway_url}/reset-password", timeout=60,
                      data={"token": token, "password": patient["password"], "confirm": patient["password"]})
    assert page.status_code == 200
    call.say({"de": "abbrechen", "en": "cancel"}[language])
    assert call.pending is None and said(services, call) == ["utter_cancelled"]
    TURNS[f"password reset ({language})"] = turns + 1
    again = voice_log_in(services, language, patient)  # the new password works, by voice
    assert_nothing_secret_in_rasa(services, again, patient)


GRANT = {"en": "I want to give a doctor access to my record", "fr": "je veux donner accès à mon dossier à un médecin"}
WHO = {"en": "who has access to my record?", "fr": "qui a accès à mon dossier ?"}


@pytest.mark.parametrize("language", ["en", "fr"])
def test_grant_access_by_voice(services, language):
    patient = voice_patient(services)
    voice_activate(services, language, patient)
    call = voice_log_in(services, language, patient)
    login_turns = call.turns
    call.say(GRANT[language])
    assert said(services, call) == ["utter_ask_grant_form_professional_query"]
    call.say("muller")
    assert said(services, call) == ["utter_choose_professional"]
    two, three = {"en": ("two for", "three for"), "fr": ("deux pour", "trois pour")}[language]
    assert SAY_ONE[language] in call.text and two in call.text and three not in call.text, call.text  # two Müller
    second = re.search(rf"{two} ([^,.]+)", call.text).group(1)
    given = next(word for word in second.split() if word not in ("Dr", "Dr."))
    call.say({"en": "the second one", "fr": "le deuxième"}[language])
    assert said(services, call) == ["utter_ask_grant_form_access_confirmed"]
    assert given in call.text, (given, call.text)  # the one chosen is the one confirmed
    call.say(YES[language])
    assert said(services, call) == ["utter_access_granted"]
    TURNS[f"grant access ({language}, logged in)"] = call.turns - login_turns
    call.say(WHO[language])
    assert "utter_access_list_granted" in said(services, call, 2)
    assert given in call.text


def import_dicom(services, matricule: str, report: Path) -> dict:
    """Import the pydicom test CT with a report for a patient."""
    out = subprocess.run([str(DSP), "import-dicom", str(get_testdata_file("CT_small.dcm")), "--matricule", matricule,
                          "--report", str(report)], capture_output=True, text=True, env=services.env, timeout=120,
                         check=True)
    return json.loads(out.stdout)


def test_imaging_by_voice_is_described_and_goodbye_ends_the_call(services, tmp_path):
    patient = voice_patient(services, name=("Marie", f"Voix-{uuid.uuid4().hex[:4]}"))
    voice_activate(services, "fr", patient)
    call = voice_log_in(services, "fr", patient)
    report = tmp_path / "Compte rendu scanner.txt"
    report.write_text("Scanner thoracique : pas d'anomalie décelée.", encoding="utf-8")
    assert import_dicom(services, patient["matricule"], report)["studies"] == 1
    login_turns = call.turns

    call.say("je veux voir mes radios et le rapport du scanner")
    assert said(services, call) == ["utter_studies_list"]
    assert "Dites un pour Scanner (CT)" in call.text
    call.say("le premier")
    names = said(services, call, 4)
    assert names[0] == "utter_study_header" and names[-1] == "utter_viewer_link", names
    TURNS["imaging (fr, logged in)"] = call.turns - login_turns
    text = call.text
    assert not URLISH.search(text), text  # no image link, no viewer link read out
    assert "Image clé de l'examen Scanner (CT)" in text  # the image described by study and date
    assert "« Compte rendu scanner »" in text and "Mes documents" in text  # the report: its title and where
    assert "Ouvrir le viewer web" in text and "Imagerie médicale" in text
    root = ET.fromstring(call.last["ssml"])  # noqa: S314 - the gateway's own output
    assert root.get("{http://www.w3.org/XML/1998/namespace}lang") == "fr-FR"
    assert len(list(root.iter(f"{SSML}break"))) >= 5
    assert call.say("répète")["text"] == text

    call.say("au revoir")
    assert said(services, call) == ["utter_goodbye"]
    assert call.last["end"] is True  # needs the model trained with utter_goodbye's {end: true}


def test_options_are_paged_and_silences_lead_to_the_helpdesk(services):
    call = VoiceChat(services, "fr")
    call.say("bonjour")
    assert said(services, call) == ["utter_greet"]
    assert "Dites un pour Activer mon compte, deux pour Me connecter, trois pour Mot de passe oublié." in call.text
    assert "suivant" in call.text and "Autre question" not in call.text
    call.say("suivant")
    assert call.text.startswith("Dites quatre pour Autre question")  # numbers stay absolute across pages
    assert said(services, call) == ["utter_greet"]  # paging is the gateway's: Rasa is not asked
    call.say("retour")
    assert call.text.startswith("Dites un pour Activer mon compte")
    call.say("")
    assert call.text.startswith("Je n'ai rien entendu.") and "Activer mon compte" in call.text
    call.say("")
    assert "plus 3 5 2, 2 7, 1 2, 5 0, 1 8, 3 3" in call.text and "un conseiller" in call.text
    root = ET.fromstring(call.last["ssml"])  # noqa: S314 - the gateway's own output
    assert [e.text for e in root.iter(f"{SSML}say-as")] == ["352", "27", "12", "50", "18", "33"]
    call.say("un conseiller")
    assert said(services, call) == ["utter_helpdesk"]
    assert "Dites un pour Ouvrir un ticket" in call.text
    call.say("oui")
    assert call.last["handoff"] and call.last["handoff"]["status"] == "open"  # a person at the helpdesk has it
    ticket_id = staff(services, f"result = helpdesk.active_ticket(uow, {call.id!r}).id")
    agent_id = staff(services, f"result = helpdesk.add_agent(uow, 'anne.voice.{call.id}', 'Anne Weber', "
                               "'Helpdesk-Agent-Passphrase-2026')")
    staff(services, f"result = helpdesk.claim(uow, {agent_id}, {ticket_id}).status")
    staff(services, f"result = helpdesk.reply(uow, {agent_id}, {ticket_id}, 'Je vous rappelle dans une heure.')")
    call.say("allô, vous êtes là ?")  # a call has no push: the agent's messages are read out at the next turn
    assert call.last["handoff"]["status"] == "claimed"
    assert "Anne Weber" in call.text and "Je vous rappelle dans une heure." in call.text
    assert said(services, call)[-1] == "utter_ticket_opened"  # the caller's words went to the agent, not to Rasa


def test_three_silences_end_the_call(services):
    call = VoiceChat(services, "en")
    call.say("")
    assert "did not hear" in call.text and not call.last["end"]
    call.say("")
    assert "helpdesk" in call.text and not call.last["end"]
    call.say("")
    assert call.last["end"] is True


def test_a_matricule_said_in_the_open_conversation_is_masked(services):
    patient = voice_patient(services)
    call = VoiceChat(services, "fr")
    spoken = said_digits(patient["matricule"], "fr")
    SECRETS.add(spoken)
    call.say(f"mon matricule c'est {spoken}")
    tracker = json.dumps(services.rasa.tracker(call.id), ensure_ascii=False)
    assert patient["matricule"] not in tracker and spoken not in tracker
    assert "pas gardé" in call.text


def test_bad_voice_input_gets_a_spoken_answer(services):
    call = VoiceChat(services, "de")
    response = call.client.post(call.url, json={"text": "x" * 3000})
    assert response.status_code == 422 and response.json()["messages"]
    call.say("sieben")  # a number without choices is not a choice: plain conversation
    assert call.text and not call.last["end"]
    unauthorised = httpx.post(call.url, json={"text": "hallo"}, timeout=30)
    assert unauthorised.status_code == 401


