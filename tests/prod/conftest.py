"""The production layout for the tests of this package: PostgreSQL, Redis, two Rasa instances.

`services` is overridden here (package scope): the same contract as the embedded fixture of
`tests/conftest.py`, but backed by `Services(layout="prod")` — PostgreSQL and Redis started by the
tests from Debian's packages on free loopback ports (`bot.infra`), two Rasa instances sharing the
PostgreSQL tracker store and the Redis lock store, two action servers, the gateway with two
workers. Stopped (servers included) when the package's tests are done.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Running
from tests.support import RasaTracker, free_port, test_env


@dataclass
class ProdRunning(Running):
    """The running production layout: the embedded fixture's fields plus the Rasa URLs."""

    rasa_urls: tuple[str, ...] = ()
    tracker_url: str = ""


@pytest.fixture(scope="package")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProdRunning]:
    """Start the production layout with fresh PostgreSQL and Redis servers; stop everything at the end."""
    from bot.launcher import Services

    state_dir = tmp_path_factory.mktemp("prod-state")
    password = "pw-" + uuid.uuid4().hex[:12]
    pg_port, redis_port = free_port(), free_port()
    env = test_env(state_dir)
    extra = {
        "DSP_STATE_DIR": env["DSP_STATE_DIR"],
        "GATEWAY_API_KEY": env["GATEWAY_API_KEY"],
        "DSP_DATABASE_URL": f"postgresql+psycopg://mydsp:{password}@127.0.0.1:{pg_port}/mydsp",
        "RASA_TRACKER_URL": f"postgresql://mydsp:{password}@127.0.0.1:{pg_port}/mydsp_rasa",
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "RASA_AUTH_TOKEN": "rasa-test-token",
        "DSP_UPLOAD_MAX_MB": "1",
    }
    env.update(extra)
    svc = Services(layout="prod", gateway_port=free_port(), rasa_ports=[free_port(), free_port()],
                   actions_ports=[free_port(), free_port()], env=extra, telegram=False)
    svc.start(timeout_s=600)
    try:
        rasa_urls = tuple(svc.rasa_urls)
        yield ProdRunning(svc.gateway_url, rasa_urls[0], extra["GATEWAY_API_KEY"], env, state_dir,
                          RasaTracker(rasa_urls[-1], extra["RASA_AUTH_TOKEN"]),
                          f"http://127.0.0.1:{svc.actions_ports[0]}", launcher=svc, rasa_urls=rasa_urls,
                          tracker_url=extra["RASA_TRACKER_URL"])
    finally:
        clusters = [Path(h.cluster_dir) for h in svc.stores.values() if getattr(h, "cluster_dir", None)]
        svc.stop()
        for cluster in clusters:  # throw-away servers: as root they live outside the tmp dir
            shutil.rmtree(cluster, ignore_errors=True)
