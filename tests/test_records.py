"""Record tasks through the gateway with the real Rasa server and action server (issue 3).

Documents (upload with every refusal, "Mes documents", download), access of professionals (grant,
block, unblock, list), and acting as a designated assistant — in French and another language.
Assertions read the gateway's replies and the names of the responses Rasa uttered.
"""

from __future__ import annotations

import hashlib
import io
import json

import pytest
from pypdf import PdfWriter

from tests.support import Chat, logged_in, run_dsp, run_dsp_lines

pytestmark = pytest.mark.services


@pytest.fixture(scope="module", autouse=True)
def directory(services):
    """The professionals' directory (and the demo patients) of the demo data."""
    run_dsp_lines(services, "seed-demo")


def pdf_bytes(pages: int = 1) -> bytes:
    """Return a small valid PDF."""
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=595, height=842)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def stored_files(services) -> set[str]:
    """Names of the files kept in the documents store."""
    folder = services.state_dir / "documents"
    return {path.name for path in folder.iterdir()} if folder.exists() else set()


def said(services, chat: Chat, last: int = 4) -> list[str]:
    """Names of the last responses of the conversation."""
    return services.rasa.responses(chat.id)[-last:]


def requested_slot(services, chat: Chat) -> str | None:
    """The slot the active form asks for."""
    return services.rasa.tracker(chat.id)["slots"].get("requested_slot")


def choose_button(chat: Chat, fragment: str) -> None:
    """Choose the offered button whose payload contains `fragment`."""
    button = next(b for b in chat.buttons if fragment in b["payload"])
    chat.choose(button["payload"])


UPLOAD = {"fr": "je veux ajouter un document à mon dossier", "de": "Ich möchte ein Dokument hinzufügen",
          "en": "I want to add a document to my record"}
MY_DOCUMENTS = {"fr": "montre-moi mes documents", "de": "Zeig mir meine Dokumente", "en": "show me my documents"}


TITLES = {"fr": "Mon bilan 2026", "en": "Łódź wyniki 检查"}  # any script survives the download header


@pytest.mark.parametrize("language", ["fr", "en"])
def test_upload_then_list_then_download(services, language):
    chat, _ = logged_in(services, language)
    chat.say(UPLOAD[language])
    assert said(services, chat, 1) == ["utter_ask_upload_ref"]
    assert (chat.last[-1].get("custom") or {}).get("expects") == "file"
    chat.upload("premier envoi.txt", b"un autre fichier, remplace ensuite\n")  # replaced by the next file
    data = pdf_bytes()
    reply = chat.upload(TITLES[language] + ".pdf", data, "application/pdf")
    assert reply["upload"] == {"accepted": True, "error": None, "format": "pdf", "size_bytes": len(data)}
    assert said(services, chat, 1) == ["utter_ask_document_type"]
    assert any('"holder_expression"' in b["payload"] for b in chat.buttons)
    choose_button(chat, "holder_expression")
    assert said(services, chat, 1) == ["utter_document_added"]

    chat.say(MY_DOCUMENTS[language])
    assert said(services, chat, 1) == ["utter_documents_list"]
    assert TITLES[language] in chat.text  # filled in by the gateway, never seen by Rasa
    assert "premier envoi" not in chat.text  # the replaced file was not filed
    assert TITLES[language] not in json.dumps(services.rasa.tracker(chat.id), ensure_ascii=False)
    choose_button(chat, "document_id")
    assert said(services, chat, 1) == ["utter_document_sent"]
    file = next(m["file"] for m in chat.last if m.get("file"))
    assert file["mime_type"] == "application/pdf" and file["name"].endswith(".pdf")
    response = chat.download(file["url"])
    assert response.status_code == 200
    assert "filename*=UTF-8''" in response.headers["content-disposition"]
    assert hashlib.sha256(response.content).hexdigest() == hashlib.sha256(data).hexdigest()
    # The link is bound to its conversation.
    other = Chat(services.gateway_url, services.key, services.env, language)
    assert other.download(file["url"].replace(chat.id, other.id)).status_code == 404


@pytest.mark.parametrize("language", ["fr", "de"])
def test_every_refused_file_stores_nothing_and_the_chat_goes_on(services, language):
    chat, _ = logged_in(services, language)
    chat.say(UPLOAD[language])
    before = stored_files(services)
    good = pdf_bytes(2)
    refused = [
        ("leer.pdf", b"", "file_empty"),
        ("befund.pdf", b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff" + b"\x00" * 200, "file_type_refused"),
        ("abgeschnitten.pdf", good[: len(good) // 2], "file_damaged"),
        ("gross.pdf", b"%PDF-1.4\n" + b"0" * (1024 * 1024 + 10), "file_too_large"),
        ("riesig.pdf", b"%PDF-1.4\n" + b"0" * (3 * 1024 * 1024), "file_too_large"),
    ]
    for name, data, code in refused:
        reply = chat.upload(name, data)
        assert reply["upload"]["accepted"] is False and reply["upload"]["error"] == code, (name, reply["upload"])
        assert f"utter_err_{code}" in said(services, chat, 2), (name, said(services, chat))
        assert requested_slot(services, chat) == "upload_ref"  # the form still waits for a file
        assert stored_files(services) == before
    reply = chat.upload("befund.pdf", good, "application/pdf")
    assert reply["upload"]["accepted"] is True
    choose_button(chat, "holder_expression")
    assert said(services, chat, 1) == ["utter_document_added"]
    # The same file again is recognised.
    chat.say(UPLOAD[language])
    reply = chat.upload("noch einmal.pdf", good, "application/pdf")
    assert reply["upload"]["error"] == "file_duplicate"
    assert "utter_err_file_duplicate" in said(services, chat, 2)
    chat.say({"fr": "annuler", "de": "abbrechen"}[language])
    assert said(services, chat, 1) == ["utter_cancelled"]


def test_a_file_without_login_is_refused_and_a_task_waits_for_the_login(services):
    from tests.support import activate, new_letter

    chat = Chat(services.gateway_url, services.key, services.env, "fr")
    before = stored_files(services)
    reply = chat.upload("note.txt", "Mes allergies : pénicilline".encode())
    assert reply["upload"]["error"] == "not_logged_in"
    assert said(services, chat, 1) == ["utter_err_not_logged_in"]
    assert stored_files(services) == before

    patient = new_letter(services)
    activate(services, "fr", patient)
    chat = Chat(services.gateway_url, services.key, services.env, "fr")
    chat.say(UPLOAD["fr"])
    assert "utter_need_login" in said(services, chat, 3)
    assert chat.pending == "matricule"
    chat.protect(patient["matricule"])
    chat.protect(patient["password"])
    chat.protect(chat.outbox_code(patient["email"]))
    assert said(services, chat, 1) == ["utter_ask_terms"]
    chat.say("oui")
    assert said(services, chat, 3) == ["utter_logged_in", "utter_resume_task", "utter_ask_upload_ref"]
    reply = chat.upload("note.txt", "Mes allergies : pénicilline".encode())
    assert reply["upload"]["format"] == "text"


GRANT = {"fr": "je veux donner accès à mon dossier à un médecin", "en": "I want to give a doctor access to my record"}


@pytest.mark.parametrize("language", ["fr", "en"])
def test_grant_access_with_every_search_answer(services, language):
    chat, _ = logged_in(services, language)
    chat.say(GRANT[language])
    assert said(services, chat, 1) == ["utter_ask_grant_form_professional_query"]
    chat.say("mu")
    assert said(services, chat, 2) == ["utter_err_search_too_short", "utter_ask_grant_form_professional_query"]
    chat.say("zzyzxw")
    assert said(services, chat, 2) == ["utter_err_search_no_match", "utter_ask_grant_form_professional_query"]
    chat.say("medecin")
    assert said(services, chat, 2) == ["utter_err_search_too_many", "utter_ask_grant_form_professional_query"]
    chat.say("muller")
    assert said(services, chat, 1) == ["utter_choose_professional"]
    assert len(chat.buttons) >= 2 and all("Müller" in b["title"] for b in chat.buttons)
    second = chat.buttons[1]["title"].split(" — ")[0]
    chat.say("2")  # a typed number answers the offered choices, as a voice or text-only client would
    assert said(services, chat, 1) == ["utter_ask_grant_form_access_confirmed"]
    assert second in chat.text
    chat.choose("/affirm")
    assert said(services, chat, 1) == ["utter_access_granted"]
    chat.say({"fr": "qui a accès à mon dossier ?", "en": "who has access to my record?"}[language])
    assert "utter_access_list_granted" in said(services, chat, 2)
    assert second in chat.text
    chat.say("17")  # a number that answers no offered choice is never read as an id
    assert not any(m.get("file") for m in chat.last)
    assert said(services, chat, 1)[0] in {"utter_ask_rephrase", "utter_fallback_helpdesk", "utter_anything_else"}


def test_a_listing_asked_before_the_login_comes_once_after_it(services):
    from tests.support import activate, new_letter

    patient = new_letter(services)
    activate(services, "fr", patient)
    chat = Chat(services.gateway_url, services.key, services.env, "fr")
    chat.say(MY_DOCUMENTS["fr"])
    assert "utter_need_login" in said(services, chat, 3)
    chat.protect(patient["matricule"])
    chat.protect(patient["password"])
    chat.protect(chat.outbox_code(patient["email"]))
    chat.say("oui")  # the terms of use
    assert said(services, chat, 3) == ["utter_logged_in", "utter_resume_task", "utter_no_documents"]
    chat.say("bonjour")  # the conversation goes on normally
    assert said(services, chat, 1) == ["utter_greet"]


BLOCK = {
    "fr": {"block": "je veux bloquer l'accès d'un médecin", "who": "qui a accès à mon dossier ?",
           "unblock": "je veux débloquer un professionnel", "yes_block": "bloquer"},
    "en": {"block": "I want to block a doctor's access to my record", "who": "who has access to my record?",
           "unblock": "I want to unblock a professional", "yes_block": "block"},
}


@pytest.mark.parametrize("language", ["fr", "en"])
def test_block_then_unblock(services, language):
    words = BLOCK[language]
    chat, _ = logged_in(services, language)
    chat.say(GRANT[language])
    chat.say("muller")
    choose_button(chat, "professional_id")
    chat.choose("/affirm")
    assert said(services, chat, 1) == ["utter_access_granted"]

    chat.say(words["block"])
    assert said(services, chat, 1) == ["utter_ask_block_form_professional_query"]
    chat.say("muller cardio")  # name and specialty narrow the search
    assert said(services, chat, 1) == ["utter_choose_professional"]
    assert len(chat.buttons) == 1
    choose_button(chat, "professional_id")
    assert said(services, chat, 1) == ["utter_ask_block_form_access_confirmed"]
    assert any(words["yes_block"] in b["title"].lower() for b in chat.buttons)
    chat.choose("/affirm")
    assert said(services, chat, 1) == ["utter_access_blocked"]
    chat.say(words["who"])
    assert "utter_access_list_blocked" in said(services, chat, 2)

    chat.say(GRANT[language])  # granting a blocked professional asks to lift the block first
    chat.say("muller cardio")
    choose_button(chat, "professional_id")
    assert "utter_err_professional_blocked" in said(services, chat, 2)

    chat.say(words["unblock"])
    assert said(services, chat, 1) == ["utter_choose_blocked_professional"]
    choose_button(chat, "professional_id")
    assert said(services, chat, 1) == ["utter_ask_unblock_form_access_confirmed"]
    chat.choose("/affirm")
    assert said(services, chat, 1) == ["utter_access_unblocked"]
    chat.say(words["unblock"])
    assert said(services, chat, 1) == ["utter_nothing_blocked"]


def test_blocking_removes_an_earlier_access(services):
    chat, _ = logged_in(services, "fr")
    chat.say(GRANT["fr"])
    chat.say("muller cardio")
    choose_button(chat, "professional_id")
    chat.choose("/affirm")
    chat.say(BLOCK["fr"]["block"])
    chat.say("muller cardio")
    choose_button(chat, "professional_id")
    chat.choose("/affirm")
    chat.say(BLOCK["fr"]["who"])
    assert said(services, chat, 1) == ["utter_access_list_blocked"]  # no longer among those with access


ASSISTANT = {
    "de": {"assist": "Ich bin Assistent einer anderen Person und möchte ihr DSP öffnen",
           "back": "zurück zu meinem eigenen Dossier", "file": "Patientenverfügung"},
    "fr": {"assist": "je suis l'assistant d'une autre personne, je veux consulter son DSP",
           "back": "revenir à mon propre dossier", "file": "Directives de ma tante"},
}


@pytest.mark.parametrize("language", ["fr", "de"])
def test_assistant_switches_acts_and_loses_access_when_revoked(services, language):
    words = ASSISTANT[language]
    family = f"Kieffer-{language}"
    holder_chat, holder = logged_in(services, language, name=("Henriette", family))
    holder_chat.say(UPLOAD[language])
    holder_chat.upload(words["file"] + ".pdf", pdf_bytes(3), "application/pdf")
    choose_button(holder_chat, "advance_directives")
    stranger_chat, _ = logged_in(services, language)
    chat, assistant = logged_in(services, language)
    run_dsp(services.env, "designate-assistant", "--holder", holder["matricule"],
            "--assistant", assistant["matricule"])

    chat.say(words["assist"])
    assert said(services, chat, 1) == ["utter_assisted_list"]
    assert any(family in b["title"] for b in chat.buttons)  # the name comes from the gateway
    choose_button(chat, "holder_id")
    assert said(services, chat, 1) == ["utter_ask_switch_confirmed"]
    assert family in chat.text and "[[person]]" not in chat.text
    chat.choose("/affirm")
    assert said(services, chat, 1) == ["utter_switched"]
    chat.say(MY_DOCUMENTS[language])
    assert said(services, chat, 1) == ["utter_documents_list"]
    assert words["file"] in chat.text
    tracker_text = json.dumps(services.rasa.tracker(chat.id), ensure_ascii=False)
    assert family not in tracker_text and words["file"] not in tracker_text

    audit = [json.loads(line) for line in run_dsp_lines(services, "audit", "--last", "30")]
    listing = [row for row in audit if row["action"] == "document.list" and row["on_behalf_of"]][-1]
    assert listing["on_behalf_of"] == f"patient:{listing['patient_id']}"  # the holder's record...
    assert listing["actor_patient_id"] != listing["patient_id"]  # ...read by the assistant

    # Back to one's own record in one step, and into the other's again.
    chat.say(words["back"])
    assert said(services, chat, 1) == ["utter_switched_back"]
    chat.say(words["assist"])
    choose_button(chat, "holder_id")
    chat.choose("/affirm")
    assert said(services, chat, 1) == ["utter_switched"]

    # A person who is not designated gets nothing.
    stranger_chat.say(words["assist"])
    assert said(services, stranger_chat, 1) == ["utter_no_designation"]

    run_dsp(services.env, "designate-assistant", "--holder", holder["matricule"],
            "--assistant", assistant["matricule"], "--revoke")
    chat.say(MY_DOCUMENTS[language])
    assert "utter_err_assistant_revoked" in said(services, chat, 2)
    assert words["file"] not in chat.text
    chat.say(words["back"])
    assert said(services, chat, 1) == ["utter_already_own_record"]


def test_the_terminal_chat_sends_a_file_by_its_path_and_saves_a_document(services, tmp_path):
    import subprocess
    import sys

    chat, _ = logged_in(services, "fr")
    report = tmp_path / "compte rendu.pdf"
    report.write_bytes(pdf_bytes(4))
    lines = ["ajouter un document", str(report), "1", "mes documents", "1", ""]
    out = subprocess.run(
        [sys.executable, "-m", "bot.chat.terminal", "--gateway", services.gateway_url, "--language", "fr",
         "--conversation", chat.id],
        input="\n".join(lines), capture_output=True, text=True, env=services.env, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "utter_document_added" in services.rasa.responses(chat.id)
    saved = list((services.state_dir / "downloads").glob("compte rendu*.pdf"))
    assert saved and saved[0].read_bytes() == report.read_bytes()
    assert "document enregistré" in out.stdout
