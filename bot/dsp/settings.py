"""Configuration of the DSP domain layer, read from the environment in one place.

Every variable has a safe default so that the embedded setup needs none. The secret key is
generated once into ``<state>/secret.key`` (mode 0600) when ``DSP_SECRET_KEY`` is unset.
"""

from __future__ import annotations

import functools
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

#: Helpdesk of the Agence eSanté (MyDSP quick guide, "Mot de passe oublié" / "Des questions?").
HELPDESK_PHONE = "+352 27 12 50 18 33"

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Settings:
    """Immutable settings of the domain layer.

    Attributes:
        state_dir: Directory for the SQLite file and the generated secret key.
        database_url: SQLAlchemy URL (SQLite file by default, PostgreSQL in production).
        secret_key: Secret used to derive the Fernet vault key and the HMAC pepper.
        vault_ttl_seconds: Lifetime of a protected input in the vault, in seconds.
        otp_ttl_seconds: Validity of a one-time code, in seconds (capped at 600).
        reset_ttl_seconds: Validity of a password-reset token, in seconds (capped at 3600).
        session_idle_seconds: Idle time after which a login session expires, in seconds.
        public_url: Base URL used in the password-reset link.
        smtp_host: SMTP server; e-mail goes to the outbox table when empty.
        smtp_port: SMTP port.
        smtp_user: SMTP user name (optional).
        smtp_password: SMTP password (optional).
        smtp_from: Sender address.
        smtp_starttls: Whether to use STARTTLS.
        upload_max_mb: Largest accepted upload, in MiB (Telegram bots download at most 20 MB).
        document_quota_mb: Space for the documents of one record, in MiB.
        dicom_max_mb: Largest DICOM file the imaging store reads, in MiB (larger files are refused
            unread).
    """

    state_dir: Path
    database_url: str
    secret_key: str
    vault_ttl_seconds: int = 900
    otp_ttl_seconds: int = 600
    reset_ttl_seconds: int = 3600
    session_idle_seconds: int = 1800
    public_url: str = "http://127.0.0.1:8000"
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_from: str = "noreply@esante.example"
    smtp_starttls: bool = True
    upload_max_mb: int = 20
    document_quota_mb: int = 200
    dicom_max_mb: int = 200

    @property
    def documents_dir(self) -> Path:
        """Directory of the stored documents and staged uploads: ``<state_dir>/documents``."""
        return self.state_dir / "documents"

    @property
    def imaging_dir(self) -> Path:
        """Directory of the stored DICOM files of the imaging store: ``<state_dir>/imaging``."""
        return self.state_dir / "imaging"

    def __repr__(self) -> str:
        """Return a representation without the secret values."""
        return f"Settings(state_dir={str(self.state_dir)!r}, smtp_host={self.smtp_host!r})"


def _int(name: str, default: int, *, maximum: int | None = None) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        value = int(raw) if raw else default
    except ValueError:
        value = default
    value = max(value, 0)
    if maximum is not None:
        value = min(value, maximum)
    return value


def _secret_key(state_dir: Path) -> str:
    key = os.environ.get("DSP_SECRET_KEY", "").strip()
    if key:
        return key
    path = state_dir / "secret.key"
    if path.exists():
        return path.read_text(encoding="ascii").strip()
    state_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race
        return path.read_text(encoding="ascii").strip()
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key + "\n")
    return key


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Read the settings from the environment (cached; tests call ``get_settings.cache_clear()``).

    Returns:
        The settings. OTP validity is capped at 600 s and reset-token validity at 3600 s.
    """
    state_dir = Path(os.environ.get("DSP_STATE_DIR", "").strip() or REPO_ROOT / "var")
    database_url = os.environ.get("DSP_DATABASE_URL", "").strip() or f"sqlite:///{state_dir / 'dsp.sqlite3'}"
    return Settings(
        state_dir=state_dir,
        database_url=database_url,
        secret_key=_secret_key(state_dir),
        vault_ttl_seconds=_int("DSP_VAULT_TTL_SECONDS", 900),
        otp_ttl_seconds=_int("DSP_OTP_TTL_SECONDS", 600, maximum=600),
        reset_ttl_seconds=_int("DSP_RESET_TTL_SECONDS", 3600, maximum=3600),
        session_idle_seconds=_int("DSP_SESSION_IDLE_SECONDS", 1800),
        public_url=(os.environ.get("DSP_PUBLIC_URL", "").strip() or "http://127.0.0.1:8000").rstrip("/"),
        smtp_host=os.environ.get("SMTP_HOST", "").strip(),
        smtp_port=_int("SMTP_PORT", 587),
        smtp_user=os.environ.get("SMTP_USER", "").strip(),
        smtp_password=os.environ.get("SMTP_PASSWORD", ""),
        smtp_from=os.environ.get("SMTP_FROM", "").strip() or "noreply@esante.example",
        smtp_starttls=os.environ.get("SMTP_STARTTLS", "1").strip().lower() not in {"0", "false", "no", "off"},
        upload_max_mb=_int("DSP_UPLOAD_MAX_MB", 20),
        document_quota_mb=_int("DSP_DOCUMENT_QUOTA_MB", 200),
        dicom_max_mb=_int("DSP_DICOM_MAX_MB", 200),
    )
