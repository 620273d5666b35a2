"""The test stories (tests/stories/, run by tests/test_rasa.py) cover every intent, form and task action.

Static check on the YAML only: no model, no service. `rasa test core` then checks each story.
"""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
#: Domain actions no story can show: slot validation (run inside forms), the ask-actions forms
#: call themselves, and Rasa's slot extraction hook.
NOT_STORY_ACTIONS = {"action_validate_slot_mappings", "action_ask_professional_id",
                     "action_ask_unblock_form_professional_id", "action_ask_holder_id",
                     # Run only as a follow-up of action_start_record_task (view_imaging answers inline).
                     "action_list_studies"}


def _domain() -> dict[str, list[str]]:
    intents, actions, forms = [], [], []
    for path in (REPO / "domain").rglob("*.yml"):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        intents += [i if isinstance(i, str) else next(iter(i)) for i in data.get("intents") or []]
        actions += data.get("actions") or []
        forms += list((data.get("forms") or {}).keys())
    return {"intents": intents, "actions": actions, "forms": forms}


def _stories() -> tuple[set[str], set[str], set[str]]:
    intents, actions, loops = set(), set(), set()
    for path in (REPO / "tests" / "stories").glob("*.yml"):
        for story in yaml.safe_load(path.read_text(encoding="utf-8"))["stories"]:
            for step in story["steps"]:
                if "intent" in step:
                    intents.add(step["intent"])
                if "action" in step:
                    actions.add(step["action"])
                if step.get("active_loop"):
                    loops.add(step["active_loop"])
    return intents, actions, loops


def test_every_intent_form_and_task_action_is_in_a_test_story() -> None:
    domain = _domain()
    intents, actions, loops = _stories()
    assert set(domain["intents"]) - intents == set(), "intents without a test story"
    assert set(domain["forms"]) - loops == set(), "forms without a test story"
    custom = {a for a in domain["actions"] if not a.startswith("validate_")} - NOT_STORY_ACTIONS
    assert custom - actions == set(), "actions without a test story"
