"""Static checks of the Rasa domain: every response in three languages, every name defined."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
LANGUAGES = {"fr", "de", "en"}


def load_domain() -> dict:
    merged: dict = {"responses": {}, "actions": [], "intents": [], "slots": {}, "forms": {}}
    for path in sorted((REPO / "domain").rglob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for key in merged:
            value = data.get(key)
            if isinstance(value, dict):
                merged[key].update(value)
            elif isinstance(value, list):
                merged[key].extend(value)
    return merged


def language_of(variation: dict) -> str | None:
    for condition in variation.get("condition") or []:
        if condition.get("name") == "language":
            return condition.get("value")
    return None


def test_every_response_exists_in_french_german_and_english():
    responses = load_domain()["responses"]
    assert responses
    for name, variations in responses.items():
        assert {language_of(v) for v in variations} == LANGUAGES, name


def test_buttons_and_protected_inputs_are_the_same_in_every_language():
    for name, variations in load_domain()["responses"].items():
        shapes = {}
        for variation in variations:
            extra = tuple((c.get("name"), c.get("value")) for c in variation.get("condition") or []
                          if c.get("name") != "language")
            shape = ([b["payload"] for b in variation.get("buttons") or []], str(variation.get("custom")))
            shapes.setdefault(extra, set()).add(repr(shape))
        for extra, found in shapes.items():
            assert len(found) == 1, (name, extra, found)


def test_every_response_named_in_code_and_rules_exists():
    responses = set(load_domain()["responses"])
    used = set()
    for path in list((REPO / "actions").glob("*.py")) + list((REPO / "data").rglob("*.yml")):
        used |= set(re.findall(r"\butter_[a-z_]+\b", path.read_text(encoding="utf-8")))
    used = {name for name in used if name not in {"utter_error", "utter_message", "utter_action"}
            and not name.endswith("_")}  # utter_action: the metadata key of bot events
    # Errors are named from codes at run time: every code the domain layer can raise has its response.
    from bot.dsp.errors import ERROR_CODES

    used |= {f"utter_err_{code}" for code in ERROR_CODES} | {"utter_err_internal"}
    missing = sorted(name for name in used if name not in responses)
    assert not missing, missing


def test_every_form_slot_has_a_question():
    domain = load_domain()
    known = set(domain["responses"]) | set(domain["actions"])
    for form, spec in domain["forms"].items():
        for slot in spec["required_slots"]:
            askers = {f"utter_ask_{form}_{slot}", f"utter_ask_{slot}", f"action_ask_{form}_{slot}",
                      f"action_ask_{slot}"}
            assert askers & known, (form, slot)


def test_every_error_code_raised_by_the_domain_is_listed():
    from bot.dsp.errors import ERROR_CODES, STAFF_ERROR_CODES

    raised = set()
    for path in (REPO / "bot" / "dsp").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        raised |= set(re.findall(r'(?:Error|Invalid|Rejected|Denied|Refused)\(\s*"([a-z_]+)"', text))
    known = ERROR_CODES | STAFF_ERROR_CODES  # staff codes are answered by the helpdesk console
    assert raised and raised <= known, raised - known


def test_protected_slots_ask_with_a_protected_input():
    responses = load_domain()["responses"]
    for form in load_domain()["forms"].values():
        for slot in form["required_slots"]:
            if slot.endswith("_ref") and slot != "upload_ref":  # a file is not a protected input
                for variation in responses[f"utter_ask_{slot}"]:
                    assert variation.get("custom", {}).get("protected_input", {}).get("kind"), slot


def test_generated_form_rules_are_up_to_date():
    import subprocess
    import sys

    assert subprocess.run([sys.executable, str(REPO / "scripts" / "gen_form_rules.py"), "--check"]).returncode == 0
