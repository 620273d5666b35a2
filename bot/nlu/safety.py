"""Deterministic recognition of medical emergencies in a patient's message.

An emergency must never depend on a classifier's confidence: whatever the intent model says, a
message describing a life-threatening situation is answered with the emergency number 112
(intents.md: "for an emergency, gives the emergency number 112"). This module is plain Python
(no Rasa import) so the action server, the tests and the Rasa component share one list.

The phrases are deliberately specific: "urgent", "urgence", "Notfall" or "emergency" alone are
*not* emergencies here, because patients use them about the app ("c'est urgent, je n'arrive pas à
me connecter") or about the DSP's emergency access ("im Notfall, kann der Arzt meine Akte sehen?").
"""

from __future__ import annotations

import re
import unicodedata

#: Regular expressions over the normalised text (lower case, no accents, one space between words,
#: apostrophes kept as "'"), per language; Luxembourgish and Portuguese cover the commonest cases.
EMERGENCY_PATTERNS: dict[str, tuple[str, ...]] = {
    "fr": (
        r"\bne respire (plus|pas|presque plus)\b",
        r"\b(il|elle|bebe|enfant|pere|mere) respire plus\b",
        r"\bn'arrive (plus|pas) a respirer\b",
        r"\b(a |ai |as )?perdu connaissance\b",
        r"\binconscient(e)?\b",
        r"\b(s'est )?evanoui(e)?\b",
        r"\b(crise|attaque) cardiaque\b",
        r"\barret cardiaque\b",
        r"\bavc\b",
        r"\boverdose\b",
        r"\baval[ea]\w* (des|plein de|trop de|toute? la boite de|une boite de) "
        r"(medicaments|cachets|pilules|comprimes)\b",
        r"\bsaigne (beaucoup|enormement|abondamment|sans arret)\b",
        r"\bhemorragie\b",
        r"\bsuicid",
        r"\b(me|se) (tuer|suicider)\b",
        r"\ben train de mourir\b",
        r"\bs'?etouff(e|er)\b",
        r"\bconvuls",
        r"\bambulance\b",
        r"\bsamu\b",
        r"\bpompiers\b",
    ),
    "de": (
        r"\batmet (nicht|nicht mehr|kaum|kaum noch)\b",
        r"\bkriegt? keine luft\b",
        r"\bbekomm\w* keine luft\b",
        r"\bbewusstlos\b",
        r"\bohnm(a|ae)chtig\b",
        r"\bherzinfarkt\b",
        r"\bherzstillstand\b",
        r"\bschlaganfall\b",
        r"\buberdosis\b|\bueberdosis\b",
        r"\b(viele|alle|zu viele|ganze packung|packung) (tabletten|pillen|medikamente)\b",
        r"\b(tabletten|pillen|medikamente) (geschluckt|genommen)\b.*\b(viele|alle|zu viele|ganze)\b",
        r"\bblutet (stark|sehr|ohne ende|ganz doll)\b",
        r"\bselbstmord\b",
        r"\bsuizid",
        r"\b(mich|sich) umbringen\b",
        r"\berstick",
        r"\bkrampfanfall\b",
        r"\b(kranken|rettungs)wagen\b",
        r"\bnotarzt\b",
        r"\bstirbt\b",
    ),
    "en": (
        r"\b(is not|isn't|isnt|not|stopped|stop) breathing\b",
        r"\bcan'?t breathe\b|\bcannot breathe\b",
        r"\bunconscious\b",
        r"\bpassed out\b",
        r"\bcollapsed\b",
        r"\bheart attack\b",
        r"\bcardiac arrest\b",
        r"\b(having|had|has) a stroke\b",
        r"\boverdos",
        r"\bswallowed (a lot of |all |many |too many |a bottle of |the )?(pills|tablets|medication|medicine)\b",
        r"\bbleeding (heavily|a lot|badly|everywhere)\b",
        r"\bsuicid",
        r"\bkill (myself|himself|herself)\b",
        r"\bchoking\b",
        r"\bambulance\b",
        r"\bseizure\b",
    ),
    "lb": (
        r"\botemt net\b",
        r"\bbewosstlos\b",
        r"\bambulanz\b",
    ),
    "pt": (
        r"\bnao (esta a |esta )?respira",
        r"\bdesmai(ou|ado|ada)\b",
        r"\binconsciente\b",
        r"\bataque (cardiaco|de coracao)\b",
        r"\bambulancia\b",
    ),
}

_COMPILED = [re.compile(p) for patterns in EMERGENCY_PATTERNS.values() for p in patterns]
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u00b4": "'"})


def normalise(text: str) -> str:
    """Return `text` lower-cased, without accents, with single spaces and plain apostrophes.

    >>> normalise("  Il NE RESPIRE   plus ! ")
    'il ne respire plus !'
    """
    decomposed = unicodedata.normalize("NFKD", text.translate(_APOSTROPHES).lower())
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(stripped.replace("ß", "ss").split())


def emergency_span(text: str) -> tuple[int, int] | None:
    """Return `(start, end)` of the first emergency phrase in `text`, else None.

    The offsets index the *normalised* text (see `normalise`), whose length can differ from the
    original's; they locate the phrase for logs-free debugging and for the entity Rasa records,
    nothing reads the original text at them.
    """
    normalised = normalise(text)
    spans = [m.span() for pattern in _COMPILED if (m := pattern.search(normalised))]
    return min(spans) if spans else None


def is_emergency(text: str) -> bool:
    """Tell whether `text` describes a medical emergency (see `EMERGENCY_PATTERNS`)."""
    return emergency_span(text) is not None
