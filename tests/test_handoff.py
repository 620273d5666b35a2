"""Handoff to the helpdesk through the real gateway, Rasa and action server (issue 6).

Three routes into a ticket (asking for a person, the fallback failing twice, a step where the guide
sends to the helpdesk), the ticket's category and redacted transcript, the assistant silent while
an agent holds the conversation, the agent's messages delivered through the outbox, and the
assistant back after the agent closes the ticket. The agent's side is driven through the domain
layer in a subprocess with the services' environment (the console has its own browser tests).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import SECRETS, Chat, new_letter, staff

pytestmark = pytest.mark.services

OPEN_TICKET = "/open_ticket"


def agent(services, username: str) -> int:
    """Create a helpdesk agent; return its id."""
    return int(staff(services, f"result = helpdesk.add_agent(uow, {username!r}, 'Anne Weber', "
                               "'Helpdesk-Agent-Passphrase-2026')"))


def ticket_of(services, chat: Chat) -> dict[str, Any] | None:
    """Return the conversation's open ticket as a dict, or None."""
    return staff(services, f"""
        info = helpdesk.active_ticket(uow, {chat.id!r})
        result = None if info is None else {{"id": info.id, "reference": info.reference, "status": info.status,
                  "category": info.category, "priority": info.priority, "language": info.language,
                  "reason": info.reason, "tried": list(info.tried)}}
    """)


def transcript_of(services, agent_id: int, ticket_id: int) -> str:
    """Return what an agent sees of a ticket (transcript and messages), as one text."""
    return str(staff(services, f"""
        view = helpdesk.view_ticket(uow, {agent_id}, {ticket_id})
        result = repr(view)
    """))


def reply_of(chat: Chat, text: str) -> dict[str, Any]:
    """Send a text; return the whole reply (messages and handoff)."""
    response = chat.client.post(f"{chat.base}/messages", json={"text": text, "language": chat.language})
    assert response.status_code == 200, response.text
    body = dict(response.json())
    chat.last = body["messages"]
    return body


def outbox(chat: Chat, wait: float = 5) -> dict[str, Any]:
    """Long-poll the conversation's outbox."""
    response = chat.client.get(f"{chat.base}/outbox", params={"wait": wait})
    assert response.status_code == 200, response.text
    return dict(response.json())


def user_turns(services, chat: Chat) -> int:
    """Count the user turns Rasa has seen in the conversation."""
    return sum(1 for e in services.rasa.tracker(chat.id)["events"] if e.get("event") == "user")


def ticket_button(chat: Chat) -> str:
    """Return the payload of the offered "open a ticket" button."""
    payloads = [b["payload"] for b in chat.buttons if b["payload"].startswith(OPEN_TICKET)]
    assert payloads, chat.last
    return payloads[0]


def test_asking_for_a_person_opens_a_ticket_that_an_agent_answers_then_the_assistant_resumes(services):
    chat = Chat(services.gateway_url, services.key, services.env, "en")
    chat.say("how do I add a document to my record")  # needs a login: the login form asks the matricule
    assert chat.pending == "matricule"
    chat.say("cancel")
    chat.say("I want to talk to a real person")
    assert "+352 27 12 50 18 33" in chat.text and ticket_button(chat)
    chat.say("yes")  # the offer answered in words
    ticket = ticket_of(services, chat)
    assert ticket is not None and ticket["status"] == "open" and ticket["language"] == "en"
    assert ticket["category"] == "documents" and ticket["reason"] == "asked"  # the NLU's latest task
    assert ticket["reference"] in chat.text
    assert "form:login_form" in ticket["tried"]

    chat.say("I want to log in")  # while the ticket waits, the assistant still helps…
    assert chat.pending == "matricule"
    agent_id = agent(services, "anne.en")
    staff(services, f"result = helpdesk.claim(uow, {agent_id}, {ticket['id']}).status")
    body = reply_of(chat, "it is blue horse seven")  # …an answer to its private question, after the claim
    assert body["handoff"]["status"] == "claimed" and "not passed on" in body["messages"][0]["text"]
    SECRETS.add("blue horse seven")
    notice = outbox(chat)
    assert "Anne Weber" in notice["messages"][0]["text"] and notice["handoff"]["status"] == "claimed"
    assert outbox(chat, wait=0)["messages"] == []  # each message is delivered once

    before = user_turns(services, chat)
    body = reply_of(chat, "My letter never arrived, can you send a new one?")
    assert body["messages"] == [] and body["handoff"]["status"] == "claimed"  # the assistant is silent
    assert user_turns(services, chat) == before  # Rasa never saw it
    seen = transcript_of(services, agent_id, ticket["id"])
    assert "My letter never arrived" in seen and "blue horse" not in seen

    staff(services, f"result = helpdesk.reply(uow, {agent_id}, {ticket['id']}, 'A new letter is on its way.')")
    delivered = outbox(chat)
    assert "A new letter is on its way." in delivered["messages"][0]["text"]

    staff(services, f"result = helpdesk.close(uow, {agent_id}, {ticket['id']}).status")
    closing = outbox(chat)
    assert "closed" in closing["messages"][0]["text"] and closing["handoff"] is None
    body = reply_of(chat, "thank you")
    assert body["messages"] and body["handoff"] is None  # the assistant answers again
    assert user_turns(services, chat) == before + 1
    assert ticket_of(services, chat) is None


def test_two_misunderstandings_offer_a_ticket_in_german(services):
    chat = Chat(services.gateway_url, services.key, services.env, "de")
    chat.say("xqzv blorp wuggle frmbl")
    chat.say("xqzv blorp wuggle frmbl")
    assert services.rasa.responses(chat.id)[-1] == "utter_fallback_helpdesk"
    chat.choose(ticket_button(chat))
    ticket = ticket_of(services, chat)
    assert ticket is not None and ticket["reason"] == "fallback" and ticket["language"] == "de"
    assert ticket["category"] == "other" and "fallback" in ticket["tried"]
    chat.say("ein Ticket eröffnen")  # a second request finds the same ticket
    assert ticket["reference"] in chat.text
    assert services.rasa.responses(chat.id)[-1] == "utter_ticket_already_open"


def test_no_email_for_a_reset_opens_a_password_ticket_without_any_secret(services):
    patient = new_letter(services)
    chat = Chat(services.gateway_url, services.key, services.env, "fr")
    chat.say(f"mon adresse est {patient['email']} et j'ai oublié mon mot de passe")  # redacted by the gateway
    assert chat.pending == "matricule"
    chat.protect(patient["matricule"])
    assert chat.pending == "email"
    chat.say("1")  # the only choice under the e-mail question: "no e-mail address: ask the helpdesk"
    ticket = ticket_of(services, chat)
    assert ticket is not None and ticket["category"] == "password" and ticket["reason"] == "no_email"
    assert chat.pending is None and ticket["reference"] in chat.text  # the reset form is over
    agent_id = agent(services, "anne.fr")
    seen = transcript_of(services, agent_id, ticket["id"])
    SECRETS.add(patient["matricule"], patient["email"])
    assert patient["matricule"] not in seen and patient["email"] not in seen
    assert "oublié mon mot de passe" in seen
