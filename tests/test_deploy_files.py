"""The cluster layout's files (deploy/) agree with what the services read.

No container engine runs here, so the compose file is checked as data: every variable Rasa's
`endpoints.yml` expands is set for both Rasa containers, every file the Dockerfile copies exists,
every service the compose file depends on is defined, and every variable the app containers get
is documented in `.env.example`.
"""

from __future__ import annotations

import re

import yaml

from tests.support import REPO

DEPLOY = REPO / "deploy"


def compose() -> dict:
    """The compose file, anchors resolved."""
    return yaml.safe_load((DEPLOY / "compose.yml").read_text(encoding="utf-8"))


def endpoint_variables() -> set[str]:
    """The `${VAR}` names Rasa expands in endpoints.yml."""
    text = (REPO / "endpoints.yml").read_text(encoding="utf-8")
    return set(re.findall(r"\$\{(\w+)\}", "\n".join(line.split("#")[0] for line in text.splitlines())))


def test_both_rasa_containers_set_every_endpoints_variable():
    services = compose()["services"]
    assert endpoint_variables() >= {"RASA_TRACKER_URL", "RASA_LOCK_STORE", "RASA_ACTION_ENDPOINT"}
    for name in ("rasa-1", "rasa-2"):
        environment = services[name]["environment"]
        missing = endpoint_variables() - set(environment)
        assert not missing, f"{name} lacks {sorted(missing)}"
        assert environment["RASA_LOCK_STORE"] == "redis"
        assert environment["RASA_TRACKER_URL"].startswith("postgresql://")


def test_the_gateway_spreads_over_both_rasa_and_every_dependency_is_defined():
    services = compose()["services"]
    assert services["gateway"]["environment"]["RASA_URLS"].split(",") == ["http://rasa-1:5005", "http://rasa-2:5005"]
    for name, service in services.items():
        for dependency in service.get("depends_on") or {}:
            assert dependency in services, f"{name} depends on unknown {dependency}"


def test_every_file_the_dockerfile_copies_exists():
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    sources = [word for line in dockerfile.splitlines() if line.startswith("COPY ")
               for word in line.split()[1:-1]]
    assert sources
    for source in sources:
        if source == "models/mydsp.tar.gz":  # built by `make model` before `docker build`
            continue
        assert (REPO / source).exists(), source


def test_every_app_variable_is_documented_in_env_example():
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (REPO / ".env.example").read_text(encoding="utf-8"),
                                re.MULTILINE))
    services = compose()["services"]
    used = set()
    for name in ("gateway", "actions", "migrate"):
        used |= set(services[name]["environment"])
    missing = used - documented - {"SANIC_HOST"}  # SANIC_HOST: the action server's bind address (launcher sets it)
    assert not missing, sorted(missing)
