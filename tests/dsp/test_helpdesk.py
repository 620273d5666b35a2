"""Helpdesk domain: triage, tickets, deliveries, agents, sessions and the audit of every view (issue 6)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from bot.dsp import helpdesk
from bot.dsp.cli import main as dsp_main
from bot.dsp.errors import STAFF_ERROR_CODES, DspError, HelpdeskError, PasswordRejected
from bot.dsp.orm import AgentSession, AuditEvent, HelpdeskAgent, Ticket
from bot.dsp.uow import UnitOfWork

PASSWORD = "Helpdesk-Agent-Passphrase-2026"
MATRICULE = "1985061512345"


def call(fn, *args, **kwargs):
    with UnitOfWork() as uow:
        result = fn(uow, *args, **kwargs)
        uow.commit()
        return result


def refused(fn, *args, **kwargs) -> DspError:
    with pytest.raises(DspError) as caught:
        call(fn, *args, **kwargs)
    return caught.value


def new_ticket(conversation_id: str = "tg-1001", *, category: str = "login", priority: str = "normal",
               language: str = "fr", transcript=None, tried=("form:login_form",), patient_id=None):
    lines = transcript if transcript is not None else [
        helpdesk.TranscriptLine("user", "je n'arrive pas à me connecter"),
        helpdesk.TranscriptLine("assistant", "Quel est votre matricule ?"),
    ]
    return call(helpdesk.open_ticket, conversation_id, language=language, category=category, priority=priority,
                reason="asked", transcript=lines, tried=list(tried), patient_id=patient_id)


def new_agent(username: str = "anne", name: str = "Anne Weber") -> int:
    return call(helpdesk.add_agent, username, name, PASSWORD)


def audit_rows(action: str) -> list[AuditEvent]:
    with UnitOfWork() as uow:
        return list(uow.session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def all_audit_text() -> str:
    with UnitOfWork() as uow:
        return "\n".join(f"{r.actor} {r.action} {r.object} {r.outcome} {r.detail}"
                         for r in uow.session.scalars(select(AuditEvent)))


# --------------------------------------------------------------------------- triage, channel, guide
@pytest.mark.parametrize(("intent", "reason", "expected"), [
    ("log_in", "account_locked", ("login", "high")),
    (None, "activation_locked", ("activation", "high")),
    ("view_imaging", "lost_letter", ("activation", "normal")),  # the reason wins over the intent
    ("log_in", "no_email", ("password", "normal")),
    (None, "otp_limit", ("login", "normal")),
    (None, "quota_exceeded", ("documents", "normal")),
    ("activate_account", "asked", ("activation", "normal")),
    ("set_pin", None, ("login", "normal")),
    ("log_out", None, ("login", "normal")),
    ("reset_password", None, ("password", "normal")),
    ("list_documents", None, ("documents", "normal")),
    ("block_access", "asked", ("access", "high")),
    ("grant_access", None, ("access", "normal")),
    ("unblock_access", None, ("access", "normal")),
    ("list_access", None, ("access", "normal")),
    ("switch_back", None, ("assistant", "normal")),
    ("assistant_access", None, ("assistant", "normal")),
    ("view_imaging", "fallback", ("imaging", "normal")),
    ("out_of_scope", "fallback", ("other", "low")),
    (None, None, ("other", "low")),
])
def test_triage_takes_the_category_from_the_reason_then_the_intent(intent, reason, expected):
    assert helpdesk.triage(intent, reason) == helpdesk.Triage(*expected)


@pytest.mark.parametrize(("conversation_id", "channel"), [
    ("tg-123", "telegram"), ("term-ab", "terminal"), ("voice-9", "voice"), ("t-abc", "api"), ("tgx", "api"),
])
def test_channel_of(conversation_id, channel):
    assert helpdesk.channel_of(conversation_id) == channel


def test_guide_steps_exist_for_every_category_in_three_languages():
    for category in helpdesk.CATEGORIES:
        by_language = {language: helpdesk.guide_steps(category, language) for language in ("fr", "de", "en")}
        counts = {len(steps) for steps in by_language.values()}
        assert len(counts) == 1 and counts.pop() >= 2, category  # the same steps in each language
        assert by_language["fr"] != by_language["de"] != by_language["en"]
    assert "Mot de passe oublié" in " ".join(helpdesk.guide_steps("password", "fr"))
    assert "Expression du titulaire" in " ".join(helpdesk.guide_steps("documents", "de"))
    assert helpdesk.guide_steps("imaging", "lb") == helpdesk.guide_steps("imaging", "fr")


# --------------------------------------------------------------------------- assistant side
def test_open_ticket_stores_a_redacted_transcript_and_is_idempotent():
    first = new_ticket(transcript=[
        helpdesk.TranscriptLine("user", f"mon matricule est {MATRICULE} et mon mail anne@example.lu"),
        helpdesk.TranscriptLine("assistant", "Je ne peux pas vous aider ici."),
    ], patient_id=None)
    assert first.reference == f"HD-{first.id:06d}" and first.status == "open" and first.channel == "telegram"
    assert first.tried == ("form:login_form",) and first.claimed_by is None and first.reason == "asked"
    again = new_ticket(transcript=[
        helpdesk.TranscriptLine("assistant", "Je ne peux pas vous aider ici."),
        helpdesk.TranscriptLine("user", "je veux un humain"),
    ])
    assert again.id == first.id  # one ticket per conversation while it is open
    agent_id = new_agent()
    view = call(helpdesk.view_ticket, agent_id, first.id)
    texts = [line.text for line in view.transcript]
    assert texts == ["mon matricule est *** et mon mail ***", "Je ne peux pas vous aider ici.", "je veux un humain"]
    assert MATRICULE not in repr(view) and "anne@example.lu" not in repr(view)
    assert [row.outcome for row in audit_rows("helpdesk.ticket.open")] == ["ok", "already_open"]
    assert audit_rows("helpdesk.ticket.open")[0].actor == "assistant"
    assert call(helpdesk.active_ticket, "tg-1001").id == first.id
    assert call(helpdesk.active_ticket, "tg-other") is None
    assert call(helpdesk.ticket_info, first.id).reference == first.reference
    assert call(helpdesk.ticket_info, 999) is None


def test_open_ticket_refuses_an_unknown_category_and_cuts_long_lines():
    with pytest.raises(ValueError):
        new_ticket(category="billing")
    info = new_ticket("term-1", transcript=[helpdesk.TranscriptLine("user", "a" * 5000)])
    view = call(helpdesk.view_ticket, new_agent(), info.id)
    assert len(view.transcript[0].text) == helpdesk.MAX_TEXT_CHARS and info.channel == "terminal"


def test_a_closed_ticket_lets_the_conversation_open_a_new_one():
    agent_id = new_agent()
    first = new_ticket()
    call(helpdesk.close, agent_id, first.id)
    assert call(helpdesk.active_ticket, "tg-1001") is None
    second = new_ticket()
    assert second.id != first.id and second.reference != first.reference


def test_claim_reply_close_are_delivered_once_in_order_and_notes_never():
    agent_id = new_agent()
    ticket = new_ticket("tg-77")
    other = new_ticket("term-5")
    claimed = call(helpdesk.claim, agent_id, ticket.id)
    assert claimed.status == "claimed" and claimed.claimed_by == "Anne Weber" and claimed.claimed_at is not None
    call(helpdesk.relay_user_message, ticket.id, f"Voici mon numéro {MATRICULE}, la lettre n'est pas arrivée")
    call(helpdesk.add_note, agent_id, ticket.id, "Vérifier l'adresse postale")
    call(helpdesk.reply, agent_id, ticket.id, "Une nouvelle lettre part demain (J+1) ! Code postal ? [merci]")
    closed = call(helpdesk.close, agent_id, ticket.id)
    assert closed.status == "closed" and closed.closed_at is not None

    assert call(helpdesk.pending_deliveries, prefix="term-") == []
    pending = call(helpdesk.pending_deliveries, prefix="tg-")
    assert [(d.kind, d.text, d.agent_name, d.conversation_id) for d in pending] == [
        ("claimed", None, "Anne Weber", "tg-77"),
        ("agent_reply", "Une nouvelle lettre part demain (J+1) ! Code postal ? [merci]", "Anne Weber", "tg-77"),
        ("closed", None, "Anne Weber", "tg-77"),
    ]
    assert call(helpdesk.pending_deliveries, conversation_id="tg-77", limit=1) == pending[:1]
    assert call(helpdesk.mark_delivered, [pending[0].id]) == [pending[0].id]
    assert [d.id for d in call(helpdesk.pending_deliveries, conversation_id="tg-77")] == [d.id for d in pending[1:]]
    # two pollers read the same pending list: each id is marked (so delivered) by one of them only
    assert call(helpdesk.mark_delivered, [d.id for d in pending]) == [d.id for d in pending[1:]]
    assert call(helpdesk.mark_delivered, [d.id for d in pending]) == []
    assert call(helpdesk.pending_deliveries) == []

    view = call(helpdesk.view_ticket, agent_id, ticket.id)
    assert [(m.author, m.kind) for m in view.messages] == [
        ("system", "claimed"), ("user", "user"), ("note", "note"), ("agent", "agent_reply"), ("system", "closed")]
    assert view.messages[1].text == "Voici mon numéro ***, la lettre n'est pas arrivée"
    assert view.messages[2].delivered_at is None and view.messages[3].delivered_at is not None
    assert view.guide == tuple(helpdesk.guide_steps("login", "fr"))
    assert other.status == "open" and call(helpdesk.active_ticket, "term-5").status == "open"
    audit_text = all_audit_text()
    assert "nouvelle lettre" not in audit_text and "adresse postale" not in audit_text  # no text in the audit
    assert {r.actor for r in audit_rows("helpdesk.ticket.reply")} == {f"agent:{agent_id}"}
    assert {r.actor for r in audit_rows("helpdesk.message.user")} == {"patient"}


def test_a_prefix_with_like_wildcards_matches_literally():
    agent_id = new_agent()
    call(helpdesk.claim, agent_id, new_ticket("tgX1").id)
    assert call(helpdesk.pending_deliveries, prefix="tg_") == []
    call(helpdesk.claim, agent_id, new_ticket("tg_1").id)
    assert [d.conversation_id for d in call(helpdesk.pending_deliveries, prefix="tg_")] == ["tg_1"]


def test_only_the_claiming_agent_replies_and_closes():
    anne, marc = new_agent("anne"), new_agent("marc", "Marc Schmit")
    ticket = new_ticket()
    assert refused(helpdesk.reply, anne, ticket.id, "bonjour").code == "ticket_not_claimed"
    call(helpdesk.claim, anne, ticket.id)
    assert call(helpdesk.claim, anne, ticket.id).status == "claimed"  # again: nothing changes
    error = refused(helpdesk.claim, marc, ticket.id)
    assert error.code == "ticket_already_claimed" and error.params == {"agent": "Anne Weber"}
    assert refused(helpdesk.reply, marc, ticket.id, "bonjour").code == "ticket_already_claimed"
    assert refused(helpdesk.close, marc, ticket.id).code == "ticket_already_claimed"
    call(helpdesk.add_note, marc, ticket.id, "Je peux reprendre si besoin")  # notes: any agent
    call(helpdesk.close, anne, ticket.id)
    assert refused(helpdesk.close, anne, ticket.id).code == "ticket_closed"
    assert refused(helpdesk.claim, marc, ticket.id).code == "ticket_closed"
    assert refused(helpdesk.reply, anne, ticket.id, "encore").code == "ticket_closed"
    assert refused(helpdesk.relay_user_message, ticket.id, "allô ?").code == "ticket_closed"
    assert refused(helpdesk.view_ticket, anne, 4242).code == "ticket_not_found"
    refusals = [r.outcome for r in audit_rows("helpdesk.ticket.claim")]
    assert refusals.count("ticket_already_claimed") == 1 and "ticket_closed" in refusals
    assert len(call(helpdesk.pending_deliveries)) == 2  # one "claimed", one "closed"


def test_two_agents_racing_for_one_ticket_cannot_both_claim_it(monkeypatch):
    from sqlalchemy.orm.attributes import set_committed_value

    anne, marc = new_agent("anne"), new_agent("marc", "Marc Schmit")
    ticket = new_ticket()
    call(helpdesk.claim, anne, ticket.id)  # Anne's claim commits first…
    read = helpdesk._ticket

    def read_before_annes_claim(uow, agent, ticket_id, action):  # …after Marc's request read the ticket
        row = read(uow, agent, ticket_id, action)
        set_committed_value(row, "status", "open")
        set_committed_value(row, "claimed_by_agent_id", None)
        return row

    monkeypatch.setattr(helpdesk, "_ticket", read_before_annes_claim)
    error = refused(helpdesk.claim, marc, ticket.id)
    assert error.code == "ticket_already_claimed" and error.params == {"agent": "Anne Weber"}
    monkeypatch.undo()
    assert call(helpdesk.ticket_info, ticket.id).claimed_by == "Anne Weber"
    assert [d.kind for d in call(helpdesk.pending_deliveries)] == ["claimed"]  # the user is told once


def test_texts_are_bounded_and_not_empty():
    agent_id = new_agent()
    ticket = new_ticket()
    call(helpdesk.claim, agent_id, ticket.id)
    error = refused(helpdesk.reply, agent_id, ticket.id, "x" * (helpdesk.MAX_TEXT_CHARS + 1))
    assert error.code == "text_too_long" and error.params == {"max_chars": helpdesk.MAX_TEXT_CHARS}
    assert refused(helpdesk.reply, agent_id, ticket.id, "   ").code == "text_empty"
    assert refused(helpdesk.add_note, agent_id, ticket.id, MATRICULE).code == "text_empty"  # only a secret
    call(helpdesk.reply, agent_id, ticket.id, "y" * helpdesk.MAX_TEXT_CHARS)
    assert call(helpdesk.pending_deliveries)[-1].text == "y" * helpdesk.MAX_TEXT_CHARS


# --------------------------------------------------------------------------- staff accounts and sessions
def test_add_agent_checks_name_and_password_policy():
    assert new_agent("Claire.W", "  Claire   Weber ") > 0
    with UnitOfWork() as uow:
        row = uow.session.scalars(select(HelpdeskAgent)).one()
        assert row.username == "claire.w" and row.display_name == "Claire Weber"
        assert row.password_hash.startswith("$argon2id$") and PASSWORD not in row.password_hash
    assert refused(helpdesk.add_agent, "claire.w", "Other", PASSWORD).code == "agent_username_taken"
    assert refused(helpdesk.add_agent, "bad name!", "X", PASSWORD).code == "agent_username_invalid"
    assert refused(helpdesk.add_agent, "marc", "   ", PASSWORD).code == "agent_name_invalid"
    with pytest.raises(PasswordRejected):
        call(helpdesk.add_agent, "marc", "Marc", "short")
    with pytest.raises(PasswordRejected):
        call(helpdesk.add_agent, "marc", "Marc", "password123")


def test_authenticate_answers_the_same_for_unknown_user_and_wrong_password_then_locks(fake_clock):
    agent_id = new_agent()
    assert call(helpdesk.authenticate, " ANNE ", PASSWORD) == helpdesk.AgentInfo(agent_id, "anne", "Anne Weber")
    unknown = refused(helpdesk.authenticate, "nobody", PASSWORD)
    wrong = refused(helpdesk.authenticate, "anne", "not-the-password")
    assert (unknown.code, unknown.params) == (wrong.code, wrong.params) == ("agent_credentials_invalid", {})
    for _ in range(3):
        assert refused(helpdesk.authenticate, "anne", "not-the-password").code == "agent_credentials_invalid"
    locked = refused(helpdesk.authenticate, "anne", "not-the-password")  # the 5th
    assert locked.code == "agent_locked" and locked.params == {"retry_after_minutes": 15}
    assert refused(helpdesk.authenticate, "anne", PASSWORD).code == "agent_locked"  # even the right one
    fake_clock.advance(14 * 60)
    assert refused(helpdesk.authenticate, "anne", PASSWORD).params == {"retry_after_minutes": 1}
    fake_clock.advance(61)
    assert call(helpdesk.authenticate, "anne", PASSWORD).id == agent_id
    for _ in range(4):
        refused(helpdesk.authenticate, "nobody", "whatever")  # an unknown name locks the same way
    assert refused(helpdesk.authenticate, "nobody", "whatever").code == "agent_locked"
    outcomes = [r.outcome for r in audit_rows("helpdesk.login")]
    assert outcomes.count("ok") == 2 and outcomes.count("agent_locked") == 5
    assert PASSWORD not in all_audit_text() and "not-the-password" not in all_audit_text()
    assert "nobody" not in all_audit_text()


def test_sessions_store_only_a_hash_expire_when_idle_or_old_and_end(fake_clock):
    agent_id = new_agent()
    token, csrf = call(helpdesk.start_session, agent_id)
    assert len(token) >= 40 and len(csrf) >= 40 and token != csrf
    with UnitOfWork() as uow:
        row = uow.session.scalars(select(AgentSession)).one()
        assert token not in row.token_hash and row.csrf_token == csrf
    agent = call(helpdesk.agent_for_session, token)
    assert agent == helpdesk.AgentInfo(agent_id, "anne", "Anne Weber", csrf_token=csrf)
    assert call(helpdesk.agent_for_session, token + "x") is None
    assert call(helpdesk.agent_for_session, "") is None
    fake_clock.advance(29 * 60)
    assert call(helpdesk.agent_for_session, token) is not None  # refreshes the idle timer
    fake_clock.advance(29 * 60)
    assert call(helpdesk.agent_for_session, token) is not None
    fake_clock.advance(31 * 60)
    assert call(helpdesk.agent_for_session, token) is None  # idle for more than 30 minutes
    assert call(helpdesk.agent_for_session, token) is None  # and it stays ended

    token, _ = call(helpdesk.start_session, agent_id)
    for _ in range(17):  # active all day: at most 8 hours
        fake_clock.advance(29 * 60)
        alive = call(helpdesk.agent_for_session, token) is not None
    assert not alive
    token, _ = call(helpdesk.start_session, agent_id)
    call(helpdesk.end_session, token)
    assert call(helpdesk.agent_for_session, token) is None
    call(helpdesk.end_session, token)  # ignored
    assert [r.outcome for r in audit_rows("helpdesk.logout")] == ["ok"]
    assert token not in all_audit_text()


def test_a_deactivated_agent_cannot_sign_in_or_keep_a_session():
    agent_id = new_agent()
    token, _ = call(helpdesk.start_session, agent_id)
    with UnitOfWork() as uow:
        uow.session.get(HelpdeskAgent, agent_id).active = False
        uow.commit()
    assert call(helpdesk.agent_for_session, token) is None
    assert refused(helpdesk.authenticate, "anne", PASSWORD).code == "agent_credentials_invalid"
    assert refused(helpdesk.list_tickets, agent_id).code == "agent_unknown"


# --------------------------------------------------------------------------- the queue
def test_queue_filters_orders_and_is_audited(fake_clock):
    agent_id = new_agent()
    old = new_ticket("tg-1", category="documents", language="de", priority="normal")
    fake_clock.advance(3 * 3600)
    low = new_ticket("tg-2", category="other", language="fr", priority="low")
    high = new_ticket("term-3", category="login", language="fr", priority="high")
    closed = new_ticket("tg-4", category="login", language="en")
    call(helpdesk.close, agent_id, closed.id)
    call(helpdesk.claim, agent_id, low.id)

    def ids(**filters):
        return [t.id for t in call(helpdesk.list_tickets, agent_id, **filters)]

    assert ids() == [high.id, old.id, low.id, closed.id]  # not closed first, then priority, then oldest
    assert ids(status="active") == [high.id, old.id, low.id]
    assert ids(status="claimed") == [low.id]
    assert ids(status="closed") == [closed.id]
    assert ids(category="login") == [high.id, closed.id]
    assert ids(language="de") == [old.id]
    assert ids(max_age_hours=1) == [high.id, low.id, closed.id]
    assert ids(status="open", language="fr", max_age_hours=24) == [high.id]
    assert call(helpdesk.list_tickets, agent_id, status="claimed")[0].claimed_by == "Anne Weber"
    for bad in ({"status": "pending"}, {"category": "billing"}, {"language": "it"}, {"max_age_hours": 0}):
        assert refused(helpdesk.list_tickets, agent_id, **bad).code == "filter_invalid"
    views = audit_rows("helpdesk.queue.view")
    assert len(views) == 9 and views[0].actor == f"agent:{agent_id}"
    assert json.loads(views[7].detail) == {"category": None, "count": 1, "language": "fr", "max_age_hours": 24,
                                           "status": "open"}


def test_every_ticket_view_is_audited_with_the_patient():
    agent_id = new_agent()
    ticket = new_ticket(patient_id=None)
    call(helpdesk.view_ticket, agent_id, ticket.id)
    rows = audit_rows("helpdesk.ticket.view")
    assert len(rows) == 1 and rows[0].object == f"ticket:{ticket.id}" and rows[0].actor == f"agent:{agent_id}"
    with UnitOfWork() as uow:
        assert uow.session.get(Ticket, ticket.id).reference == ticket.reference


def test_staff_error_codes_are_all_raised_and_distinct_from_the_assistants():
    import re
    from pathlib import Path

    from bot.dsp.errors import ERROR_CODES

    source = Path(helpdesk.__file__).read_text(encoding="utf-8")
    assert set(re.findall(r'HelpdeskError\(\s*"([a-z_]+)"', source)) == STAFF_ERROR_CODES
    assert not STAFF_ERROR_CODES & ERROR_CODES
    assert issubclass(HelpdeskError, DspError)


# --------------------------------------------------------------------------- command line
def test_cli_add_agent_reads_the_password_from_stdin(monkeypatch, capsys):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert dsp_main(["add-agent", "--username", "paul", "--name", "Paul Muller", "--password-stdin"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["username"] == "paul" and out["id"] > 0 and PASSWORD not in json.dumps(out)
    assert call(helpdesk.authenticate, "paul", PASSWORD).display_name == "Paul Muller"
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert dsp_main(["add-agent", "--username", "lea", "--name", "Léa", "--password-stdin"]) == 2
    assert "password_too_short" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert dsp_main(["add-agent", "--username", "paul", "--name", "Paul", "--password-stdin"]) == 2
    assert "agent_username_taken" in capsys.readouterr().err
