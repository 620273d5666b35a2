"""Run `rasa data validate --fail-on-warnings` and fail on any warning it prints.

One kind of warning is explained rather than fatal: "The utterance 'utter_x' is not used in any
story or rule" for a response that a custom action sends (Rasa 3.6 only looks at stories and
rules). It is accepted only when the response really is sent by code: its name appears in
`actions/`, it is `utter_err_<code>` for an error code of `bot/dsp/errors.py`, or it is the
`utter_ask_<slot>` or `utter_ask_<form>_<slot>` of a form's slot. Anything else fails.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RASA = ROOT / ".venv-rasa" / "bin" / "rasa"
UNUSED = re.compile(r"The utterance '(utter_[a-z0-9_]+)' is not used in any story or rule")


def sent_by_code() -> set[str]:
    """Return the response names that actions, error codes and forms send."""
    names: set[str] = set()
    for path in (ROOT / "actions").glob("*.py"):
        names |= set(re.findall(r"\butter_[a-z0-9_]+", path.read_text(encoding="utf-8")))
    sys.path.insert(0, str(ROOT))
    from bot.dsp.errors import ERROR_CODES

    names |= {f"utter_err_{code}" for code in ERROR_CODES}
    names.add("utter_err_internal")
    import yaml

    forms = yaml.safe_load((ROOT / "domain" / "slots_forms.yml").read_text(encoding="utf-8"))["forms"]
    for form, spec in forms.items():
        for slot in spec.get("required_slots", []):
            names |= {f"utter_ask_{slot}", f"utter_ask_{form}_{slot}"}
    return names


def main() -> int:
    """Validate; print the warnings that are not explained; exit 1 if any."""
    result = subprocess.run(
        [str(RASA), "data", "validate", "--domain", "domain", "--data", "data", "--config", "config.yml",
         "--fail-on-warnings"],
        cwd=ROOT, capture_output=True, text=True,
    )
    output = result.stdout + result.stderr
    allowed = sent_by_code()
    problems = []
    explained = 0
    for line in output.splitlines():
        if "UserWarning" not in line and " WARNING " not in line:
            continue
        match = UNUSED.search(line)
        if match and match.group(1) in allowed:
            explained += 1
            continue
        problems.append(line.strip())
    if result.returncode != 0 or problems:
        print(output[-4000:] if result.returncode != 0 else "")
        print("\n".join(problems) or f"rasa data validate exited with {result.returncode}")
        return 1
    print(f"rasa data validate: no warnings ({explained} responses sent by custom actions, checked against the code)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
