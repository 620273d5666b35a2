"""Voice front ends: spoken input made readable for the gateway, replies made speakable.

Voice front ends (phone/IVR, smart speakers, screen readers) do speech recognition and synthesis
themselves; the gateway's voice endpoint (``POST /v1/voice/{conversation_id}``, in ``app.py``)
uses this module, which is pure (no I/O, no database):

* **Spoken input.** :func:`command_of` recognises commands ("répète", "noch einmal", "suivant",
  "retour", "aide", "annuler", "un conseiller", yes / no) in French, German and English;
  :func:`choice_of` reads a spoken choice ("deux", "option 2", "le deuxième", "die zweite",
  "number three"); :func:`normalise_protected` turns a spoken secret into what the vault expects
  (a matricule or a code said in words or groups into digits, an e-mail said as "jean point
  dupont arobase example point lu" into an address); :func:`digits_in_text` turns runs of number
  words in free text into digits, so that the gateway's redaction masks them before Rasa.
* **Speech.** :func:`render` turns the messages of one reply into :class:`Speech`: plain text and
  SSML (``<speak xml:lang>``, ``<break>`` between sentences and options, ``<lang xml:lang="fr-FR">``
  around the app's French labels inside German or English, ``<say-as interpret-as="characters">``
  for phone numbers and codes). No emoji, Markdown or URL is read: a link becomes what to do
  instead, an image is described, a document is named with where to read it; choices become
  numbered options read a few at a time (:data:`PAGE_SIZE`), numbered across pages.
"""

from __future__ import annotations

import functools
import re
import unicodedata
import xml.etree.ElementTree as ET  # noqa: S405 - we build XML, never parse untrusted XML here
from dataclasses import dataclass
from datetime import date
from typing import Any

from babel.dates import format_date

LANGUAGES = ("fr", "de", "en")
#: SSML language tag per conversation language.
XML_LANG = {"fr": "fr-FR", "de": "de-DE", "en": "en-GB"}
SSML_NS = "http://www.w3.org/2001/10/synthesis"
XML_NS_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
#: How many options are read at once; "suivant" reads the next ones.
PAGE_SIZE = 3
#: Pauses, in milliseconds.
SENTENCE_BREAK_MS = 300
OPTION_BREAK_MS = 400
GROUP_BREAK_MS = 150
#: The helpdesk's phone number (quick guide, « Des questions ? »).
HELPDESK_PHONE = "+352 27 12 50 18 33"
#: Consecutive silences after which the call ends.
MAX_SILENCES = 3

# --------------------------------------------------------------------------- folding


def fold(text: str) -> str:
    """Return `text` lower-cased, without accents, apostrophes and punctuation as spaces.

    "ß" becomes "ss"; commas are kept (as " , ") because a pause separates groups of numbers.
    """
    text = text.replace("ß", "ss").replace("’", "'").lower()
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[,;]", " , ", text)
    return re.sub(r"[^a-z0-9, ]+", " ", text).strip()


def _words(text: str) -> list[str]:
    return fold(text).split()


# --------------------------------------------------------------------------- numbers in words

_UNITS = {
    "zero": 0, "un": 1, "une": 1, "deux": 2, "trois": 3, "quatre": 4, "cinq": 5, "six": 6, "sept": 7, "huit": 8,
    "neuf": 9, "null": 0, "eins": 1, "ein": 1, "eine": 1, "zwei": 2, "zwo": 2, "drei": 3, "vier": 4, "funf": 5,
    "fuenf": 5, "sechs": 6, "sieben": 7, "acht": 8, "neun": 9, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
    "seven": 7, "eight": 8, "nine": 9,
}
_TEENS = {
    "dix": 10, "onze": 11, "douze": 12, "treize": 13, "quatorze": 14, "quinze": 15, "seize": 16, "zehn": 10,
    "elf": 11, "zwolf": 12, "zwoelf": 12, "dreizehn": 13, "vierzehn": 14, "funfzehn": 15, "fuenfzehn": 15,
    "sechzehn": 16, "siebzehn": 17, "achtzehn": 18, "neunzehn": 19, "ten": 10, "eleven": 11, "twelve": 12,
    "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}
_TENS = {
    "vingt": 20, "vingts": 20, "trente": 30, "quarante": 40, "cinquante": 50, "soixante": 60, "septante": 70,
    "huitante": 80, "octante": 80, "nonante": 90, "quatrevingt": 80, "quatrevingts": 80, "zwanzig": 20,
    "dreissig": 30, "vierzig": 40, "funfzig": 50, "fuenfzig": 50, "sechzig": 60, "siebzig": 70, "achtzig": 80,
    "neunzig": 90, "twenty": 20, "thirty": 30, "forty": 40, "fourty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
    "eighty": 80, "ninety": 90,
}
_MULTIPLIERS = {"cent": 100, "cents": 100, "hundert": 100, "hundred": 100, "mille": 1000, "tausend": 1000,
                "thousand": 1000}
_CONNECTORS = {"et", "und", "and"}
_DOUBLE = {"double", "doppel", "doppelt"}
#: German number morphemes, to split compounds such as "neunzehnhundertfunfundachtzig".
_GERMAN_MORPHEMES = sorted(
    [w for w in (*_UNITS, *_TEENS, *_TENS, *_MULTIPLIERS, "und") if w.isascii()], key=len, reverse=True)
_GERMAN_WORDS = {"null", "eins", "ein", "eine", "zwei", "zwo", "drei", "vier", "funf", "fuenf", "sechs", "sieben",
                 "acht", "neun", "zehn", "elf", "zwolf", "zwoelf", "dreizehn", "vierzehn", "funfzehn", "fuenfzehn",
                 "sechzehn", "siebzehn", "achtzehn", "neunzehn", "zwanzig", "dreissig", "vierzig", "funfzig",
                 "fuenfzig", "sechzig", "siebzig", "achtzig", "neunzig", "hundert", "tausend", "und"}


#: Longest word tried as a German number compound (the longest matricule group said as one word
#: is far shorter); longer words are not numbers.
_MAX_COMPOUND_CHARS = 60


def _split_german(word: str) -> list[str] | None:
    """Split a German number compound into its morphemes, or None when it is not one.

    Linear in practice: the split of each suffix is computed once (memoised), so a long word with
    many two-way splits ("achtzehnachtzehn…x") cannot make the search exponential.
    """
    if len(word) > _MAX_COMPOUND_CHARS:
        return None
    found = _split_suffix(word)
    return list(found) if found is not None else None


@functools.lru_cache(maxsize=4096)
def _split_suffix(word: str) -> tuple[str, ...] | None:
    if not word:
        return ()
    for morpheme in _GERMAN_MORPHEMES:
        if morpheme in _GERMAN_WORDS and word.startswith(morpheme):
            rest = _split_suffix(word[len(morpheme):])
            if rest is not None:
                return (morpheme, *rest)
    return None


def _tokens(text: str) -> list[str]:
    """Fold and split, German compounds and French "quatre-vingt(s)" made single number tokens."""
    out: list[str] = []
    for word in fold(text).replace(",", " , ").split():
        parts = _split_german(word) if len(word) > 4 and word not in _TEENS and word not in _TENS else None
        out.extend(parts if parts and len(parts) > 1 else [word])
    merged: list[str] = []
    for token in out:
        if token in ("vingt", "vingts") and merged and merged[-1] == "quatre":
            merged[-1] = "quatrevingt"
        else:
            merged.append(token)
    return merged


def _value(token: str, allow_oh: bool) -> int | None:
    if token in _UNITS:
        return _UNITS[token]
    if token in _TEENS:
        return _TEENS[token]
    if token in _TENS:
        return _TENS[token]
    if allow_oh and token in ("oh", "o"):
        return 0
    return None


def _can_add(current: int, value: int) -> bool:
    """Return True when `value` continues the number `current` ("vingt" + "cinq", "cent" + "deux")."""
    low = current % 100
    if value == 0:
        return False
    if value < 10:
        return (low % 10 == 0 and low >= 10) or (low == 0 and current >= 100)
    if value < 20:
        return low in (60, 80) or (low == 0 and current >= 100)
    return low == 0 and current >= 100


def _parse(text: str, allow_oh: bool = False) -> list[tuple[str, str]]:
    """Read number words: each spoken number becomes its digits, other words stay.

    "dix-neuf quatre-vingt-cinq" gives [("num", "19"), ("num", "85")]; "fünfundachtzig" gives
    [("num", "85")]; "double cinq" gives [("num", "55")]; digits already written stay as written.
    """
    items: list[tuple[str, str]] = []
    current: int | None = None
    last_unit: int | None = None  # German "fünf und achtzig": the unit said before its tens
    connector = False
    double = False

    def flush() -> None:
        nonlocal current, last_unit, connector
        if current is not None:
            items.append(("num", str(current)))
        current, last_unit, connector = None, None, False

    for token in _tokens(text):
        if token == ",":
            flush()
            items.append(("sep", ","))
            continue
        if token.isdigit():
            flush()
            items.append(("num", token))
            continue
        if token in _DOUBLE:
            flush()
            double = True
            continue
        if token in _CONNECTORS and current is not None:
            connector = True
            continue
        if token in _MULTIPLIERS:
            factor = _MULTIPLIERS[token]
            if current is None:
                current = factor
            elif factor == 100 and current % 1000 < 100:
                low = current % 1000  # "dix-neuf cent", "deux mille trois cent"
                current = current - low + max(low, 1) * 100
            elif factor == 1000 and current < 1000:
                current = max(current, 1) * 1000
            else:
                flush()
                current = factor
            last_unit, connector = None, False
            continue
        value = _value(token, allow_oh)
        if value is None:
            flush()
            double = False
            items.append(("word", token))
            continue
        if double and value < 10:
            flush()
            items.append(("num", str(value) * 2))
            double = False
            continue
        double = False
        if current is None:
            current, last_unit, connector = value, (value if value < 10 else None), False
            continue
        if connector and last_unit is not None and 20 <= value < 100 and value % 10 == 0 and current % 100 < 10:
            current = current - last_unit + value + last_unit  # "fünf und achtzig"
            last_unit, connector = None, False
            continue
        if _can_add(current, value):
            current += value
            last_unit = value if value < 10 else None
            connector = False
            continue
        flush()
        current, last_unit = value, (value if value < 10 else None)
    flush()
    return items


def spoken_number(text: str) -> int | None:
    """Return the one number a text says ("quatre-vingt-dix" -> 90, "2" -> 2), else None."""
    items = [item for item in _parse(text) if item[0] != "sep"]
    if len(items) == 1 and items[0][0] == "num":
        return int(items[0][1])
    return None


def digits_in_text(text: str, min_numbers: int = 3) -> str:
    """Write runs of spoken numbers as digits, so that a number said in words can be masked.

    Args:
        text: free text from speech recognition.
        min_numbers: a run of fewer spoken numbers (e.g. "deux documents") stays as it was said.

    Returns:
        The text with each run of at least `min_numbers` numbers as one group of digits, words
        kept (folded only where a number was replaced).
    """
    items = _parse(text)
    numbers = sum(1 for kind, _ in items if kind == "num")
    if numbers < min_numbers:
        return text
    out: list[str] = []
    run: list[str] = []
    for kind, value in items + [("word", "")]:
        if kind == "num":
            run.append(value)
            continue
        if kind == "sep" and run:
            continue
        if run:
            (out.append("".join(run)) if len(run) >= min_numbers else out.extend(run))
            run = []
        if value:
            out.append(value)
    return " ".join(out)


# --------------------------------------------------------------------------- commands and choices

#: Whole utterances that are commands (folded; politeness words removed first).
COMMANDS: dict[str, dict[str, set[str]]] = {
    "repeat": {"fr": {"repete", "repetez", "repeter", "repete s il te plait", "pouvez vous repeter", "encore une fois",
                      "tu peux repeter", "pardon", "comment"},
               "de": {"noch einmal", "nochmal", "noch mal", "wiederholen", "wiederholen sie", "wie bitte",
                      "bitte wiederholen", "wiederholung"},
               "en": {"repeat", "repeat that", "say again", "say that again", "again", "sorry", "pardon",
                      "come again", "once more"}},
    "next": {"fr": {"suivant", "suivants", "la suite", "suite", "les suivants", "encore", "autres", "d autres"},
             "de": {"weiter", "nachste", "naechste", "die nachsten", "mehr", "andere", "weitere"},
             "en": {"next", "more", "the next ones", "next ones", "others", "other options"}},
    "back": {"fr": {"retour", "revenir", "precedent", "precedents", "en arriere", "retour en arriere"},
             "de": {"zuruck", "zurueck", "vorherige", "zuruck bitte"},
             "en": {"back", "go back", "previous"}},
    "help": {"fr": {"aide", "a l aide", "j ai besoin d aide", "au secours", "menu"},
             "de": {"hilfe", "ich brauche hilfe", "menu", "menue"},
             "en": {"help", "i need help", "menu"}},
    "cancel": {"fr": {"annuler", "annule", "annulez", "arrete", "arreter", "stop", "abandonner"},
               "de": {"abbrechen", "abbruch", "stopp", "stop", "aufhoren", "beenden"},
               "en": {"cancel", "stop", "quit", "abort"}},
    "helpdesk": {"fr": {"un conseiller", "conseiller", "une conseillere", "parler a un conseiller", "helpdesk",
                        "le helpdesk", "un humain", "une personne", "parler a quelqu un", "un agent",
                        "parler a une personne", "operateur"},
                 "de": {"berater", "ein berater", "einen berater", "helpdesk", "mitarbeiter", "einen mitarbeiter",
                        "ein mensch", "einen menschen", "mit einem menschen sprechen", "eine person"},
                 "en": {"helpdesk", "help desk", "an agent", "agent", "a person", "a human", "human", "operator",
                        "an adviser", "an advisor", "talk to a person", "representative"}},
    "yes": {"fr": {"oui", "ouais", "d accord", "oui d accord", "bien sur", "exactement", "c est ca", "ok", "okay",
                   "oui oui", "tout a fait", "volontiers"},
            "de": {"ja", "jawohl", "genau", "ja genau", "einverstanden", "ok", "okay", "richtig", "gerne", "ja gerne"},
            "en": {"yes", "yeah", "yep", "sure", "ok", "okay", "correct", "right", "of course", "yes please"}},
    "no": {"fr": {"non", "non non", "pas du tout", "surtout pas", "jamais"},
           "de": {"nein", "ne", "nee", "auf keinen fall", "nicht"},
           "en": {"no", "nope", "no way", "not at all"}},
}
_POLITE = re.compile(r"\b(s il (vous|te) plait|svp|stp|merci|bitte|danke|please|thanks|thank you|euh|hm+|ah|oh)\b")
#: Words said around a choice ("option deux", "le numéro 2", "I'll take number three").
_CHOICE_FILLERS = {
    "le", "la", "l", "les", "option", "numero", "choix", "je", "prends", "veux", "choisis", "c", "est", "du",
    "nummer", "die", "der", "das", "den", "wahl", "ich", "nehme", "mochte", "the", "number", "choice", "i", "ll",
    "take", "want", "pick", "no", "nr", "n", "opcion", "punkt",
}
#: Spoken ordinals ("le deuxième", "die zweite", "the second"), folded.
ORDINALS = {
    "premier": 1, "premiere": 1, "1er": 1, "1re": 1, "deuxieme": 2, "second": 2, "seconde": 2, "troisieme": 3,
    "quatrieme": 4, "cinquieme": 5, "sixieme": 6, "septieme": 7, "huitieme": 8, "neuvieme": 9, "dixieme": 10,
    "erste": 1, "ersten": 1, "erster": 1, "erstes": 1, "zweite": 2, "zweiten": 2, "zweiter": 2, "dritte": 3,
    "dritten": 3, "vierte": 4, "vierten": 4, "funfte": 5, "funften": 5, "sechste": 6, "siebte": 7, "achte": 8,
    "neunte": 9, "zehnte": 10, "first": 1, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "1st": 1, "2nd": 2, "3rd": 3, "4th": 4,
}
_LAST = {"dernier", "derniere", "letzte", "letzten", "letzter", "last"}


def _bare(text: str) -> str:
    return re.sub(r"\s+", " ", _POLITE.sub(" ", fold(text).replace(",", " "))).strip()


def command_of(text: str) -> tuple[str, str] | None:
    """Return (command, language) when the whole utterance is a voice command, else None.

    Commands: repeat, next, back, help, cancel, helpdesk, yes, no. "non merci" is "no";
    "je veux annuler mon rendez-vous" is not a command (only whole utterances are).
    """
    bare = _bare(text)
    if not bare:
        return None
    for command, by_language in COMMANDS.items():
        for language, phrases in by_language.items():
            if bare in phrases:
                return command, language
    return None


def choice_of(text: str, count: int) -> int | None:
    """Return the 1-based choice a spoken utterance names among `count` options, else None.

    Accepts a number in digits or words ("2", "deux", "zwei", "two"), with a word around it
    ("option 2", "numéro deux", "Nummer zwei", "number two"), or an ordinal ("le deuxième", "die
    zweite", "the second", "le dernier"). A number outside 1..99 is never a choice; one above
    `count` is still returned (the caller says which numbers are valid).
    """
    words = [w for w in _bare(text).split() if w not in _CHOICE_FILLERS]
    if len(words) == 2 and words[0] in ORDINALS and words[1] in ("one", "un", "une"):
        words = words[:1]  # "the second one"
    if len(words) == 1 and words[0] in ORDINALS:
        return ORDINALS[words[0]]
    if len(words) == 1 and words[0] in _LAST and count:
        return count
    if not words or len(words) > 4:
        return None
    number = spoken_number(" ".join(words))
    return number if number is not None and 1 <= number <= 99 else None


# --------------------------------------------------------------------------- protected inputs

#: Words said around a code ("mon matricule c'est …", "my code is …"), dropped from code answers.
_CODE_FILLERS = {
    "mon", "ma", "mes", "matricule", "code", "c", "est", "cest", "le", "la", "voici", "numero", "d", "activation",
    "mein", "meine", "ist", "die", "der", "lautet", "nummer", "matrikelnummer", "aktivierungscode", "hier",
    "my", "is", "it", "its", "the", "number", "here", "pin", "tiret", "bindestrich", "dash",
    "espace", "leerzeichen", "space", "et", "und", "and", "alors", "also", "so", "well", "bon",
}
#: Phrases said before a code (folded), dropped before its characters are read.
FILLER_PHRASES = re.compile(r"\b(?:mon |ma |le |votre )?(?:code d activation|code|matricule|numero)(?: est)?\b|"
                            r"\bc est\b|\bvoici\b|\b(?:my |the )?(?:activation code|code|matricule|number)"
                            r"(?: is)?\b|\bit s\b|\bit is\b|\b(?:mein |meine |der |die )?(?:aktivierungscode|"
                            r"code|matrikelnummer|nummer)(?: ist| lautet)?\b|\bdas ist\b|\bes ist\b")
_EMAIL_SYMBOLS = {
    "arobase": "@", "arrobase": "@", "at": "@", "at-zeichen": "@", "klammeraffe": "@", "point": ".", "dot": ".",
    "punkt": ".", "tiret": "-", "dash": "-", "hyphen": "-", "bindestrich": "-", "minus": "-", "underscore": "_",
    "unterstrich": "_", "plus": "+",
}
_EMAIL_PHRASES = [
    (re.compile(r"\btiret (du )?bas\b|\btiret du huit\b|\bunder score\b"), " underscore "),
    (re.compile(r"\bat zeichen\b|\bat sign\b"), " at "),
    (re.compile(r"\btiret du six\b"), " tiret "),
]
EMAIL_SHAPE = re.compile(r"[^@\s]+@[^@\s]+\.[a-z]{2,}")
CODE_KINDS = ("matricule", "activation_code", "otp", "pin", "pin_confirm", "phone")


def spoken_code(text: str, letters: bool = False, phone: bool = False) -> str:
    """Return the characters of a code said aloud: digits (and capitals when `letters`).

    "dix-neuf quatre-vingt-cinq, zéro quatre" -> "198504": groups are joined; "K sept Q
    deux" -> "K7Q2" with `letters`; "plus trois cinq deux …" -> "+352…" with `phone`. Filler
    words ("mon matricule c'est") are dropped; another word is kept (the check then refuses it).
    """
    out: list[str] = ["+"] if phone and text.strip().startswith("+") else []
    text = FILLER_PHRASES.sub(" ", fold(text))
    for kind, value in _parse(text, allow_oh=not letters):
        if kind == "num":
            out.append(value)
        elif kind == "word":
            if phone and value == "plus" and not out:
                out.append("+")
            elif value in _CODE_FILLERS and not (letters and len(value) == 1):
                continue
            elif letters:
                out.append(value.upper())  # "K", or letters heard as one word ("K7Q")
            else:
                out.append(value)
    return "".join(out)


def spoken_email(text: str) -> str:
    """Return an e-mail address said aloud ("jean point dupont arobase example point lu").

    Symbol words (arobase/at/Klammeraffe, point/dot/Punkt, tiret/dash/Bindestrich, tiret bas/
    underscore) become symbols, spoken digits become digits, spaces go. Text already holding an
    "@" only loses its spaces. Anything that is not shaped like an address is returned stripped.
    """
    raw = text.strip()
    if "@" in raw:
        return re.sub(r"\s+", "", raw).lower()
    folded = unicodedata.normalize("NFKD", raw.lower()).encode("ascii", "ignore").decode()
    for pattern, replacement in _EMAIL_PHRASES:
        folded = pattern.sub(replacement, folded)
    pieces: list[str] = []
    for word in re.sub(r"[^a-z0-9._+\-@ ]+", " ", folded).split():
        if word in _EMAIL_SYMBOLS:
            pieces.append(_EMAIL_SYMBOLS[word])
            continue
        number = _value(word, allow_oh=False)
        if number is not None and number < 10:
            pieces.append(str(number))
        else:
            parsed = _parse(word)
            pieces.append(parsed[0][1] if len(parsed) == 1 and parsed[0][0] == "num" else word)
    address = "".join(pieces).strip(".")
    return address if EMAIL_SHAPE.fullmatch(address) else raw


def normalise_protected(text: str, kind: str) -> str:
    """Return the value for the vault from a spoken answer to a protected input of `kind`.

    Args:
        text: what speech recognition heard.
        kind: the pending protected input (matricule, activation_code, otp, pin, pin_confirm, phone,
            email, password, password_confirm, reset_token).

    Returns:
        Digits for matricule/otp/pin (spoken numbers in any of fr/de/en), capitals and digits for an
        activation code, "+" and digits for a phone, an address for an e-mail; a password or a
        reset token exactly as heard. The domain layer still checks the value.
    """
    if kind in ("matricule", "otp", "pin", "pin_confirm"):
        return spoken_code(text) or text.strip()
    if kind == "activation_code":
        return spoken_code(text, letters=True) or text.strip()
    if kind == "phone":
        return spoken_code(text, phone=True) or text.strip()
    if kind == "email":
        return spoken_email(text)
    return text


# --------------------------------------------------------------------------- speech

#: What the voice says of its own (localized).
VOICE_TEXTS: dict[str, dict[str, str]] = {
    "say_option": {"fr": "Dites {n} pour {label}", "de": "Sagen Sie {n} für {label}", "en": "Say {n} for {label}"},
    "say_option_more": {"fr": "{n} pour {label}", "de": "{n} für {label}", "en": "{n} for {label}"},
    "more_options": {"fr": "Pour entendre la suite, dites « suivant ».",
                     "de": "Für die weiteren Möglichkeiten sagen Sie „weiter“.",
                     "en": "To hear more, say \"next\"."},
    "no_more_options": {"fr": "Il n'y a pas d'autre choix.", "de": "Es gibt keine weiteren Möglichkeiten.",
                        "en": "There are no more choices."},
    "no_options": {"fr": "Je ne vous ai proposé aucun choix pour l'instant.",
                   "de": "Ich habe Ihnen gerade keine Auswahl angeboten.",
                   "en": "I have not offered you any choice right now."},
    "choice_range": {"fr": "Dites un numéro entre 1 et {count}.", "de": "Sagen Sie eine Zahl zwischen 1 und {count}.",
                     "en": "Say a number between 1 and {count}."},
    "nothing_heard": {"fr": "Je n'ai rien entendu. Je répète.", "de": "Ich habe nichts gehört. Ich wiederhole.",
                      "en": "I did not hear anything. I will repeat."},
    "nothing_to_repeat": {"fr": "Que puis-je faire pour vous ? Dites par exemple « activer mon compte », ou « aide ».",
                          "de": "Was kann ich für Sie tun? Sagen Sie zum Beispiel „Konto aktivieren“ oder „Hilfe“.",
                          "en": "What can I do for you? Say for example \"activate my account\", or \"help\"."},
    "silence_helpdesk": {"fr": "Je ne vous entends pas. Vous pouvez appeler le helpdesk au {phone}. "
                               "Ou dites « un conseiller » : je transmets votre demande à une personne du helpdesk.",
                         "de": "Ich höre Sie nicht. Sie können den Helpdesk unter {phone} anrufen. "
                               "Oder sagen Sie „Berater“: Dann gebe ich Ihr Anliegen an eine Person vom Helpdesk "
                               "weiter.",
                         "en": "I cannot hear you. You can call the helpdesk on {phone}. "
                               "Or say \"helpdesk\": I will pass your request to a person at the helpdesk."},
    "silence_end": {"fr": "Je ne vous entends toujours pas. Je raccroche. Rappelez quand vous voulez.",
                    "de": "Ich höre Sie leider immer noch nicht. Ich lege auf. Rufen Sie gern wieder an.",
                    "en": "I still cannot hear you. I will hang up now. Call again any time."},
    "relayed": {"fr": "Votre message est transmis au helpdesk.", "de": "Ihre Nachricht ist an den Helpdesk "
                "weitergegeben.", "en": "Your message has been passed to the helpdesk."},
    "image": {"fr": "Image clé de l'examen {study}. Je ne peux pas la montrer au téléphone : vous la voyez dans "
                    "l'application MyDSP, rubrique « Imagerie médicale », puis « Key images Document Radiology ».",
              "de": "Schlüsselbild der Untersuchung {study}. Am Telefon kann ich es nicht zeigen: Sie sehen es in "
                    "der App MyDSP, unter « Imagerie médicale » und dann « Key images Document Radiology ».",
              "en": "Key image of the study {study}. I cannot show it on a call: you can see it in the MyDSP app, "
                    "under « Imagerie médicale », then « Key images Document Radiology »."},
    "image_alone": {"fr": "Une image clé est disponible dans l'application MyDSP, rubrique « Imagerie médicale ».",
                    "de": "Ein Schlüsselbild finden Sie in der App MyDSP unter « Imagerie médicale ».",
                    "en": "A key image is available in the MyDSP app, under « Imagerie médicale »."},
    "file": {"fr": "Le document « {title} » se lit dans l'application MyDSP, rubrique « Mes documents ».",
             "de": "Das Dokument „{title}“ lesen Sie in der App MyDSP unter « Mes documents ».",
             "en": "You can read the document “{title}” in the MyDSP app, under « Mes documents »."},
    "viewer": {"fr": "Pour parcourir toutes les images de l'examen, ouvrez l'application MyDSP, rubrique "
                     "« Imagerie médicale », puis « Ouvrir le viewer web ».",
               "de": "Um alle Bilder der Untersuchung durchzublättern, öffnen Sie die App MyDSP, unter "
                     "« Imagerie médicale » und dann « Ouvrir le viewer web ».",
               "en": "To scroll through every image of the study, open the MyDSP app, under « Imagerie médicale », "
                     "then « Ouvrir le viewer web »."},
    "hint_matricule": {"fr": "Dites les 13 chiffres, par exemple deux par deux.",
                       "de": "Sagen Sie die 13 Ziffern, zum Beispiel jeweils zwei zusammen.",
                       "en": "Say the 13 digits, for example two at a time."},
    "hint_activation_code": {"fr": "Dites les lettres et les chiffres un par un.",
                             "de": "Sagen Sie die Buchstaben und Ziffern einzeln.",
                             "en": "Say the letters and digits one by one."},
    "hint_otp": {"fr": "Dites les chiffres du code.", "de": "Sagen Sie die Ziffern des Codes.",
                 "en": "Say the digits of the code."},
    "hint_pin": {"fr": "Dites les chiffres.", "de": "Sagen Sie die Ziffern.", "en": "Say the digits."},
    "hint_email": {"fr": "Dites l'adresse, par exemple : jean point dupont arobase example point lu.",
                   "de": "Sagen Sie die Adresse, zum Beispiel: jean Punkt dupont at example Punkt lu.",
                   "en": "Say the address, for example: jean dot dupont at example dot lu."},
    "hint_phone": {"fr": "Dites le numéro chiffre par chiffre.", "de": "Sagen Sie die Nummer Ziffer für Ziffer.",
                   "en": "Say the number digit by digit."},
    "hint_reset_token": {"fr": "Ouvrez le lien reçu par e-mail pour choisir votre nouveau mot de passe. "
                               "Ensuite, dites « annuler » pour continuer avec autre chose.",
                         "de": "Öffnen Sie den Link aus der E-Mail, um Ihr neues Passwort festzulegen. "
                               "Sagen Sie danach „abbrechen“, um mit etwas anderem weiterzumachen.",
                         "en": "Open the link in the e-mail to choose your new password. "
                               "Then say \"cancel\" to carry on with something else."},
    "plus": {"fr": "plus", "de": "plus", "en": "plus"},
    "at": {"fr": "arobase", "de": "at", "en": "at"},
    "dot": {"fr": "point", "de": "Punkt", "en": "dot"},
    "site": {"fr": "le site de l'Agence eSanté", "de": "der Website der Agence eSanté",
             "en": "the Agence eSanté website"},
}
#: Option numbers said as words (digits beyond).
NUMBER_WORDS = {
    "fr": ["zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf", "dix", "onze", "douze",
           "treize", "quatorze", "quinze", "seize", "dix-sept", "dix-huit", "dix-neuf", "vingt"],
    "de": ["null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun", "zehn", "elf",
           "zwölf", "dreizehn", "vierzehn", "fünfzehn", "sechzehn", "siebzehn", "achtzehn", "neunzehn", "zwanzig"],
    "en": ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
           "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"],
}
#: Chat wording that a caller must hear differently (per language: pattern, replacement).
REWRITES: dict[str, list[tuple[re.Pattern[str], str]]] = {
    "fr": [(re.compile(r"Votre réponse reste privée : elle ne reste pas affichée dans le chat et n'est pas "
                       r"enregistrée dans la conversation\."),
            "Votre réponse reste privée : elle n'est pas enregistrée."),
           (re.compile(r"\bsite www\.esante\.lu"), "site de l'Agence eSanté"),
           (re.compile(r"\bwww\.esante\.lu"), "le site de l'Agence eSanté"),
           (re.compile(r",? dans ce chat\b"), ""),
           (re.compile(r"\b(?:ici,? )?dans le chat\b"), "ici"),
           (re.compile(r"\bl'app\b(?! MyDSP)"), "l'application MyDSP"),
           (re.compile(r"\bl'app MyDSP\b"), "l'application MyDSP")],
    "de": [(re.compile(r"Ihre Eingabe bleibt vertraulich: Der Chat zeigt sie nicht dauerhaft an, und der "
                       r"Gesprächsverlauf speichert sie nicht\."), "Ihre Eingabe bleibt vertraulich: Sie wird nicht "
                                                                    "gespeichert."),
           (re.compile(r"\bwww\.esante\.lu"), "der Website der Agence eSanté"),
           (re.compile(r",? hier im Chat\b|\bim Chat\b"), " hier"),
           (re.compile(r"\bin der App\b(?! MyDSP)"), "in der App MyDSP")],
    "en": [(re.compile(r"Your answer stays private: it does not stay visible in the chat and is not stored in the "
                       r"conversation\."), "Your answer stays private: it is not recorded."),
           (re.compile(r"\bof www\.esante\.lu"), "of the Agence eSanté website"),
           (re.compile(r"\bwww\.esante\.lu"), "the Agence eSanté website"),
           (re.compile(r",? in this chat\b"), ""),
           (re.compile(r",? here in the chat\b"), " here"),
           (re.compile(r"\bin the chat\b"), "here"),
           (re.compile(r"\bin the app\b"), "in the MyDSP app")],
}
URL = re.compile(r"(?:https?://|www\.)[^\s»\"”“]+", re.IGNORECASE)
EMOJI = re.compile("[\U0001F000-\U0001FAFF\U00002600-\U000027BF\U0000FE0F\U0000200D\U00002B00-\U00002BFF]")
MARKDOWN = re.compile(r"\*\*|__|`|^#+\s|\[([^\]]*)\]\([^)]*\)", re.MULTILINE)
PHONE = re.compile(r"\+\d{1,3}(?:[ \u00a0](?:\d{1,4}|•••)){2,6}")
MASKED_EMAIL = re.compile(r"\b(\w)•••@(?:(\w)•••)?\.?([a-z]{2,})\b|\b(\w)•••@•••")
CODE = re.compile(r"\b([A-Z]{2,3})-(\d{3,})\b")
DATE = re.compile(r"\b(\d{2})[/.](\d{2})[/.](\d{4})\b")
PLURAL = re.compile(r"\b(\d+) (\w+)\((s|n|en|er|e)\)")
QUOTED_FR = re.compile(r"«[^»]*»")
LOCALES = {"fr": "fr_LU", "de": "de_LU", "en": "en_GB"}


def localized(key: str, language: str, **values: object) -> str:
    """Return one of the voice's own texts in `language` (French when unknown), filled with `values`."""
    variants = VOICE_TEXTS[key]
    return variants.get(language, variants["fr"]).format(**values)


def number_word(n: int, language: str) -> str:
    """Return an option number as said ("deux", "zwei", "two"); digits above twenty."""
    words = NUMBER_WORDS.get(language, NUMBER_WORDS["fr"])
    return words[n] if 0 <= n < len(words) else str(n)


@dataclass
class Segment:
    """A piece of speech: plain words, a pause, characters read one by one, or words in another language.

    Attributes:
        kind: "text", "break" (value: milliseconds), "chars" (value: characters to read one by one),
            "lang" (value: text in `lang`).
        value: the text, or the pause in milliseconds as text.
        lang: the xml:lang of a "lang" segment (e.g. "fr-FR").
    """

    kind: str
    value: str
    lang: str = ""


@dataclass
class Speech:
    """What to say: the same content as plain text and as SSML (a ``<speak>`` document)."""

    text: str
    ssml: str


def clean(text: str, language: str) -> str:
    """Return chat text made speakable: rewrites, no Markdown, emoji, URL, bullet or long dash.

    Dates ``dd/mm/yyyy`` become words, "1 série(s)" becomes "1 série" and "3 série(s)" "3 séries".
    """
    for pattern, replacement in REWRITES.get(language, []):
        text = pattern.sub(replacement, text)
    text = MARKDOWN.sub(lambda m: m.group(1) or "", text)
    text = URL.sub("", text)
    text = EMOJI.sub("", text)
    text = re.sub(r"^\s*[•\-*]\s*", "", text, flags=re.MULTILINE)
    text = re.sub(r"(?<!•)•(?!•)", "", text)  # a bullet inside a line (a mask "•••" stays)
    text = text.replace(" — ", ", ").replace("—", ", ").replace("_", " ").replace("\u00a0", " ")

    def spoken_date(match: re.Match[str]) -> str:
        try:
            day = date(int(match.group(3)), int(match.group(2)), int(match.group(1)))
        except ValueError:
            return match.group(0)
        return format_date(day, format="long", locale=LOCALES.get(language, "fr_LU"))

    text = DATE.sub(spoken_date, text)
    text = PLURAL.sub(lambda m: f"{m.group(1)} {m.group(2)}" + ("" if m.group(1) == "1" else m.group(3)), text)
    text = re.sub(r"\(\s*\)|:\s*$", "", text.strip())
    return re.sub(r"[ \t]+", " ", re.sub(r"\s*\n\s*", ". ", text)).replace(". .", ".").strip()


def sentences(text: str) -> list[str]:
    """Split speakable text into sentences (kept with their punctuation)."""
    return [part.strip() for part in re.split(r"(?<![0-9])(?<=[.!?])\s+(?=[A-ZÀ-Ý«„“\"0-9])", text) if part.strip()]


def _segments_of(sentence: str, language: str) -> list[Segment]:
    """Mark phone numbers, masked addresses, codes and French labels inside one sentence."""
    out: list[Segment] = []
    patterns = [PHONE, MASKED_EMAIL, CODE] + ([QUOTED_FR] if language != "fr" else [])
    position = 0
    while position < len(sentence):
        found = [(m.start(), index, m) for index, p in enumerate(patterns) if (m := p.search(sentence, position))]
        if not found:
            out.append(Segment("text", sentence[position:]))
            break
        start, index, match = min(found, key=lambda item: (item[0], item[1]))
        if start > position:
            out.append(Segment("text", sentence[position:start]))
        pattern = patterns[index]
        if pattern is PHONE:
            out.append(Segment("text", localized("plus", language) + " "))
            groups = match.group(0).lstrip("+").split()
            for number, group in enumerate(groups):
                if number:
                    out.append(Segment("break", str(GROUP_BREAK_MS)))
                out.append(Segment("chars", group) if group.isdigit() else Segment("text", "…"))
        elif pattern is MASKED_EMAIL:
            first, domain, tld = (match.group(1) or match.group(4)), match.group(2), match.group(3)
            out += [Segment("chars", first), Segment("text", "… " + localized("at", language) + " ")]
            if domain:
                out += [Segment("chars", domain), Segment("text", "… ")]
            if tld:
                out.append(Segment("text", localized("dot", language) + " " + tld))
        elif pattern is CODE:
            out += [Segment("chars", match.group(1)), Segment("break", str(GROUP_BREAK_MS)),
                    Segment("chars", match.group(2))]
        else:
            out.append(Segment("lang", match.group(0), XML_LANG["fr"]))
        position = match.end()
    return out


def plain(segments: list[Segment]) -> str:
    """Return the plain text of segments (characters spaced so that any engine reads them one by one)."""
    parts: list[str] = []
    for segment in segments:
        if segment.kind == "break":
            if parts and not parts[-1].rstrip().endswith((".", ",", "!", "?", ":")) and segment.value == str(
                    GROUP_BREAK_MS):
                parts.append(", ")
            else:
                parts.append(" ")
        elif segment.kind == "chars":
            parts.append(" ".join(segment.value))
        else:
            parts.append(segment.value)
    return re.sub(r"\s+([,.])", r"\1", re.sub(r"\s+", " ", "".join(parts))).strip()


def ssml(segments: list[Segment], language: str) -> str:
    """Return an SSML 1.1 ``<speak>`` document for segments (built with ElementTree: text is escaped)."""
    root = ET.Element("speak", {"version": "1.1", "xmlns": SSML_NS, XML_NS_LANG: XML_LANG.get(language, "fr-FR")})
    last: ET.Element | None = None

    def add_text(value: str) -> None:
        if last is None:
            root.text = (root.text or "") + value
        else:
            last.tail = (last.tail or "") + value

    for segment in segments:
        if segment.kind == "text":
            add_text(segment.value)
            continue
        if segment.kind == "break":
            last = ET.SubElement(root, "break", {"time": f"{segment.value}ms"})
        elif segment.kind == "chars":
            last = ET.SubElement(root, "say-as", {"interpret-as": "characters"})
            last.text = segment.value
        else:
            last = ET.SubElement(root, "lang", {XML_NS_LANG: segment.lang})
            last.text = segment.value
    return ET.tostring(root, encoding="unicode")


def speech_of(segments: list[Segment], language: str) -> Speech:
    """Return the plain text and the SSML of the same segments."""
    return Speech(text=plain(segments), ssml=ssml(segments, language))


def say(texts: list[str], language: str) -> list[Segment]:
    """Return segments for texts: each cleaned, split in sentences, a pause between sentences."""
    out: list[Segment] = []
    for text in texts:
        for sentence in sentences(clean(text, language)):
            if out:
                out.append(Segment("break", str(SENTENCE_BREAK_MS)))
            out += _segments_of(sentence if sentence[-1] in ".!?:" else sentence + ".", language)
    return out


def options_segments(labels: list[str], language: str, page: int) -> list[Segment]:
    """Return the options of one page as numbered speech ("Dites un pour …, deux pour …").

    Args:
        labels: every option's label, in the order their numbers choose them.
        language: fr, de or en.
        page: index of the first option to read (0, PAGE_SIZE, 2*PAGE_SIZE…); numbers stay absolute.
    """
    shown = labels[page:page + PAGE_SIZE]
    out: list[Segment] = []
    for offset, label in enumerate(shown):
        n = page + offset + 1
        key = "say_option" if offset == 0 else "say_option_more"
        words = localized(key, language, n=number_word(n, language), label=clean(label, language).rstrip(".:"))
        if offset:
            out += [Segment("text", ","), Segment("break", str(OPTION_BREAK_MS))]
        out += _segments_of(words, language)
    if out:
        out.append(Segment("text", "."))
    if page + PAGE_SIZE < len(labels):
        out += [Segment("break", str(SENTENCE_BREAK_MS)), *_segments_of(localized("more_options", language), language)]
    return out


def join(*parts: list[Segment]) -> list[Segment]:
    """Join segment lists with a sentence pause between non-empty ones."""
    out: list[Segment] = []
    for part in parts:
        if not part:
            continue
        if out:
            out.append(Segment("break", str(SENTENCE_BREAK_MS)))
        out += part
    return out


@dataclass
class Rendered:
    """A reply made speech.

    Attributes:
        segments: the speech (see :func:`speech_of`).
        labels: the options' labels, ordered like the payloads they choose (empty: no new choices).
        end: the reply says goodbye (the call ends).
    """

    segments: list[Segment]
    labels: list[str]
    end: bool


def _bullets(text: str) -> tuple[str, list[str]]:
    lines = text.split("\n")
    items = [line.strip()[1:].strip() for line in lines if line.strip().startswith("•")]
    rest = "\n".join(line for line in lines if not line.strip().startswith("•"))
    return rest, items


def _title_of(file: dict[str, Any]) -> str:
    name = str(file.get("name") or "")
    return name.rsplit(".", 1)[0] if "." in name else name


def render(messages: list[dict[str, Any]], language: str, choices: list[str] | None = None) -> Rendered:
    """Turn the messages of one gateway reply into speech.

    Args:
        messages: the reply's messages as dicts (``text``, ``buttons`` [{title, payload}], ``image``,
            ``protected_input`` {kind}, ``file`` {name, …}, ``custom``).
        language: fr, de or en.
        choices: the payloads the latest choices answer, in number order (the conversation's
            ``last_choices`` after the turn); the options are read in that order. None: the buttons'
            order.

    Returns:
        The speech of the texts, then the first page of options, then the hint of a pending
        protected input; the labels of the options; whether the reply ends the call.
    """
    spoken: list[list[Segment]] = []
    by_payload: dict[str, str] = {}
    in_order: list[str] = []
    context = ""
    end = False
    hint = ""
    for message in messages:
        text = str(message.get("text") or "")
        buttons = [b for b in message.get("buttons") or [] if b.get("payload")]
        custom = message.get("custom") or {}
        end = end or bool(custom.get("end"))
        rest, items = _bullets(text)
        if buttons and len(items) == len(buttons):
            labels = items  # the full lines (title, type, date…) say more than the short button titles
            text = rest
        else:
            labels = [str(b.get("title") or "") for b in buttons]
        for button, label in zip(buttons, labels, strict=False):
            by_payload.setdefault(str(button["payload"]), label)
            in_order.append(str(button["payload"]))
        kind = (message.get("protected_input") or {}).get("kind")
        if kind:
            hint = {"pin_confirm": "pin", "password_confirm": ""}.get(kind, kind)
        if kind == "reset_token":
            pass  # nothing to paste on a call: the hint says what to do instead
        elif "/viewer/" in text:
            spoken.append(say([localized("viewer", language)], language))
        elif message.get("image"):
            study = sentences(clean(context, language))[0].rstrip(".") if context else ""
            spoken.append(say([localized("image", language, study=study) if study else
                               localized("image_alone", language)], language))
        elif text.strip():
            spoken.append(say([text], language))
            if not (message.get("file") or buttons or message.get("protected_input")):
                context = context or text
        if message.get("file"):
            spoken.append(say([localized("file", language, title=_title_of(message["file"]))], language))
    labels = [by_payload[p] for p in (choices or []) if p in by_payload] if choices else []
    if len(labels) != len(by_payload):
        labels = [by_payload[p] for p in dict.fromkeys(in_order)]
    hint_segments = say([localized(f"hint_{hint}", language)], language) if f"hint_{hint}" in VOICE_TEXTS else []
    return Rendered(segments=join(*spoken, hint_segments, options_segments(labels, language, 0)), labels=labels,
                    end=end)


def describe_page(labels: list[str], language: str, page: int) -> list[Segment]:
    """Return the speech of one page of options, or "no more choices" past the end."""
    if not labels:
        return _segments_of(localized("no_options", language), language)
    if page >= len(labels):
        return _segments_of(localized("no_more_options", language), language)
    return options_segments(labels, language, page)
