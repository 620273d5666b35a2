"""Emergency recognition (bot/nlu/safety.py): what must give 112, and what must not."""

from __future__ import annotations

import pytest

from bot.nlu.safety import emergency_span, is_emergency, normalise

EMERGENCIES = [
    "aidez-moi mon père ne respire plus",
    "IL NE RESPIRE PLUS",
    "ma femme a perdu connaissance dans la cuisine",
    "je crois que je fais une crise cardiaque",
    "mon fils a avalé plein de médicaments",
    "appelez une ambulance svp",
    "mein Vater atmet nicht mehr",
    "meine Frau ist bewusstlos",
    "ich glaube ich habe einen Herzinfarkt",
    "Mein Sohn hat zu viele Tabletten genommen",
    "my dad isn't breathing",
    "my wife collapsed and won't wake up",
    "I think I'm having a heart attack",
    "the kid swallowed a bottle of pills",
    "o meu pai não respira",
    "meng Mamm otemt net méi",
]

NOT_EMERGENCIES = [
    "c'est urgent, je n'arrive pas à me connecter",
    "en cas d'urgence, un médecin peut-il voir mon DSP ?",
    "im Notfall, kann der Arzt meine Akte sehen?",
    "emergency access to my record, how does it work",
    "my matricule is 1985011212345",
    "j'ai mal au dos depuis une semaine",
    "I can't log in, the app keeps crashing",
    "Ich komme nicht in meine Akte",
    "/refuse_terms",
]


@pytest.mark.parametrize("text", EMERGENCIES)
def test_emergencies_are_recognised(text):
    assert is_emergency(text)


@pytest.mark.parametrize("text", NOT_EMERGENCIES)
def test_app_requests_and_plain_medical_questions_are_not_emergencies(text):
    assert not is_emergency(text)


def test_the_span_points_at_the_phrase_in_the_normalised_text():
    text = "Aidez-moi, mon père NE RESPIRE plus !"
    start, end = emergency_span(text)
    assert normalise(text)[start:end] == "ne respire plus"


def test_normalise_removes_accents_case_and_extra_spaces():
    assert normalise("  Ohnmächtig   GEWORDEN’s ") == "ohnmachtig geworden's"
