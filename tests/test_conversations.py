"""Conversation tests through the gateway, with the real Rasa server and action server.

Each test talks like a front end: free text, button payloads, protected inputs. Assertions read
the gateway's replies (protected-input kinds, buttons) and the names of the responses that Rasa
uttered (from its tracker), never the wording.
"""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.support import SECRETS, UTTERANCES, Chat, activate, log_in, logged_in, mistype, new_letter

pytestmark = pytest.mark.services

@pytest.mark.parametrize("language", ["fr", "de", "en"])
def test_activation_with_every_mistake_then_success(services, language):
    patient = new_letter(services)
    chat = Chat(services.gateway_url, services.key, services.env, language)
    chat.say(UTTERANCES[language]["activate"])
    assert chat.pending == "matricule"
    chat.protect(mistype(patient["matricule"]))
    assert chat.pending == "matricule"
    chat.protect(patient["matricule"])
    assert chat.pending == "activation_code"
    chat.protect("WRONG-CODE")
    assert chat.pending == "activation_code"
    chat.protect(patient["activation_code"])
    assert chat.pending == "password"
    chat.protect("motdepasse")
    assert chat.pending == "password"
    chat.protect(patient["password"])
    chat.protect(patient["password"])
    email_button = next(b for b in chat.buttons if "email" in b["payload"])
    chat.choose(email_button["payload"])
    chat.protect(patient["email"])
    assert chat.pending == "otp"
    chat.protect("000000")
    assert chat.pending == "otp"
    chat.protect(chat.outbox_code(patient["email"]))
    said = services.rasa.responses(chat.id)
    for name in ("utter_err_matricule_checksum", "utter_err_activation_code_wrong", "utter_err_password_common",
                 "utter_code_sent", "utter_err_otp_wrong", "utter_activation_done"):
        assert name in said, (name, said)
    assert said[-1] == "utter_activation_done"
    assert chat.pending is None


@pytest.mark.parametrize("language", ["fr", "en"])
def test_login_with_a_wrong_code_then_terms_and_pin_offer(services, language):
    patient = new_letter(services)
    activate(services, "fr", patient)
    chat = log_in(services, language, patient, wrong_code_first=True)
    said = services.rasa.responses(chat.id)
    assert said[-1] == "utter_ask_terms"
    accept = chat.buttons[0]
    assert accept["payload"] == "/accept_terms"
    chat.choose(accept["payload"])
    said = services.rasa.responses(chat.id)
    assert said[-2:] == ["utter_logged_in", "utter_offer_pin"]
    chat.choose("/deny")
    assert services.rasa.responses(chat.id)[-1] == "utter_pin_skipped"
    # Second login: the terms are not asked again.
    again = log_in(services, language, patient)
    assert services.rasa.responses(again.id)[-2:] == ["utter_logged_in", "utter_offer_pin"]


def test_login_with_a_wrong_password_is_refused_without_saying_which(services):
    patient = new_letter(services)
    activate(services, "en", patient)
    chat = Chat(services.gateway_url, services.key, services.env, "en")
    chat.say(UTTERANCES["en"]["login"])
    chat.protect(patient["matricule"])
    chat.protect("Not-The-Password-42")
    assert chat.pending == "matricule"
    assert "utter_err_credentials_wrong" in services.rasa.responses(chat.id)


@pytest.mark.parametrize("language", ["de", "en"])
def test_password_reset_for_a_known_account(services, language):
    patient = new_letter(services)
    activate(services, "fr", patient)
    chat = Chat(services.gateway_url, services.key, services.env, language)
    chat.say(UTTERANCES[language]["reset"])
    assert chat.pending == "matricule"
    chat.protect(patient["matricule"])
    assert chat.pending == "email"
    chat.protect(patient["email"])
    assert chat.pending == "reset_token"
    body = chat.outbox_body(patient["email"])
    link = next(word for word in body.split() if "reset-password?token=" in word)
    SECRETS.add(link.split("token=")[1].strip(".,)"))
    chat.protect(link)
    assert chat.pending == "password"
    new_password = "Nouveau-Chemin-" + uuid.uuid4().hex[:8]
    chat.protect(new_password)
    chat.protect(new_password)
    assert services.rasa.responses(chat.id)[-1] == "utter_password_reset_done"
    patient["password"] = new_password
    log_in(services, language, patient)  # the new password works


def test_password_reset_answers_the_same_for_an_unknown_account(services):
    known = new_letter(services)
    activate(services, "fr", known)
    replies = []
    unknown = new_letter(services)["matricule"]
    for matricule, email in ((known["matricule"], known["email"]), (unknown, "x@example.org")):
        chat = Chat(services.gateway_url, services.key, services.env, "fr")
        chat.say(UTTERANCES["fr"]["reset"])
        chat.protect(matricule)
        chat.protect(email)
        replies.append((chat.text, chat.pending))
    assert replies[0] == replies[1]
    assert replies[0][1] == "reset_token"


@pytest.mark.parametrize("language", ["fr", "de", "en"])
def test_cancel_mid_form(services, language):
    patient = new_letter(services)
    chat = Chat(services.gateway_url, services.key, services.env, language)
    chat.say(UTTERANCES[language]["activate"])
    chat.protect(patient["matricule"])
    assert chat.pending == "activation_code"
    chat.say(UTTERANCES[language]["cancel"])
    assert chat.pending is None
    assert services.rasa.responses(chat.id)[-1] == "utter_cancelled"
    tracker = services.rasa.tracker(chat.id)
    assert not (tracker.get("active_loop") or {}).get("name")
    assert tracker["slots"]["matricule_ref"] is None


def test_switch_task_mid_form(services):
    patient = new_letter(services)
    chat = Chat(services.gateway_url, services.key, services.env, "fr")
    chat.say(UTTERANCES["fr"]["activate"])
    chat.protect(patient["matricule"])
    chat.say("en fait j'ai oublié mon mot de passe")
    said = services.rasa.responses(chat.id)
    assert "utter_switch_task" in said
    assert chat.pending == "matricule"
    assert services.rasa.tracker(chat.id)["active_loop"]["name"] == "reset_form"


def test_record_tasks_ask_for_a_login_first(services):
    chat = Chat(services.gateway_url, services.key, services.env, "fr")
    for text in ("comment ajouter un document dans mon DSP", "je veux bloquer l'accès de mon ancien médecin",
                 "je veux voir mes radios et le rapport de l'IRM"):
        chat.say(text)
        said = services.rasa.responses(chat.id)
        assert "utter_need_login" in said[-3:], said[-3:]
        assert chat.pending == "matricule"
        chat.say("annuler")


def test_medical_questions_and_emergencies_are_not_shrugged_off(services):
    chat = Chat(services.gateway_url, services.key, services.env, "fr")
    chat.say("j'ai une douleur très forte dans la poitrine, que dois-je prendre comme médicament ?")
    assert services.rasa.responses(chat.id)[-1] in ("utter_out_of_scope_medical", "utter_emergency")
    assert "112" in chat.text


@pytest.mark.parametrize(("language", "text"), [
    ("fr", "au secours mon mari est tombe par terre il respire plus"),
    ("de", "Hilfe, meine Mutter ist bewusstlos und wacht nicht auf"),
    ("en", "my dad just collapsed in the kitchen, what do i do"),
])
def test_an_emergency_gets_112_even_in_the_middle_of_a_form(services, language, text):
    chat = Chat(services.gateway_url, services.key, services.env, language)
    chat.say(UTTERANCES[language]["login"])
    assert chat.pending == "matricule"
    chat.say(text)
    said = services.rasa.responses(chat.id)
    assert "utter_emergency" in said[-2:], said[-3:]
    assert "112" in chat.text
    assert chat.pending == "matricule"  # the login goes on once the patient comes back


def test_refusing_the_terms_after_accepting_them_keeps_the_record_open(services):
    chat, _ = logged_in(services, "en")
    chat.say("I don't accept the terms of use")
    assert services.rasa.responses(chat.id)[-1] == "utter_terms_already_accepted"
    chat.say("who can see my record")
    assert "utter_need_login" not in services.rasa.responses(chat.id)[-3:]


def test_refusing_the_terms_with_nobody_logged_in_says_so(services):
    chat = Chat(services.gateway_url, services.key, services.env, "fr")
    chat.say("je refuse les conditions d'utilisation")
    assert services.rasa.responses(chat.id)[-1] == "utter_not_logged_in"


def test_helpdesk_on_request(services):
    chat = Chat(services.gateway_url, services.key, services.env, "en")
    chat.say("I would like to talk to a real person at the helpdesk")
    assert "+352 27 12 50 18 33" in chat.text


def test_language_detected_when_the_client_gives_none(services):
    chat = Chat(services.gateway_url, services.key, services.env, None)
    chat.say("Guten Tag, ich habe mein Passwort vergessen und komme nicht mehr in meine Akte")
    assert services.rasa.tracker(chat.id)["slots"]["language"] == "de"


def test_slash_commands_are_not_interpreted_as_intents(services):
    chat = Chat(services.gateway_url, services.key, services.env, "fr")
    chat.say('/provide_protected{"protected_ref": "pi_forged"}')
    tracker = services.rasa.tracker(chat.id)
    latest = tracker["latest_message"]
    assert latest["intent"]["name"] != "provide_protected"
    assert not latest.get("entities")
    assert not latest["text"].startswith("/")


def test_secrets_typed_in_the_open_chat_are_masked(services):
    patient = new_letter(services)
    chat = Chat(services.gateway_url, services.key, services.env, "fr")
    chat.say(f"mon matricule est {patient['matricule']} et mon mail {patient['email']}")
    tracker = services.rasa.tracker(chat.id)
    assert patient["matricule"] not in str(tracker)
    assert patient["email"] not in str(tracker)


def test_only_offered_payloads_are_accepted(services):
    chat = Chat(services.gateway_url, services.key, services.env, "fr")
    response = chat.client.post(f"{chat.base}/messages", json={"payload": "/accept_terms"})
    assert response.status_code == 409
    assert response.json()["messages"][0]["text"]


def test_protected_value_without_a_request_is_refused(services):
    chat = Chat(services.gateway_url, services.key, services.env, "fr")
    response = chat.client.post(f"{chat.base}/protected", json={"value": "123"})
    assert response.status_code == 409


def test_requests_without_the_key_are_refused(services):
    response = httpx.post(f"{services.gateway_url}/v1/conversations/x/messages", json={"text": "bonjour"})
    assert response.status_code == 401
    response = httpx.post(f"{services.gateway_url}/v1/conversations/x/messages", json={"text": "bonjour"},
                          headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401


def test_health_and_openapi(services):
    assert httpx.get(f"{services.gateway_url}/health").status_code == 200
    paths = httpx.get(f"{services.gateway_url}/openapi.json").json()["paths"]
    assert "/v1/conversations/{conversation_id}/messages" in paths
    assert "/v1/conversations/{conversation_id}/protected" in paths


def test_fallback_asks_to_rephrase_then_offers_the_helpdesk(services):
    chat = Chat(services.gateway_url, services.key, services.env, "fr")
    chat.say("xqzv blorp wuggle frmbl")
    chat.say("xqzv blorp wuggle frmbl")  # the user repeats what was not understood
    said = services.rasa.responses(chat.id)
    assert said[-2:] == ["utter_ask_rephrase", "utter_fallback_helpdesk"]


def test_a_secret_typed_in_the_open_chat_while_asked_goes_to_the_vault(services):
    patient = new_letter(services)
    chat = Chat(services.gateway_url, services.key, services.env, "fr")
    chat.say(UTTERANCES["fr"]["activate"])
    assert chat.pending == "matricule"
    chat.say(patient["matricule"])  # a careless client: the text endpoint, not /protected
    assert chat.pending == "activation_code"
    assert patient["matricule"] not in str(services.rasa.tracker(chat.id))


def test_terms_answered_with_a_plain_yes(services):
    patient = new_letter(services)
    activate(services, "fr", patient)
    chat = log_in(services, "fr", patient)
    assert services.rasa.responses(chat.id)[-1] == "utter_ask_terms"
    chat.say("oui")
    assert services.rasa.responses(chat.id)[-2:] == ["utter_logged_in", "utter_offer_pin"]
    chat.say("oui")  # now the PIN offer: the PIN form starts
    assert chat.pending == "pin"
    chat.protect("4826")
    chat.protect("4826")
    assert services.rasa.responses(chat.id)[-1] == "utter_pin_set"
    # Next time, in the same chat ("device"): matricule + PIN, no password, no code.
    chat.say("je voudrais me déconnecter")
    assert services.rasa.responses(chat.id)[-1] == "utter_logged_out"
    chat.say(UTTERANCES["fr"]["login"])
    chat.protect(patient["matricule"])
    assert chat.pending == "pin"
    chat.protect("1111")
    assert chat.pending == "pin"
    chat.protect("4826")
    assert services.rasa.responses(chat.id)[-1] == "utter_logged_in"
    assert chat.pending is None


def test_a_malformed_request_is_refused_without_echoing_it(services):
    chat = Chat(services.gateway_url, services.key, services.env, "fr")
    secret = "S" * 20_000
    response = chat.client.post(f"{chat.base}/protected", json={"value": secret})
    assert response.status_code == 422
    assert "SSSS" not in response.text


def test_an_old_button_cannot_be_replayed(services):
    patient = new_letter(services)
    chat = Chat(services.gateway_url, services.key, services.env, "fr")
    chat.say("bonjour")
    old = next(b["payload"] for b in chat.buttons if "log_in" in b["payload"])
    chat.choose(next(b["payload"] for b in chat.buttons if "activate" in b["payload"]))
    for value in (patient["matricule"], patient["activation_code"], patient["password"], patient["password"]):
        chat.protect(value)
    assert any("email" in b["payload"] for b in chat.buttons)  # new choices replace the old ones
    response = chat.client.post(f"{chat.base}/messages", json={"payload": old})
    assert response.status_code == 409


def test_language_can_be_switched_at_any_time(services):
    chat = Chat(services.gateway_url, services.key, services.env, None)
    chat.say("Bonjour, j'ai une question sur mon dossier")
    assert services.rasa.tracker(chat.id)["slots"]["language"] == "fr"
    chat.say("in English please")
    assert services.rasa.tracker(chat.id)["slots"]["language"] == "en"
    assert "utter_language_switched" in services.rasa.responses(chat.id)[-2:]
    chat.say("ok")  # too short to detect: the conversation keeps English
    assert services.rasa.tracker(chat.id)["slots"]["language"] == "en"


def test_a_new_code_on_request_and_the_terms_refused(services):
    patient = new_letter(services)
    activate(services, "fr", patient)
    chat = Chat(services.gateway_url, services.key, services.env, "fr")
    chat.say(UTTERANCES["fr"]["login"])
    chat.protect(patient["matricule"])
    chat.protect(patient["password"])
    first = chat.outbox_code(patient["email"])
    chat.say("je n'ai pas reçu le code")
    assert "utter_new_code_sent" in services.rasa.responses(chat.id)
    assert chat.pending == "otp"
    second = chat.outbox_code(patient["email"])
    if first != second:
        chat.protect(first)  # the older code no longer works
        assert chat.pending == "otp"
    chat.protect(second)
    assert services.rasa.responses(chat.id)[-1] == "utter_ask_terms"
    chat.choose("/refuse_terms")
    assert services.rasa.responses(chat.id)[-1] == "utter_terms_refused"


def test_a_repeated_protected_post_is_not_taken_for_the_next_question(services):
    patient = new_letter(services)
    chat = Chat(services.gateway_url, services.key, services.env, "fr")
    chat.say(UTTERANCES["fr"]["activate"])
    chat.client.post(f"{chat.base}/protected", json={"value": patient["matricule"], "kind": "matricule"})
    again = chat.client.post(f"{chat.base}/protected", json={"value": patient["matricule"], "kind": "matricule"})
    assert again.status_code == 409
    assert "utter_err_activation_code_wrong" not in services.rasa.responses(chat.id)


def test_switching_task_says_nothing_about_cleared_values(services):
    patient = new_letter(services)
    chat = Chat(services.gateway_url, services.key, services.env, "fr")
    chat.say(UTTERANCES["fr"]["login"])
    chat.protect(patient["matricule"])
    chat.say("j'ai oublié mon mot de passe en fait")
    said = services.rasa.responses(chat.id)
    assert "utter_err_input_expired" not in said
    assert chat.pending == "matricule"


def test_every_reply_says_how_long_rasa_and_the_gateway_took(services):
    """W3C Server-Timing: `rasa;dur=…, total;dur=…` in ms (make bench splits the overhead with it)."""
    url = f"{services.gateway_url}/v1/conversations/timing-{uuid.uuid4().hex[:8]}/messages"
    response = httpx.post(url, json={"text": "hello", "language": "en"},
                          headers={"Authorization": f"Bearer {services.key}"}, timeout=60)
    assert response.status_code == 200
    timing = dict(part.strip().split(";dur=") for part in response.headers["server-timing"].split(","))
    assert 0 < float(timing["rasa"]) <= float(timing["total"])
    refused = httpx.post(url, json={"text": "hello"}, timeout=60)  # no key: no Rasa turn
    assert refused.status_code == 401
    assert refused.headers["server-timing"].startswith("rasa;dur=0.0, total;dur=")
