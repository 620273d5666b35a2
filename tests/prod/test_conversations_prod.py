"""The foundation's conversation tests, run a second time against the production layout.

Every test of `tests/test_conversations.py` runs here unchanged; the `services` fixture of this
package (see conftest.py) gives them PostgreSQL (DSP database and Rasa's tracker store), Redis
(Rasa's lock store, the gateway's conversation locks), two Rasa instances and two gateway workers.
"""

from __future__ import annotations

from tests.test_conversations import *  # noqa: F403  (the same tests, collected again here)
