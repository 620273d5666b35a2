"""Entry point of the Rasa server process: `python -m bot.rasa_main run ...` under Rasa's environment.

Installs the runtime fixes of `bot.rasa_runtime`, adds `--auth-token` from the environment
variable RASA_AUTH_TOKEN when it is set (so the token never appears on a command line, where `ps`
would show it), then hands over to Rasa's own command line (`rasa.__main__.main`). Run from the
repository root (or an image with `bot/` beside the model), so `config.yml`'s
`bot.nlu.components.EmergencyGuard` imports too.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    """Run Rasa's CLI with the fixes installed; exits with Rasa's status."""
    from bot.rasa_runtime import install

    install()
    sys.argv[0] = "rasa"
    token = os.environ.get("RASA_AUTH_TOKEN")
    if token and sys.argv[1:2] == ["run"]:
        sys.argv += ["--auth-token", token]
    from rasa.__main__ import main as rasa_main

    sys.exit(rasa_main())


if __name__ == "__main__":
    main()
