import pytest
from dsp_helpers import Client, code_in, last_message, message_count
from sqlalchemy import select

import bot.dsp as dsp
from bot.dsp import DspError, UnitOfWork
from bot.dsp.orm import Account, OneTimeCode, Patient

EMAIL = "maria.dasilva@example.org"
PASSWORD = "Ma-phrase-de-passe-2026"


def _letter(**kwargs) -> dsp.Letter:
    with UnitOfWork() as uow:
        return dsp.issue_letter(uow, **kwargs)


def _err(fn, *args, **kwargs) -> DspError:
    with pytest.raises(DspError) as info:
        fn(*args, **kwargs)
    return info.value


def _begin(client: Client, letter: dsp.Letter, *, code=None, address=EMAIL, channel="email") -> str:
    return client.call(
        dsp.begin_activation,
        matricule_ref=client.ref("matricule", letter.matricule),
        code_ref=client.ref("activation_code", code or letter.activation_code),
        password_ref=client.ref("password", PASSWORD),
        channel=channel,
        address_ref=client.ref(channel if channel == "email" else "phone", address),
        language="fr",
    )


def _complete(client: Client, letter: dsp.Letter, code: str) -> None:
    client.call(
        dsp.complete_activation,
        matricule_ref=client.ref("matricule", letter.matricule),
        otp_ref=client.ref("otp", code),
    )


def test_letter_code_shape_and_hash():
    letter = _letter()
    assert dsp.normalize_matricule(letter.matricule) == letter.matricule
    assert len(letter.activation_code) == 8 and letter.activation_code.isalnum()
    assert letter.activation_code not in repr(letter)
    with UnitOfWork() as uow:
        account = uow.session.scalars(select(Account)).one()
        assert account.state == "issued"
        assert letter.activation_code not in account.activation_code_hash


def test_activation_happy_path(client):
    letter = _letter()
    # step by step checks, as the action layer does them
    m_ref = client.ref("matricule", letter.matricule)
    client.call(dsp.check_matricule, m_ref)
    client.call(
        dsp.verify_activation_code, m_ref, client.ref("activation_code", letter.activation_code.lower())
    )
    p_ref = client.ref("password", PASSWORD)
    client.call(dsp.check_new_password, p_ref, m_ref)
    client.call(dsp.confirm_password, p_ref, client.ref("password_confirm", PASSWORD))
    assert client.call(dsp.check_contact, "email", client.ref("email", EMAIL)) == "m•••@e•••.org"

    masked = _begin(client, letter)
    assert masked == "m•••@e•••.org"
    message = last_message(EMAIL)
    assert message.channel == "email"
    assert not any(ch.isdigit() for ch in message.subject)
    _complete(client, letter, code_in(message.body))

    with UnitOfWork() as uow:
        account = uow.session.scalars(select(Account)).one()
        assert account.state == "activated" and account.contact_channel == "email"
        assert account.password_hash.startswith("$argon2id$") and PASSWORD not in account.password_hash
        assert uow.session.scalars(select(Patient)).one().email == EMAIL
        codes = list(uow.session.scalars(select(OneTimeCode)))
        assert all(len(c.code_hash) == 64 for c in codes)
        assert code_in(message.body) not in {c.code_hash for c in codes}

    # the letter cannot be used twice
    error = _err(
        client.call, dsp.verify_activation_code, m_ref, client.ref("activation_code", letter.activation_code)
    )
    assert error.code == "account_already_active"


def test_activation_by_sms(client):
    letter = _letter()
    masked = _begin(client, letter, channel="sms", address="621 123 456")
    assert masked == "+352 ••• ••• 456"
    message = last_message("+352621123456")
    assert message.channel == "sms"
    _complete(client, letter, code_in(message.body))


def test_contact_validation(client):
    assert _err(client.call, dsp.check_contact, "email", client.ref("email", "not-an-address")).code == (
        "contact_invalid_email"
    )
    # Luxembourg fixed line: not a mobile
    assert _err(client.call, dsp.check_contact, "sms", client.ref("phone", "+352 27 12 50 18")).code == (
        "contact_invalid_phone"
    )
    assert (
        _err(client.call, dsp.check_contact, "sms", client.ref("phone", "abc")).code
        == "contact_invalid_phone"
    )


def test_password_mismatch(client):
    error = _err(
        client.call, dsp.confirm_password, client.ref("password", PASSWORD),
        client.ref("password_confirm", PASSWORD + "x"),
    )
    assert error.code == "password_mismatch"


def test_wrong_activation_code_then_lock(client):
    letter = _letter()
    m_ref = client.ref("matricule", letter.matricule)
    bad = client.ref("activation_code", "ZZZZZZZZ")
    for tries_left in (4, 3, 2, 1):
        error = _err(client.call, dsp.verify_activation_code, m_ref, bad)
        assert error.code == "activation_code_wrong" and error.params == {"tries_left": tries_left}
    assert _err(client.call, dsp.verify_activation_code, m_ref, bad).code == "activation_locked"
    good = client.ref("activation_code", letter.activation_code)
    assert _err(client.call, dsp.verify_activation_code, m_ref, good).code == "activation_locked"


def test_unknown_matricule_answers_like_wrong_code(client):
    unknown = dsp.generate_matricule(__import__("datetime").date(1970, 1, 1), 999)
    m_ref = client.ref("matricule", unknown)
    bad = client.ref("activation_code", "ZZZZZZZZ")
    answers = [
        (e.code, e.params)
        for e in (_err(client.call, dsp.verify_activation_code, m_ref, bad) for _ in range(6))
    ]
    assert answers == [
        ("activation_code_wrong", {"tries_left": 4}),
        ("activation_code_wrong", {"tries_left": 3}),
        ("activation_code_wrong", {"tries_left": 2}),
        ("activation_code_wrong", {"tries_left": 1}),
        ("activation_locked", {}),
        ("activation_locked", {}),
    ]


def test_replayed_otp_refused(client):
    letter = _letter()
    _begin(client, letter)
    code = code_in(last_message(EMAIL).body)
    _complete(client, letter, code)
    assert _err(_complete, client, letter, code).code == "otp_expired"


def test_five_wrong_otp_exhaust_the_code(client):
    letter = _letter()
    _begin(client, letter)
    good = code_in(last_message(EMAIL).body)
    wrong = "000000" if good != "000000" else "111111"
    for tries_left in (4, 3, 2, 1):
        error = _err(_complete, client, letter, wrong)
        assert error.code == "otp_wrong" and error.params == {"tries_left": tries_left}
    assert _err(_complete, client, letter, wrong).code == "otp_exhausted"
    assert _err(_complete, client, letter, good).code == "otp_exhausted"
    # a new code is needed, and it works
    m_ref = client.ref("matricule", letter.matricule)
    assert (
        client.call(dsp.resend_code, matricule_ref=m_ref, purpose="activation", language="de")
        == "m•••@e•••.org"
    )
    message = last_message(EMAIL)
    assert "Bestätigungscode" in message.body
    _complete(client, letter, code_in(message.body))


def test_expired_otp(client, fake_clock):
    letter = _letter()
    _begin(client, letter)
    code = code_in(last_message(EMAIL).body)
    fake_clock.advance(dsp.get_settings().otp_ttl_seconds + 1)
    assert _err(_complete, client, letter, code).code == "otp_expired"


def test_otp_ttl_setting_capped(monkeypatch):
    monkeypatch.setenv("DSP_OTP_TTL_SECONDS", "86400")
    monkeypatch.setenv("DSP_RESET_TTL_SECONDS", "86400")
    dsp.get_settings.cache_clear()
    assert dsp.get_settings().otp_ttl_seconds == 600
    assert dsp.get_settings().reset_ttl_seconds == 3600


def test_new_code_invalidates_older(client):
    letter = _letter()
    _begin(client, letter)
    first = code_in(last_message(EMAIL).body)
    client.call(
        dsp.resend_code, matricule_ref=client.ref("matricule", letter.matricule), purpose="activation"
    )
    assert message_count(EMAIL) == 2
    second = code_in(last_message(EMAIL).body)
    if first != second:
        assert _err(_complete, client, letter, first).code in ("otp_wrong", "otp_expired")
    _complete(client, letter, second)


def test_otp_bound_to_conversation(client):
    letter = _letter()
    _begin(client, letter)
    code = code_in(last_message(EMAIL).body)
    assert _err(_complete, Client("intruder"), letter, code).code == "otp_expired"
    _complete(client, letter, code)


def test_begin_refuses_weak_password(client):
    letter = _letter()
    error = _err(
        client.call,
        dsp.begin_activation,
        matricule_ref=client.ref("matricule", letter.matricule),
        code_ref=client.ref("activation_code", letter.activation_code),
        password_ref=client.ref("password", "motdepasse"),
        channel="email",
        address_ref=client.ref("email", EMAIL),
        language="fr",
    )
    assert error.code == "password_common"
    assert message_count(EMAIL) == 0
