"""The runtime fix of Rasa's action-response validation (bot/rasa_runtime.py), run in Rasa's environment.

The patched validation must accept and refuse exactly what Rasa's own does, with the same error.
"""

from __future__ import annotations

import json
import subprocess

from bot.launcher import RASA_PYTHON, REPO_ROOT

SCRIPT = r"""
import json, sys
from jsonschema import ValidationError
from rasa.core.actions.action import RemoteAction
from rasa.utils.endpoints import EndpointConfig
import bot.rasa_runtime as runtime

action = RemoteAction("action_x", EndpointConfig("http://127.0.0.1:9"))
samples = [
    {"events": [{"event": "slot", "name": "a", "value": 1}], "responses": [{"text": "hi"}]},
    {"events": [], "responses": []},
    {"events": [{"event": "active_loop", "name": None}], "responses": []},
    {"events": "not a list", "responses": []},
    {"events": [{"event": "slot"}], "responses": []},
    {"events": [], "responses": ["not an object"]},
]

def outcomes():
    out = []
    for sample in samples:
        try:
            out.append(["ok", action._validate_action_result(sample)])
        except ValidationError as error:
            out.append(["error", error.message, list(error.absolute_path)])
    return out

before = outcomes()
original = RemoteAction._validate_action_result
runtime.install()
runtime.install()  # idempotent
after = outcomes()
print(json.dumps({"before": before, "after": after,
                  "patched": RemoteAction._validate_action_result is not original}))
"""


def test_patched_validation_accepts_and_refuses_like_rasa():
    done = subprocess.run([str(RASA_PYTHON), "-W", "ignore", "-c", SCRIPT], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["patched"]
    assert result["after"] == result["before"]
    assert [kind for kind, *_ in result["before"]] == ["ok", "ok", "ok", "error", "error", "error"]
