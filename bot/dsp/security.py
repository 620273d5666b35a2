"""Keys derived from ``DSP_SECRET_KEY``: the HMAC pepper for code hashes and the Fernet vault key."""

from __future__ import annotations

import base64
import hashlib
import hmac

from cryptography.fernet import Fernet

from bot.dsp.settings import get_settings


def _derive(label: str) -> bytes:
    return hmac.new(get_settings().secret_key.encode(), label.encode(), hashlib.sha256).digest()


def keyed_hash(purpose: str, value: str) -> str:
    """Return the HMAC-SHA256 (hex, 64 chars) of ``value`` for ``purpose`` with the secret pepper.

    Used for activation codes, one-time codes and reset tokens: high-entropy or short-lived
    secrets, where a keyed hash is enough (NIST SP 800-63B 5.1.1.2 asks for a slow hash only
    for memorized secrets, which use Argon2id).
    """
    message = f"{purpose}\x00{value}".encode()
    return hmac.new(_derive("pepper"), message, hashlib.sha256).hexdigest()


def same_hash(a: str, b: str) -> bool:
    """Compare two hashes in constant time."""
    return hmac.compare_digest(a.encode(), b.encode())


def fernet() -> Fernet:
    """Return the Fernet cipher of the vault (key derived from the secret key)."""
    return Fernet(base64.urlsafe_b64encode(_derive("vault")))


def conversation_tag(conversation_id: str) -> str:
    """Return a short pseudonymous tag of a conversation id, safe for audit rows (16 hex chars)."""
    return "conv:" + keyed_hash("conversation", conversation_id)[:16]
