"""Language of a user's message: fr, de or en (lingua, restricted to the languages we serve)."""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

SUPPORTED = ("fr", "de", "en")
#: Below this many words a guess is too weak to switch a conversation's language.
MIN_WORDS = 3
#: Minimum lingua confidence (0..1) to switch.
MIN_CONFIDENCE = 0.6

_lock = threading.Lock()


@lru_cache(maxsize=1)
def _detector() -> Any:
    from lingua import Language, LanguageDetectorBuilder

    languages = [Language.FRENCH, Language.GERMAN, Language.ENGLISH, Language.PORTUGUESE]
    return LanguageDetectorBuilder.from_languages(*languages).with_preloaded_language_models().build()


def warm_up() -> None:
    """Load the language models now (takes about a second) rather than on the first message."""
    with _lock:
        _detector()


def detect(text: str) -> str | None:
    """Return "fr", "de" or "en" when the text is clearly in that language, else None.

    Args:
        text: the user's message (already redacted).

    Returns:
        The ISO 639-1 code, or None for short or ambiguous text (the caller keeps the current one).
    """
    if len(text.split()) < MIN_WORDS:
        return None
    with _lock:
        detector = _detector()
    values = detector.compute_language_confidence_values(text)
    if not values:
        return None
    best = values[0]
    code = best.language.iso_code_639_1.name.lower()
    if code in SUPPORTED and best.value >= MIN_CONFIDENCE:
        return code
    return None
