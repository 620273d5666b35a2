"""Idempotent side effects (issue 9): a step that runs again has its effect once.

The same call twice, two calls at once (threads, each with its own unit of work and connection, as two
processes would), the behaviour after the repeat window, and the action layer. Effects are counted in
the database: outbox messages, one-time codes, reset tokens, access rows, documents, designations,
tickets, audit rows.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from dsp_helpers import Client, code_in, last_message, message_count
from dsp_session import log_in
from rasa_sdk import Tracker
from rasa_sdk.executor import CollectingDispatcher
from sqlalchemy import func, select

import bot.dsp as dsp
from actions.accounts import ActionResendCode, ValidateLoginForm
from actions.common import DOCUMENT_TYPE, MATRICULE_REF, UPLOAD_REF
from actions.records import ActionUploadDone
from bot.dsp import DEMO_PASSWORD, DEMO_PATIENTS, UnitOfWork, helpdesk, otp
from bot.dsp.documents import UPLOAD_TTL
from bot.dsp.errors import DspError
from bot.dsp.orm import (
    AccessGrant,
    AssistantDesignation,
    AuditEvent,
    Document,
    OneTimeCode,
    Professional,
    ResetToken,
    StagedUpload,
    Ticket,
)

HOFFMANN = DEMO_PATIENTS[2]  # activated, e-mail, terms accepted
GONCALVES = DEMO_PATIENTS[3]  # activated, SMS
EMAIL = "zoe.kieffer@example.org"
PASSWORD = "Zoe-phrase-de-passe-2026"


@pytest.fixture(autouse=True)
def demo():
    with UnitOfWork() as uow:
        dsp.seed_demo(uow)


def _err(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> DspError:
    with pytest.raises(DspError) as info:
        fn(*args, **kwargs)
    return info.value


def _count(model: Any, *where: Any) -> int:
    with UnitOfWork() as uow:
        return int(uow.session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def _outcomes(action: str) -> list[str]:
    with UnitOfWork() as uow:
        rows = uow.session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id))
        return [row.outcome for row in rows]


def concurrently(*calls: Callable[[], Any]) -> list[tuple[str, Any]]:
    """Run the calls at the same moment, one thread each; return ("ok", result) or ("error", exception)."""
    barrier = threading.Barrier(len(calls))
    results: list[tuple[str, Any]] = [("error", None)] * len(calls)

    def run(index: int, call: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            results[index] = ("ok", call())
        except Exception as error:  # noqa: BLE001 - reported to the test
            results[index] = ("error", error)

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def _refs_login(client: Client, patient=HOFFMANN, password: str = DEMO_PASSWORD) -> dict[str, str]:
    return {"matricule_ref": client.ref("matricule", patient.matricule),
            "password_ref": client.ref("password", password)}


def _begin_login(client: Client, refs: dict[str, str]) -> str:
    return client.call(dsp.begin_login, **refs, language="en")


def _usable_codes(purpose: str = "login") -> int:
    with UnitOfWork() as uow:
        rows = uow.session.scalars(select(OneTimeCode).where(OneTimeCode.purpose == purpose))
        return sum(otp.usable(row) for row in rows)


# --------------------------------------------------------------------------- one-time codes


def test_a_retried_login_step_sends_one_code(client):
    refs = _refs_login(client)
    assert _begin_login(client, refs) == _begin_login(client, refs) == "m•••@e•••.lu"
    assert message_count(HOFFMANN.email) == 1
    assert _outcomes("login.password") == ["ok", "already_sent"]
    code = code_in(last_message(HOFFMANN.email).body)
    result = client.call(dsp.complete_login, matricule_ref=refs["matricule_ref"], otp_ref=client.ref("otp", code))
    assert result.needs_terms is False


def test_the_login_step_given_again_within_the_window_sends_no_second_code(client, fake_clock):
    _begin_login(client, _refs_login(client))
    fake_clock.advance(otp.REPEAT_WINDOW_SECONDS - 1)
    _begin_login(client, _refs_login(client))  # the user typed the password again: the code just sent still works
    assert message_count(HOFFMANN.email) == 1
    fake_clock.advance(2)
    _begin_login(client, _refs_login(client))  # after the window: a new code
    assert message_count(HOFFMANN.email) == 2
    assert _usable_codes() == 1  # the new one supersedes the first


def test_a_retried_login_step_after_the_window_still_sends_nothing(client, fake_clock):
    refs = _refs_login(client)
    _begin_login(client, refs)
    fake_clock.advance(otp.REPEAT_WINDOW_SECONDS * 5)  # e.g. a failover that took long: same references
    _begin_login(client, refs)
    assert message_count(HOFFMANN.email) == 1


def test_another_conversation_or_a_used_code_gets_a_new_code(client):
    _begin_login(client, _refs_login(client))
    other = Client("conv-2")
    _begin_login(other, _refs_login(other))
    assert message_count(HOFFMANN.email) == 2
    log_in(client, HOFFMANN)  # a new step; the code it got is used
    before = message_count(HOFFMANN.email)
    _begin_login(client, _refs_login(client))
    assert message_count(HOFFMANN.email) == before + 1


def test_two_concurrent_login_steps_send_one_code(client):
    refs = _refs_login(client)
    results = concurrently(*[lambda: _begin_login(client, refs)] * 4)
    assert results == [("ok", "m•••@e•••.lu")] * 4
    assert message_count(HOFFMANN.email) == 1 and _usable_codes() == 1
    assert sorted(_outcomes("login.password")) == ["already_sent"] * 3 + ["ok"]


def _letter() -> dsp.Letter:
    with UnitOfWork() as uow:
        return dsp.issue_letter(uow)


def _refs_activation(client: Client, letter: dsp.Letter, address: str = EMAIL) -> dict[str, str]:
    return {
        "matricule_ref": client.ref("matricule", letter.matricule),
        "code_ref": client.ref("activation_code", letter.activation_code),
        "password_ref": client.ref("password", PASSWORD),
        "address_ref": client.ref("email", address),
    }


def _begin_activation(client: Client, refs: dict[str, str]) -> str:
    return client.call(dsp.begin_activation, **refs, channel="email", language="fr")


def test_a_retried_activation_step_sends_one_code_and_a_new_address_gets_its_own(client):
    letter = _letter()
    refs = _refs_activation(client, letter)
    _begin_activation(client, refs)
    _begin_activation(client, refs)
    _begin_activation(client, _refs_activation(client, letter))  # typed again, same address, within the window
    assert message_count(EMAIL) == 1
    assert _outcomes("activation.begin") == ["ok", "already_sent", "already_sent"]
    _begin_activation(client, _refs_activation(client, letter, "zoe.k@example.org"))  # a corrected address
    assert message_count("zoe.k@example.org") == 1
    code = code_in(last_message("zoe.k@example.org").body)
    client.call(dsp.complete_activation, matricule_ref=refs["matricule_ref"], otp_ref=client.ref("otp", code))


def test_two_concurrent_activation_steps_send_one_code(client):
    refs = _refs_activation(client, _letter())
    results = concurrently(*[lambda: _begin_activation(client, refs)] * 3)
    assert [kind for kind, _ in results] == ["ok"] * 3
    assert message_count(EMAIL) == 1 and _usable_codes("activation") == 1


def _resend(client: Client, matricule_ref: str, key: str | None) -> str:
    return client.call(dsp.resend_code, matricule_ref=matricule_ref, purpose="login", request_key=key)


def test_a_resend_request_run_again_sends_nothing_a_new_request_sends(client):
    refs = _refs_login(client)
    _begin_login(client, refs)
    _resend(client, refs["matricule_ref"], "turn-7")
    _resend(client, refs["matricule_ref"], "turn-7")  # the same turn sent again by the gateway
    assert message_count(HOFFMANN.email) == 2
    _resend(client, refs["matricule_ref"], "turn-8")  # the user asks again: explicit, so it sends
    _resend(client, refs["matricule_ref"], None)  # no key (CLI, tests): every call sends
    assert message_count(HOFFMANN.email) == 4
    assert _outcomes("login.resend_code") == ["ok", "already_sent", "ok", "ok"]
    assert _usable_codes() == 1


def test_a_resend_request_whose_code_is_no_longer_usable_sends_again(client, fake_clock):
    refs = _refs_login(client)
    _begin_login(client, refs)
    _resend(client, refs["matricule_ref"], "turn-7")
    fake_clock.advance(dsp.get_settings().otp_ttl_seconds + 1)  # its code expired meanwhile
    _resend(client, refs["matricule_ref"], "turn-7")
    assert message_count(HOFFMANN.email) == 3


def test_two_concurrent_resends_of_one_request_send_one_code(client):
    refs = _refs_login(client)
    _begin_login(client, refs)
    results = concurrently(*[lambda: _resend(client, refs["matricule_ref"], "turn-9")] * 3)
    assert [kind for kind, _ in results] == ["ok"] * 3
    assert message_count(HOFFMANN.email) == 2 and _usable_codes() == 1


def _complete_login(client: Client, matricule_ref: str, otp_ref: str) -> dsp.LoginResult:
    return client.call(dsp.complete_login, matricule_ref=matricule_ref, otp_ref=otp_ref)


def test_a_retried_completion_answers_its_success_again(client):
    refs = _refs_login(client)
    _begin_login(client, refs)
    otp_ref = client.ref("otp", code_in(last_message(HOFFMANN.email).body))
    first = _complete_login(client, refs["matricule_ref"], otp_ref)
    assert _complete_login(client, refs["matricule_ref"], otp_ref) == first  # same reference: the same success
    from bot.dsp.orm import LoginSession

    assert _count(LoginSession) == 1
    # the code typed again (a new reference) is a replay: refused as before
    again = client.ref("otp", code_in(last_message(HOFFMANN.email).body))
    assert _err(_complete_login, client, refs["matricule_ref"], again).code == "otp_expired"
    assert _outcomes("login.otp") == ["ok", "already_done", "otp_expired"]


def test_two_concurrent_completions_open_one_session(client):
    refs = _refs_login(client)
    _begin_login(client, refs)
    otp_ref = client.ref("otp", code_in(last_message(HOFFMANN.email).body))
    results = concurrently(*[lambda: _complete_login(client, refs["matricule_ref"], otp_ref)] * 3)
    assert [kind for kind, _ in results] == ["ok"] * 3
    from bot.dsp.orm import LoginSession

    assert _count(LoginSession) == 1


def test_a_retried_activation_completion_succeeds_once(client):
    letter = _letter()
    refs = _refs_activation(client, letter)
    _begin_activation(client, refs)
    otp_ref = client.ref("otp", code_in(last_message(EMAIL).body))
    for _ in range(2):
        client.call(dsp.complete_activation, matricule_ref=refs["matricule_ref"], otp_ref=otp_ref)
    assert _outcomes("activation.complete") == ["ok", "already_done"]


# --------------------------------------------------------------------------- password reset


def _request_reset(client: Client, email_ref: str) -> None:
    client.call(dsp.request_password_reset, matricule_ref=client.ref("matricule", HOFFMANN.matricule),
                email_ref=email_ref, language="fr")


def _token() -> str:
    return last_message(HOFFMANN.email).body.split("token=")[1].split()[0]


def test_a_retried_reset_request_sends_one_mail_and_its_link_stays_valid(client):
    email_ref = client.ref("email", HOFFMANN.email)
    _request_reset(client, email_ref)
    token = _token()
    _request_reset(client, email_ref)
    assert message_count(HOFFMANN.email) == 1
    assert _outcomes("password_reset.request") == ["ok", "already_sent"]
    token_ref, password_ref = client.ref("reset_token", token), client.ref("password", "Une-autre-phrase-2026")
    for _ in range(2):  # the completion retried with the same references: one change, no "invalid link"
        client.call(dsp.complete_password_reset, token_ref=token_ref, password_ref=password_ref)
    assert _outcomes("password_reset.complete") == ["ok", "already_done"]
    stale = client.ref("reset_token", token)  # the used link pasted again: refused as before
    error = _err(client.call, dsp.complete_password_reset, token_ref=stale, password_ref=password_ref)
    assert error.code == "reset_token_invalid"


def test_two_concurrent_reset_requests_send_one_mail(client):
    email_ref = client.ref("email", HOFFMANN.email)
    results = concurrently(*[lambda: _request_reset(client, email_ref)] * 3)
    assert [kind for kind, _ in results] == ["ok"] * 3
    assert message_count(HOFFMANN.email) == 1
    assert _count(ResetToken, ResetToken.used_at.is_(None)) == 1


# --------------------------------------------------------------------------- access of professionals


def _professional() -> int:
    """A professional nobody decided about (the demo record has grants and blocks)."""
    with UnitOfWork() as uow:
        decided = select(AccessGrant.professional_id)
        return uow.session.scalars(
            select(Professional.id).where(Professional.id.not_in(decided)).order_by(Professional.id)
        ).first()


@pytest.mark.parametrize(("service", "status"), [(dsp.grant_access, "granted"), (dsp.block_access, "blocked")])
def test_the_same_access_change_twice_is_one_change(client, service, status):
    log_in(client, HOFFMANN)
    pro = _professional()
    first, second = client.call(service, pro), client.call(service, pro)
    assert (first.changed, second.changed) == (True, False)
    assert first.professional.status == second.professional.status == status
    assert _count(AccessGrant, AccessGrant.professional_id == pro) == 1
    action = "access.grant" if status == "granted" else "access.block"
    with UnitOfWork() as uow:
        rows = uow.session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id))
        assert [row.detail for row in rows] == ['{"changed": 1}', '{"changed": 0}']


@pytest.mark.parametrize("service", [dsp.grant_access, dsp.block_access, dsp.unblock_access])
def test_concurrent_identical_access_changes_make_one_change_and_no_error(client, service):
    log_in(client, HOFFMANN)
    pro = _professional()
    if service is dsp.unblock_access:
        client.call(dsp.block_access, pro)
    results = concurrently(*[lambda: client.call(service, pro)] * 4)
    assert [kind for kind, _ in results] == ["ok"] * 4, results
    assert sorted(change.changed for _, change in results) == [False, False, False, True]
    assert _count(AccessGrant, AccessGrant.professional_id == pro) == (0 if service is dsp.unblock_access else 1)


def test_concurrent_grants_from_several_conversations_of_the_holder(client):
    chats = [Client(f"conv-{n}") for n in range(6)]  # the holder on six chats (or six gateway processes)
    for chat in chats:
        log_in(chat, HOFFMANN)
    pro = _professional()
    results = concurrently(*[lambda chat=chat: chat.call(dsp.grant_access, pro) for chat in chats])
    assert [kind for kind, _ in results] == ["ok"] * len(chats), results
    assert sorted(change.changed for _, change in results) == [False] * (len(chats) - 1) + [True]
    assert _count(AccessGrant, AccessGrant.professional_id == pro) == 1
    assert _outcomes("access.grant") == ["ok"] * len(chats)


# --------------------------------------------------------------------------- documents


def test_filing_the_same_upload_twice_gives_the_same_document(client):
    log_in(client, HOFFMANN)
    before = _count(Document)
    staged = client.call(dsp.stage_upload, b"mes allergies\n", "allergies.txt")
    first = client.call(dsp.file_document, staged.ref, "holder_expression")
    second = client.call(dsp.file_document, staged.ref, "holder_expression")
    assert first == second and _count(Document) == before + 1
    assert _outcomes("document.file") == ["ok", "already_filed"]
    client.call(dsp.discard_upload, staged.ref)  # the task's end: the filed document is not touched
    info, data = client.call(dsp.read_document, first.id)
    assert data == b"mes allergies\n"


def test_a_filed_upload_reference_expires_with_the_upload_time(client, fake_clock, monkeypatch):
    monkeypatch.setenv("DSP_SESSION_IDLE_SECONDS", str(10 * 86400))
    dsp.get_settings.cache_clear()
    log_in(client, HOFFMANN)
    staged = client.call(dsp.stage_upload, b"vaccins\n", "v.txt")
    client.call(dsp.file_document, staged.ref, "vaccination")
    fake_clock.advance(UPLOAD_TTL.total_seconds() + 1)
    assert _err(client.call, dsp.file_document, staged.ref, "vaccination").code == "upload_expired"


def test_a_filed_upload_reference_is_no_key_for_another_conversation(client):
    log_in(client, HOFFMANN)
    other = Client("conv-2")
    log_in(other, HOFFMANN)
    staged = client.call(dsp.stage_upload, b"a moi\n", "a.txt")
    client.call(dsp.file_document, staged.ref, "holder_expression")
    assert _err(other.call, dsp.file_document, staged.ref, "holder_expression").code == "upload_expired"


def test_concurrent_filings_of_one_upload_make_one_document(client):
    log_in(client, HOFFMANN)
    before = _count(Document)
    staged = client.call(dsp.stage_upload, b"double clic\n", "d.txt")
    results = concurrently(*[lambda: client.call(dsp.file_document, staged.ref, "holder_expression")] * 3)
    assert [kind for kind, _ in results] == ["ok"] * 3, results
    assert len({info.id for _, info in results}) == 1
    assert _count(Document) == before + 1


def test_the_same_bytes_uploaded_again_give_the_same_staged_upload(client):
    log_in(client, HOFFMANN)
    first = client.call(dsp.stage_upload, b"renvoi\n", "r.txt")
    second = client.call(dsp.stage_upload, b"renvoi\n", "r (1).txt")  # the client retried the upload
    assert second == first and _count(StagedUpload) == 1
    assert _outcomes("document.upload") == ["ok", "already_staged"]
    client.call(dsp.file_document, first.ref, "holder_expression")
    # once filed, the same content is "already in the record", as before
    assert _err(client.call, dsp.stage_upload, b"renvoi\n", "r.txt").code == "file_duplicate"


def test_concurrent_uploads_of_the_same_bytes_stage_one_file(client, dsp_env):
    log_in(client, HOFFMANN)
    results = concurrently(*[lambda: client.call(dsp.stage_upload, b"en double\n", "x.txt")] * 3)
    assert [kind for kind, _ in results] == ["ok"] * 3, results
    assert len({staged.ref for _, staged in results}) == 1
    assert _count(StagedUpload) == 1
    with UnitOfWork() as uow:
        documents = set(uow.session.scalars(select(Document.storage_name)))
    on_disk = {p.name for p in (dsp_env / "documents").iterdir() if not p.name.startswith(".")}
    assert len(on_disk - documents) == 1  # one staged file, no orphan


# --------------------------------------------------------------------------- designations, switch, tickets


def test_concurrent_designations_make_one(client):
    def designate() -> bool:
        with UnitOfWork() as uow:
            return dsp.designate_assistant(uow, holder_matricule=HOFFMANN.matricule,
                                           assistant_matricule=GONCALVES.matricule)

    results = concurrently(designate, designate, designate)
    assert sorted(created for _, created in results) == [False, False, True]
    assert _count(AssistantDesignation, AssistantDesignation.revoked_at.is_(None),
                  AssistantDesignation.assistant_patient_id != AssistantDesignation.holder_patient_id) == 2  # + demo


def test_switching_to_the_same_person_twice_changes_nothing(client):
    kayser = DEMO_PATIENTS[5]  # designated assistant of Marie Hoffmann (demo)
    log_in(client, kayser)
    with UnitOfWork() as uow:
        holder = dsp.list_assisted(uow, client.cid)[0].patient_id
    assert client.call(dsp.act_for, holder) == client.call(dsp.act_for, holder)
    assert _outcomes("assistant.switch") == ["ok", "unchanged"]


def test_concurrent_ticket_openings_open_one_ticket():
    def open_ticket() -> str:
        with UnitOfWork() as uow:
            return helpdesk.open_ticket(uow, "tg-42", language="fr", category="login", priority="normal",
                                        reason="asked", transcript=[], tried=[]).reference

    results = concurrently(open_ticket, open_ticket, open_ticket)
    assert [kind for kind, _ in results] == ["ok"] * 3, results
    assert len({reference for _, reference in results}) == 1 and _count(Ticket) == 1


# --------------------------------------------------------------------------- through the actions


def _tracker(cid: str, *, slots: dict[str, Any] | None = None, loop: str | None = None,
             turn_id: str | None = None) -> Tracker:
    return Tracker.from_dict({
        "sender_id": cid,
        "slots": {"language": "en", **(slots or {})},
        "latest_message": {"intent": {"name": "resend_code", "confidence": 1.0}, "entities": [], "text": "…",
                           "metadata": {"turn_id": turn_id} if turn_id else {}},
        "events": [],
        "active_loop": {"name": loop} if loop else {},
        "paused": False,
        "latest_input_channel": "rest",
    })


async def test_actions_run_twice_send_one_code_and_file_one_document(client):
    refs = _refs_login(client)
    tracker = _tracker(client.cid, slots={MATRICULE_REF: refs["matricule_ref"]}, loop="login_form")
    said = []
    for _ in range(2):  # the validation of the password run again (same slots, same references)
        dispatcher = CollectingDispatcher()
        slots = await ValidateLoginForm().validate_password_ref(refs["password_ref"], dispatcher, tracker, {})
        assert slots == {"password_ref": refs["password_ref"]}
        said.append([m["response"] for m in dispatcher.messages])
    assert said == [["utter_code_sent"], ["utter_code_sent"]]
    assert message_count(HOFFMANN.email) == 1

    asking = _tracker(client.cid, slots={MATRICULE_REF: refs["matricule_ref"], "requested_slot": "otp_ref"},
                      loop="login_form", turn_id="b7e1")
    for _ in range(2):  # "send me a new code", the same turn run twice
        dispatcher = CollectingDispatcher()
        assert await ActionResendCode().run(dispatcher, asking, {}) == []
        assert [m["response"] for m in dispatcher.messages] == ["utter_new_code_sent"]
    assert message_count(HOFFMANN.email) == 2

    log_in(client, HOFFMANN)
    staged = client.call(dsp.stage_upload, b"note du jour\n", "note.txt")
    before = _count(Document)
    done = _tracker(client.cid, slots={UPLOAD_REF: staged.ref, DOCUMENT_TYPE: "holder_expression"})
    for _ in range(2):  # action_upload_done run again after its first run committed
        dispatcher = CollectingDispatcher()
        await ActionUploadDone().run(dispatcher, done, {})
        assert [m["response"] for m in dispatcher.messages] == ["utter_document_added"]
    assert _count(Document) == before + 1
