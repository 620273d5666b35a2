from datetime import date

import pytest
from dsp_helpers import Client, code_in, last_message, message_count
from sqlalchemy import select

import bot.dsp as dsp
from bot.dsp import DEMO_PASSWORD, DEMO_PATIENTS, DspError, UnitOfWork
from bot.dsp.orm import Account, LoginSession, Patient

HOFFMANN = DEMO_PATIENTS[2]  # activated, e-mail, terms accepted
GONCALVES = DEMO_PATIENTS[3]  # activated, sms, terms not accepted
LOCKED = DEMO_PATIENTS[4]


@pytest.fixture(autouse=True)
def demo():
    with UnitOfWork() as uow:
        dsp.seed_demo(uow)


def _account(uow, demo_patient) -> Account:
    return uow.session.scalars(
        select(Account).join(Patient).where(Patient.matricule == demo_patient.matricule)
    ).one()


def _err(fn, *args, **kwargs) -> DspError:
    with pytest.raises(DspError) as info:
        fn(*args, **kwargs)
    return info.value


def _begin(client: Client, matricule: str, password: str = DEMO_PASSWORD) -> str:
    return client.call(
        dsp.begin_login,
        matricule_ref=client.ref("matricule", matricule),
        password_ref=client.ref("password", password),
        language="en",
    )


def _complete(client: Client, matricule: str, code: str) -> dsp.LoginResult:
    return client.call(
        dsp.complete_login, matricule_ref=client.ref("matricule", matricule), otp_ref=client.ref("otp", code)
    )


def _login(client: Client, patient=HOFFMANN) -> dsp.LoginResult:
    _begin(client, patient.matricule)
    address = patient.email if patient.channel == "email" else patient.phone
    return _complete(client, patient.matricule, code_in(last_message(address).body))


def test_seed_is_idempotent():
    with UnitOfWork() as uow:
        dsp.seed_demo(uow)
    with UnitOfWork() as uow:
        assert len(list(uow.session.scalars(select(Account)))) == len(DEMO_PATIENTS)
        from bot.dsp.orm import Professional

        pros = list(uow.session.scalars(select(Professional)))
        assert len(pros) >= 40
        assert any(p.family_name == "Lefèvre" and "lefevre" in p.search_key for p in pros)


def test_login_happy_path_email(client):
    assert _begin(client, HOFFMANN.matricule) == "m•••@e•••.lu"
    message = last_message(HOFFMANN.email)
    assert "confirmation code" in message.body
    result = _complete(client, HOFFMANN.matricule, code_in(message.body))
    assert result == dsp.LoginResult(needs_terms=False, has_pin=False)
    with UnitOfWork() as uow:
        info = dsp.current_session(uow, client.cid)
    assert info is not None and info.needs_terms is False
    with UnitOfWork() as uow:
        assert dsp.current_session(uow, "other-conversation") is None


def test_login_sms_needs_terms(client):
    result = _login(client, GONCALVES)
    assert result.needs_terms
    with UnitOfWork() as uow:
        assert dsp.current_session(uow, client.cid).needs_terms
        dsp.accept_terms(uow, client.cid)
    with UnitOfWork() as uow:
        assert not dsp.current_session(uow, client.cid).needs_terms
    assert not _login(Client("conv-2"), GONCALVES).needs_terms


def test_unknown_matricule_same_error_as_wrong_password(client):
    unknown = dsp.generate_matricule(date(1970, 1, 1), 998)
    first = _err(_begin, client, unknown)
    second = _err(_begin, client, HOFFMANN.matricule, "Wrong-Password-123")
    assert (first.code, first.params) == (second.code, second.params) == ("credentials_wrong", {})


def test_not_active_and_locked(client):
    assert _err(_begin, client, DEMO_PATIENTS[0].matricule).code == "account_not_active"
    assert _err(_begin, client, LOCKED.matricule).code == "account_locked"


def test_delays_then_permanent_lock(client, fake_clock):
    m = HOFFMANN.matricule
    assert _err(_begin, client, m, "wrong-one-1").code == "credentials_wrong"
    assert _err(_begin, client, m, "wrong-one-2").code == "credentials_wrong"
    delays = []
    for failure in range(3, 10):
        error = _err(_begin, client, m, f"wrong-one-{failure}")
        assert error.code == "login_delay"
        delays.append(error.params["retry_after_seconds"])
        # during the delay even the right password is refused and not counted
        again = _err(_begin, client, m)
        assert again.code == "login_delay" and 0 < again.params["retry_after_seconds"] <= delays[-1]
        fake_clock.advance(delays[-1])
    assert delays == [30, 60, 120, 240, 480, 960, 1920]
    assert _err(_begin, client, m, "wrong-one-10").code == "account_locked"
    fake_clock.advance(10**6)
    assert _err(_begin, client, m).code == "account_locked"


def test_success_resets_failure_counter(client):
    for i in range(2):
        _err(_begin, client, HOFFMANN.matricule, f"wrong-{i}-xyz")
    _login(client)
    with UnitOfWork() as uow:
        assert _account(uow, HOFFMANN).failed_logins == 0


def test_wrong_otp_counts_as_login_failure(client):
    _begin(client, HOFFMANN.matricule)
    good = code_in(last_message(HOFFMANN.email).body)
    wrong = "000000" if good != "000000" else "111111"
    assert _err(_complete, client, HOFFMANN.matricule, wrong).code == "otp_wrong"
    assert _err(_complete, client, HOFFMANN.matricule, wrong).code == "otp_wrong"
    with UnitOfWork() as uow:
        assert _account(uow, HOFFMANN).failed_logins == 2


def test_complete_without_begin(client):
    assert _err(_complete, client, HOFFMANN.matricule, "123456").code == "otp_expired"


def test_session_idle_expiry_and_refresh(client, fake_clock):
    _login(client)
    idle = dsp.get_settings().session_idle_seconds
    fake_clock.advance(idle - 10)
    with UnitOfWork() as uow:
        assert dsp.current_session(uow, client.cid) is not None  # refreshes last_seen
    fake_clock.advance(idle - 10)
    with UnitOfWork() as uow:
        assert dsp.current_session(uow, client.cid) is not None
    fake_clock.advance(idle + 1)
    with UnitOfWork() as uow:
        assert dsp.current_session(uow, client.cid) is None
    with UnitOfWork() as uow:
        assert uow.session.scalars(select(LoginSession)).one().ended_at is not None


def test_log_out(client):
    _login(client)
    with UnitOfWork() as uow:
        assert dsp.log_out(uow, client.cid) is True
    with UnitOfWork() as uow:
        assert dsp.log_out(uow, client.cid) is False
        assert dsp.current_session(uow, client.cid) is None
    with UnitOfWork() as uow:
        assert _err(dsp.accept_terms, uow, client.cid).code == "not_logged_in"


def _set_pin(client: Client, pin: str, confirm: str | None = None) -> None:
    client.call(
        dsp.set_pin, pin_ref=client.ref("pin", pin), confirm_ref=client.ref("pin_confirm", confirm or pin)
    )


def _pin_login(client: Client, pin: str) -> dsp.LoginResult:
    return client.call(
        dsp.log_in_with_pin,
        matricule_ref=client.ref("matricule", HOFFMANN.matricule),
        pin_ref=client.ref("pin", pin),
    )


def test_pin_rules(client):
    assert _err(_set_pin, client, "4821").code == "not_logged_in"
    _login(client)
    cases = [("12", "pin_format"), ("1234567", "pin_format"), ("12a4", "pin_format"), ("0000", "pin_weak")]
    cases += [("1234", "pin_weak"), ("98765", "pin_weak"), ("777777", "pin_weak")]
    for pin, code in cases:
        assert _err(_set_pin, client, pin).code == code, pin
    assert _err(_set_pin, client, "4821", "4822").code == "pin_mismatch"


def test_pin_login_bound_to_conversation(client):
    _login(client)
    _set_pin(client, "4821")
    with UnitOfWork() as uow:
        dsp.log_out(uow, client.cid)
    assert _pin_login(client, "4821") == dsp.LoginResult(needs_terms=False, has_pin=True)
    other = Client("other-device")
    error = _err(
        other.call,
        dsp.log_in_with_pin,
        matricule_ref=other.ref("matricule", HOFFMANN.matricule),
        pin_ref=other.ref("pin", "4821"),
    )
    assert error.code == "pin_not_set"
    with UnitOfWork() as uow:
        assert (
            "4821"
            not in uow.session.scalars(select(Account).where(Account.pin_hash.is_not(None))).one().pin_hash
        )


def test_pin_locked_after_five_wrong(client):
    _login(client)
    _set_pin(client, "4821")
    for tries_left in (4, 3, 2, 1):
        error = _err(_pin_login, client, "9090")
        assert error.code == "pin_wrong" and error.params == {"tries_left": tries_left}
    assert _err(_pin_login, client, "9090").code == "pin_locked"
    assert _err(_pin_login, client, "4821").code == "pin_not_set"


def test_resend_login_code(client):
    m_ref = client.ref("matricule", HOFFMANN.matricule)
    assert _err(client.call, dsp.resend_code, matricule_ref=m_ref, purpose="login").code == "otp_expired"
    _begin(client, HOFFMANN.matricule)
    first = code_in(last_message(HOFFMANN.email).body)
    client.call(dsp.resend_code, matricule_ref=m_ref, purpose="login", language="fr")
    second = code_in(last_message(HOFFMANN.email).body)
    if first != second:
        assert _err(_complete, client, HOFFMANN.matricule, first).code in ("otp_wrong", "otp_expired")
    assert _complete(client, HOFFMANN.matricule, second).needs_terms is False


def test_codes_sent_to_one_account_are_capped_per_hour(client, fake_clock):
    from bot.dsp.otp import MAX_CODES_PER_HOUR

    m_ref = client.ref("matricule", HOFFMANN.matricule)
    _begin(client, HOFFMANN.matricule)
    for _ in range(MAX_CODES_PER_HOUR - 1):
        client.call(dsp.resend_code, matricule_ref=m_ref, purpose="login")
    sent = message_count(HOFFMANN.email)
    assert _err(client.call, dsp.resend_code, matricule_ref=m_ref, purpose="login").code == "otp_send_limit"
    assert message_count(HOFFMANN.email) == sent
    fake_clock.advance(seconds=3601)
    _begin(client, HOFFMANN.matricule)
    assert message_count(HOFFMANN.email) == sent + 1


def test_an_unknown_matricule_goes_through_the_same_delays_as_a_known_one(client, fake_clock):
    unknown = dsp.generate_matricule(date(1970, 1, 1), 997)
    seen = {"unknown": [], "known": []}
    for _ in range(4):
        for name, matricule in (("unknown", unknown), ("known", HOFFMANN.matricule)):
            error = _err(_begin, client, matricule, "Wrong-Password-123")
            seen[name].append((error.code, error.params))
        fake_clock.advance(seconds=4000)  # past every delay
    assert seen["unknown"] == seen["known"]
    assert [code for code, _ in seen["known"]] == ["credentials_wrong", "credentials_wrong", "login_delay",
                                                   "login_delay"]


def test_an_answer_to_another_question_is_never_used_in_its_place(client):
    # A one-time code's reference offered as the password: refused as if expired.
    error = _err(client.call, dsp.begin_login, matricule_ref=client.ref("matricule", HOFFMANN.matricule),
                 password_ref=client.ref("otp", DEMO_PASSWORD), language="en")
    assert error.code == "input_expired"
