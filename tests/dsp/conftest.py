"""Fixtures of the DSP domain-layer tests: a fresh SQLite database per test, a fake clock."""

from __future__ import annotations

import pytest
from dsp_helpers import Client, FakeClock

from bot.dsp import clock
from bot.dsp.db import reset_engine
from bot.dsp.settings import get_settings

_ENV = (
    "DSP_SECRET_KEY",
    "DSP_VAULT_TTL_SECONDS",
    "DSP_OTP_TTL_SECONDS",
    "DSP_RESET_TTL_SECONDS",
    "DSP_SESSION_IDLE_SECONDS",
    "DSP_PUBLIC_URL",
    "SMTP_HOST",
    "DSP_UPLOAD_MAX_MB",
    "DSP_DOCUMENT_QUOTA_MB",
    "DSP_DICOM_MAX_MB",
)


@pytest.fixture(autouse=True)
def dsp_env(tmp_path, monkeypatch):
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DSP_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("DSP_DATABASE_URL", f"sqlite:///{tmp_path / 'dsp.sqlite3'}")
    get_settings.cache_clear()
    reset_engine()
    yield tmp_path
    reset_engine()
    get_settings.cache_clear()


@pytest.fixture
def fake_clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(clock, "now", fake)
    return fake


@pytest.fixture
def client() -> Client:
    return Client()
