import pytest
from sqlalchemy import select

from bot.dsp import DspError, UnitOfWork, discard, get_settings, put, reset_engine, reveal
from bot.dsp.orm import VaultEntry


def test_round_trip_and_encryption():
    with UnitOfWork() as uow:
        ref = put(uow, "c1", "password", "Secret-Très-Long")
    assert ref.startswith("pi_") and len(ref) == 35
    with UnitOfWork() as uow:
        assert reveal(uow, "c1", ref) == ("password", "Secret-Très-Long")
        row = uow.session.scalars(select(VaultEntry)).one()
        assert b"Secret" not in row.ciphertext


def test_other_conversation_refused():
    with UnitOfWork() as uow:
        ref = put(uow, "c1", "otp", "123456")
    with UnitOfWork() as uow, pytest.raises(DspError) as info:
        reveal(uow, "c2", ref)
    assert info.value.code == "input_expired"


def test_unknown_ref():
    with UnitOfWork() as uow, pytest.raises(DspError) as info:
        reveal(uow, "c1", "pi_nope")
    assert info.value.code == "input_expired"


def test_expiry(fake_clock):
    with UnitOfWork() as uow:
        ref = put(uow, "c1", "otp", "123456")
    fake_clock.advance(get_settings().vault_ttl_seconds + 1)
    with UnitOfWork() as uow, pytest.raises(DspError) as info:
        reveal(uow, "c1", ref)
    assert info.value.code == "input_expired"
    with UnitOfWork() as uow:  # opportunistic purge on the next put
        put(uow, "c1", "otp", "654321")
        assert len(list(uow.session.scalars(select(VaultEntry)))) == 1


def test_discard():
    with UnitOfWork() as uow:
        ref = put(uow, "c1", "otp", "123456")
        other = put(uow, "c2", "otp", "123456")
        discard(uow, "c1")
    with UnitOfWork() as uow:
        with pytest.raises(DspError):
            reveal(uow, "c1", ref)
        assert reveal(uow, "c2", other)[1] == "123456"


def test_secret_key_file_is_private(dsp_env):
    get_settings()
    key = dsp_env / "secret.key"
    assert key.exists() and (key.stat().st_mode & 0o777) == 0o600


def test_key_from_env_changes_cipher(monkeypatch):
    with UnitOfWork() as uow:
        ref = put(uow, "c1", "otp", "123456")
    monkeypatch.setenv("DSP_SECRET_KEY", "another key")
    get_settings.cache_clear()
    reset_engine()
    with UnitOfWork() as uow, pytest.raises(DspError):
        reveal(uow, "c1", ref)
