"""Runtime fixes applied inside the Rasa server process (Rasa's own environment, Python 3.10).

`install()` runs before `rasa run` starts: `bot.rasa_main`, which the launcher and the image start.

Action-server responses: Rasa 3.6 checks every response of the action server with
`jsonschema.validate(result, RemoteAction.action_response_format_spec())`. That convenience
function first validates the *schema itself* against the JSON Schema meta-schema, on every call;
with Rasa's events schema this costs about 100 ms of CPU per custom-action call (measured with
cProfile on 2026-12-01: 5.5 s of 7.6 s for 30 turns, i.e. most of a turn's time). The fix is the
usual one: check the schema once, keep the compiled validator, and validate each response with it.
Responses are validated exactly as before (the same schema, the same best-matching error, the same
message appended), so a malformed response still fails the same way.
"""

from __future__ import annotations

import json
from typing import Any

_PATCHED = "_mydsp_cached_validator"


def install() -> None:
    """Replace `RemoteAction._validate_action_result` with a cached-validator version (idempotent).

    Raises:
        ImportError: Rasa or jsonschema is not importable (not in Rasa's environment).
    """
    from jsonschema import ValidationError  # noqa: F401  (the error type callers catch)
    from jsonschema.exceptions import best_match
    from jsonschema.validators import validator_for
    from rasa.core.actions.action import DOCS_BASE_URL, RemoteAction

    if getattr(RemoteAction._validate_action_result, _PATCHED, False):
        return
    validators: dict[str, Any] = {}

    def _validate_action_result(self: RemoteAction, result: dict[str, Any]) -> bool:
        schema = self.action_response_format_spec()
        key = json.dumps(schema, sort_keys=True)
        validator = validators.get(key)
        if validator is None:
            cls = validator_for(schema)
            cls.check_schema(schema)
            validator = validators[key] = cls(schema)
        error = best_match(validator.iter_errors(result))
        if error is not None:
            error.message += (
                ". Failed to validate Action server response from API, make sure your response from "
                f"the Action endpoint is valid. For more information about the format visit "
                f"{DOCS_BASE_URL}/custom-actions"
            )
            raise error
        return True

    setattr(_validate_action_result, _PATCHED, True)
    RemoteAction._validate_action_result = _validate_action_result
