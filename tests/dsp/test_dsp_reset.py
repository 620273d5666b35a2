import re
from datetime import date

import pytest
from dsp_helpers import Client, code_in, last_message, message_count
from sqlalchemy import select

import bot.dsp as dsp
from bot.dsp import DEMO_PASSWORD, DEMO_PATIENTS, DspError, UnitOfWork
from bot.dsp.orm import Account, AuditEvent, Patient, ResetToken

HOFFMANN = DEMO_PATIENTS[2]  # activated with e-mail
GONCALVES = DEMO_PATIENTS[3]  # activated, no e-mail
NEW_PASSWORD = "Une-nouvelle-phrase-2026"


@pytest.fixture(autouse=True)
def demo():
    with UnitOfWork() as uow:
        dsp.seed_demo(uow)


def _err(fn, *args, **kwargs) -> DspError:
    with pytest.raises(DspError) as info:
        fn(*args, **kwargs)
    return info.value


def _request(client: Client, matricule: str, email: str) -> None:
    assert (
        client.call(
            dsp.request_password_reset,
            matricule_ref=client.ref("matricule", matricule),
            email_ref=client.ref("email", email),
            language="fr",
        )
        is None
    )


def _reset(client: Client, token_value: str, password: str = NEW_PASSWORD) -> None:
    client.call(
        dsp.complete_password_reset,
        token_ref=client.ref("reset_token", token_value),
        password_ref=client.ref("password", password),
    )


def _token_and_link(body: str) -> tuple[str, str]:
    link = re.search(r"http\S+/reset-password\?token=(\S+)", body)
    assert link
    return link.group(1), link.group(0)


def _outcomes() -> list[str]:
    with UnitOfWork() as uow:
        rows = uow.session.scalars(select(AuditEvent).where(AuditEvent.action == "password_reset.request"))
        return [row.outcome for row in rows]


def _begin_login(client: Client, password: str) -> str:
    return client.call(
        dsp.begin_login,
        matricule_ref=client.ref("matricule", HOFFMANN.matricule),
        password_ref=client.ref("password", password),
    )


def test_reset_known_account(client):
    _request(client, HOFFMANN.matricule, HOFFMANN.email.upper())
    message = last_message(HOFFMANN.email)
    assert message.body.startswith("Bonjour")
    token, link = _token_and_link(message.body)
    assert link.startswith("http://127.0.0.1:8000/reset-password?token=")
    assert token in message.body.replace(link, "")  # also given alone for pasting
    with UnitOfWork() as uow:
        assert token not in uow.session.scalars(select(ResetToken)).one().token_hash
    _reset(client, link)  # the whole link is accepted
    assert _err(_begin_login, client, DEMO_PASSWORD).code == "credentials_wrong"
    assert _begin_login(client, NEW_PASSWORD) == "m•••@e•••.lu"
    assert _outcomes() == ["ok"]


def test_unknown_mismatch_and_no_email_send_nothing(client):
    unknown = dsp.generate_matricule(date(1970, 1, 1), 997)
    _request(client, unknown, "someone@example.org")
    _request(client, HOFFMANN.matricule, "someone@example.org")
    _request(client, GONCALVES.matricule, "paulo@example.org")
    assert message_count("someone@example.org") == 0
    assert message_count("paulo@example.org") == 0
    assert message_count(HOFFMANN.email) == 0
    assert _outcomes() == ["unknown_matricule", "email_mismatch", "no_email"]


def test_token_single_use(client):
    _request(client, HOFFMANN.matricule, HOFFMANN.email)
    token, _ = _token_and_link(last_message(HOFFMANN.email).body)
    _reset(client, token)
    assert _err(_reset, client, token, "Encore-une-autre-2026").code == "reset_token_invalid"


def test_token_expiry(client, fake_clock):
    _request(client, HOFFMANN.matricule, HOFFMANN.email)
    token, _ = _token_and_link(last_message(HOFFMANN.email).body)
    fake_clock.advance(3601)
    assert _err(_reset, client, token).code == "reset_token_invalid"


def test_unknown_token_and_new_request_invalidates_older(client):
    assert _err(_reset, client, "not-a-token").code == "reset_token_invalid"
    _request(client, HOFFMANN.matricule, HOFFMANN.email)
    first, _ = _token_and_link(last_message(HOFFMANN.email).body)
    _request(client, HOFFMANN.matricule, HOFFMANN.email)
    second, _ = _token_and_link(last_message(HOFFMANN.email).body)
    assert _err(_reset, client, first).code == "reset_token_invalid"
    _reset(client, second)


def test_policy_applies_and_token_survives(client):
    _request(client, HOFFMANN.matricule, HOFFMANN.email)
    token, _ = _token_and_link(last_message(HOFFMANN.email).body)
    assert _err(_reset, client, token, "motdepasse").code == "password_common"
    _reset(client, token)


def test_reset_clears_delays_and_ends_sessions(client, fake_clock):
    _begin_login(client, DEMO_PASSWORD)
    client.call(
        dsp.complete_login,
        matricule_ref=client.ref("matricule", HOFFMANN.matricule),
        otp_ref=client.ref("otp", code_in(last_message(HOFFMANN.email).body)),
    )
    other = Client("conv-other")
    for i in range(3):
        _err(_begin_login, other, f"bad-password-{i}")
    assert _err(_begin_login, other, NEW_PASSWORD).code == "login_delay"
    _request(other, HOFFMANN.matricule, HOFFMANN.email)
    token, _ = _token_and_link(last_message(HOFFMANN.email).body)
    _reset(other, token)
    with UnitOfWork() as uow:
        assert dsp.current_session(uow, client.cid) is None
        account = uow.session.scalars(
            select(Account).join(Patient).where(Patient.matricule == HOFFMANN.matricule)
        ).one()
        assert account.failed_logins == 0 and account.locked_until is None
    _begin_login(other, NEW_PASSWORD)


def test_permanently_locked_gets_no_link(client):
    locked = DEMO_PATIENTS[4]
    _request(client, locked.matricule, locked.email)
    assert message_count(locked.email) == 0
    assert _outcomes() == ["account_locked"]


def test_token_single_use_under_parallel_requests(client):
    """Five parallel resets with one token: exactly one sets the password."""
    from concurrent.futures import ThreadPoolExecutor

    _request(client, HOFFMANN.matricule, HOFFMANN.email)
    token, _ = _token_and_link(last_message(HOFFMANN.email).body)
    refs = [(client.ref("reset_token", token), client.ref("password", f"Parallele-Phrase-{i}-2026")) for i in range(5)]

    def attempt(pair: tuple[str, str]) -> bool:
        try:
            client.call(dsp.complete_password_reset, token_ref=pair[0], password_ref=pair[1])
            return True
        except Exception:  # noqa: BLE001 - a refusal or a database "busy" both count as not done
            return False

    with ThreadPoolExecutor(max_workers=5) as pool:
        done = list(pool.map(attempt, refs))
    assert done.count(True) == 1
