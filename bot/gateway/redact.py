"""Keep secrets out of Rasa: user text is cleaned before it leaves the gateway (invariant 1).

A matricule, a code, a phone number or an e-mail address typed in the open chat is replaced by
a placeholder; the user is told to use the private prompt instead. Text starting with `/` is
never passed as a Rasa intent command.
"""

from __future__ import annotations

import re

#: Longest message passed to Rasa, in characters.
MAX_TEXT_CHARS = 1000

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
# Six or more digits, allowing spaces, dots, dashes or slashes inside groups (matricule, phone, code).
_DIGITS = re.compile(r"\+?\d(?:[\s./-]?\d){5,}")
# A token mixing letters and digits of 6+ characters, like an activation code or a reset token.
_CODE = re.compile(r"\b(?=[A-Za-z0-9_-]*\d)(?=[A-Za-z0-9_-]*[A-Za-z])[A-Za-z0-9_-]{6,}\b")
_URL_TOKEN = re.compile(r"https?://\S+")
PLACEHOLDER = "***"


def clean(text: str, limit: int = MAX_TEXT_CHARS) -> tuple[str, bool]:
    """Return (text safe for Rasa, whether something was masked).

    Args:
        text: raw user text.
        limit: longest text returned (the helpdesk keeps longer messages).

    Returns:
        The text with control characters removed, leading slashes stripped (no `/intent{...}`
        injection), secrets masked, truncated to `limit`; and True when a secret-like
        value was masked.
    """
    text = "".join(ch if ch.isprintable() or ch in "\n\t" else " " for ch in text)
    text = re.sub(r"^[\s/]+", "", text).rstrip()
    masked = False
    for pattern in (_URL_TOKEN, _EMAIL, _DIGITS, _CODE):
        text, count = pattern.subn(PLACEHOLDER, text)
        masked = masked or count > 0
    return text[:limit], masked
