"""Response parity: every response speaks French, German and English, none is empty or in the wrong language."""

from __future__ import annotations

import re

import pytest

from bot.gateway import language
from tests.test_domain_files import load_domain

RESPONSES = load_domain()["responses"]
#: Parts that are the same in every language: the app's French labels in quotes, slots, placeholders, links.
SHARED = re.compile(r"«[^»]*»|„[^“]*“|“[^”]*”|\"[^\"]*\"|\{[a-z_]+\}|\[\[[a-z]+\]\]|https?://\S+|\+?[0-9][0-9 ]+")


def variants(name: str) -> dict[str, dict]:
    """The variations of a response, by the language they are conditioned on."""
    found = {}
    for variation in RESPONSES[name]:
        langs = [c["value"] for c in variation.get("condition") or [] if c.get("name") == "language"]
        assert len(langs) == 1, (name, variation)
        found.setdefault(langs[0], variation)
    return found


@pytest.mark.parametrize("name", sorted(RESPONSES))
def test_every_response_has_one_variant_per_language(name):
    counts = {}
    for variation in RESPONSES[name]:
        for condition in variation.get("condition") or []:
            if condition.get("name") == "language":
                counts[condition["value"]] = counts.get(condition["value"], 0) + 1
    assert set(counts) == {"fr", "de", "en"}, (name, counts)
    assert len(set(counts.values())) == 1, (name, counts)  # as many variations in each language


@pytest.mark.parametrize("name", sorted(RESPONSES))
def test_no_response_is_empty_or_in_the_wrong_language(name):
    for lang, variation in variants(name).items():
        text = (variation.get("text") or "").strip()
        assert text, (name, lang)
        for button in variation.get("buttons") or []:
            assert button.get("title", "").strip(), (name, lang, button)
        detected = language.detect(SHARED.sub(" ", text))
        assert detected in (None, lang), (name, lang, detected)
