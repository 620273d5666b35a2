"""Password policy and hashing after NIST SP 800-63B (section 3.1.1.2, memorized secrets).

* at least 8 characters, at least 64 accepted (here up to 128), no composition rules;
* refuse values found in a list of commonly used passwords (``data/common-passwords.txt``,
  compared case-insensitively, also with leading/trailing digits and symbols removed, e.g.
  ``Soleil2024!``) and context-specific words (the user's matricule, a single repeated character);
* store with Argon2id (argon2-cffi ``PasswordHasher``, RFC 9106 parameters).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from bot.dsp.errors import PasswordRejected

MIN_LENGTH = 8
MAX_LENGTH = 128
_COMMON_FILE = Path(__file__).with_name("data") / "common-passwords.txt"
_EDGES = re.compile(r"^[\W\d_]+|[\W\d_]+$")

_hasher = PasswordHasher()
#: Hash of a random value, verified against when the account is unknown (equal timing).
_DUMMY_HASH = _hasher.hash("dummy password for timing equalisation")


@functools.lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    """Return the set of common passwords (lower-case) from ``data/common-passwords.txt``."""
    lines = _COMMON_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip().casefold() for line in lines if line.strip() and not line.startswith("#"))


def _normalize(password: str) -> str:
    # NIST SP 800-63B 5.1.1.2: apply Unicode normalization (NFKC) before hashing and checking.
    return unicodedata.normalize("NFKC", password)


def check_password_policy(password: str, matricule: str | None = None) -> None:
    """Check a new password against the policy.

    Args:
        password: The candidate password.
        matricule: The holder's 13-digit matricule, refused inside the password.

    Raises:
        PasswordRejected: ``password_too_short`` {min_length}, ``password_too_long`` {max_length},
            ``password_common`` (common or context-specific; params ``{"reason": "list"|"matricule"
            |"repetition"}``).
    """
    value = _normalize(password)
    if len(value) < MIN_LENGTH:
        raise PasswordRejected("password_too_short", min_length=MIN_LENGTH)
    if len(value) > MAX_LENGTH:
        raise PasswordRejected("password_too_long", max_length=MAX_LENGTH)
    folded = value.casefold()
    if len(set(folded)) == 1:
        raise PasswordRejected("password_common", reason="repetition")
    common = common_passwords()
    stripped = _EDGES.sub("", folded)
    if folded in common or (len(stripped) >= 4 and stripped in common):
        raise PasswordRejected("password_common", reason="list")
    if matricule:
        digits_only = re.sub(r"\D", "", value)
        if matricule in value or matricule in digits_only:
            raise PasswordRejected("password_common", reason="matricule")


def hash_password(password: str) -> str:
    """Return the Argon2id hash (PHC string) of a password or PIN."""
    return _hasher.hash(_normalize(password))


def verify_password(password_hash: str | None, password: str) -> bool:
    """Check a password or PIN against its Argon2id hash (constant work even without a hash).

    Args:
        password_hash: Stored PHC string, or None when there is none (a dummy hash is verified
            so that timing does not reveal it).
        password: Candidate value.

    Returns:
        True when it matches.
    """
    try:
        return (
            _hasher.verify(password_hash or _DUMMY_HASH, _normalize(password)) and password_hash is not None
        )
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
