"""Designated assistants: switching to a holder's record, revocation at the next request, audit."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from dsp_helpers import Client
from dsp_session import log_in, patient_id
from sqlalchemy import select

import bot.dsp as dsp
from bot.dsp import DEMO_PATIENTS, UnitOfWork
from bot.dsp.errors import AccessDenied, AuthError, DspError, MatriculeInvalid
from bot.dsp.orm import AccessGrant, AuditEvent, LoginSession, Professional

REPO = Path(__file__).resolve().parents[2]
SCHMIT = DEMO_PATIENTS[0]  # letter only
HOFFMANN = DEMO_PATIENTS[2]  # holder; seeded: 2 granted, 1 blocked
GONCALVES = DEMO_PATIENTS[3]  # not designated by anyone
KAYSER = DEMO_PATIENTS[5]  # seeded: assistant of Marie Hoffmann


@pytest.fixture(autouse=True)
def demo():
    with UnitOfWork() as uow:
        dsp.seed_demo(uow)


def _err(fn, *args, **kwargs) -> DspError:
    with pytest.raises(DspError) as info:
        fn(*args, **kwargs)
    return info.value


def _names(found) -> list[str]:
    return [p.display_name for p in found]


def _revoke(holder=HOFFMANN, assistant=KAYSER) -> bool:
    with UnitOfWork() as uow:
        return dsp.revoke_assistant(uow, holder_matricule=holder.matricule, assistant_matricule=assistant.matricule)


def _designate(holder=HOFFMANN, assistant=KAYSER) -> bool:
    with UnitOfWork() as uow:
        return dsp.designate_assistant(
            uow, holder_matricule=holder.matricule, assistant_matricule=assistant.matricule
        )


def _audit_rows(action: str) -> list[AuditEvent]:
    with UnitOfWork() as uow:
        return list(uow.session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def _acting_for_column(client: Client) -> int | None:
    with UnitOfWork() as uow:
        return uow.session.scalars(
            select(LoginSession.acting_for_patient_id).where(
                LoginSession.conversation_id == client.cid, LoginSession.ended_at.is_(None)
            )
        ).one()


def test_assistant_acts_on_the_holder_record(client):
    kayser = log_in(client, KAYSER)
    hoffmann = patient_id(HOFFMANN)
    assert client.call(dsp.list_assisted) == [dsp.AssistedPerson(hoffmann, "Marie Hoffmann")]
    assert client.call(dsp.acting_for) is None
    assert client.call(dsp.list_access) == dsp.AccessOverview([], [])  # her own record

    assert client.call(dsp.act_for, hoffmann) == dsp.AssistedPerson(hoffmann, "Marie Hoffmann")
    assert client.call(dsp.acting_for) == dsp.AssistedPerson(hoffmann, "Marie Hoffmann")
    assert _acting_for_column(client) == hoffmann
    overview = client.call(dsp.list_access)
    assert _names(overview.granted) == ["Dr Anne Müller", "Dr Claudine Weber"]
    assert _names(overview.blocked) == ["Dr Gilles Klein"]

    # a decision made by the assistant is on the holder's record and names who made it
    thomas = client.call(dsp.search_professionals, "muller cardio")[0]
    assert client.call(dsp.grant_access, thomas.id).changed
    with UnitOfWork() as uow:
        row = uow.session.scalars(select(AccessGrant).where(AccessGrant.professional_id == thomas.id)).one()
        assert (row.patient_id, row.changed_by_patient_id) == (hoffmann, kayser)
        assert dsp.check_access(uow, thomas.id, hoffmann) is True
        assert dsp.check_access(uow, thomas.id, kayser) is False

    # the audit rows name both: the assistant acts, the holder's record is concerned
    switch = _audit_rows("assistant.switch")[-1]
    granted = _audit_rows("access.grant")[-1]
    listed = _audit_rows("access.list")[-1]
    for row in (switch, granted, listed):
        assert (row.actor_patient_id, row.patient_id, row.on_behalf_of, row.outcome) == (
            kayser, hoffmann, f"patient:{hoffmann}", "ok",
        )
    assert granted.object == f"professional:{thomas.id}"

    # the list of assisted persons does not depend on the switch
    assert _names(client.call(dsp.list_assisted)) == ["Marie Hoffmann"]
    assert client.call(dsp.person_name, hoffmann) == "Marie Hoffmann"
    assert client.call(dsp.person_name, kayser) == "Nora Kayser"

    assert client.call(dsp.act_for_self) is True
    assert client.call(dsp.act_for_self) is False
    assert client.call(dsp.acting_for) is None
    assert client.call(dsp.list_access) == dsp.AccessOverview([], [])
    back = _audit_rows("assistant.switch_back")[-1]
    assert (back.actor_patient_id, back.patient_id, back.on_behalf_of) == (kayser, hoffmann, f"patient:{hoffmann}")


def test_the_switch_belongs_to_one_session(client):
    log_in(client, KAYSER)
    client.call(dsp.act_for, patient_id(HOFFMANN))
    other = Client("conv-2")
    log_in(other, KAYSER)
    assert other.call(dsp.acting_for) is None
    assert other.call(dsp.list_access) == dsp.AccessOverview([], [])
    assert client.call(dsp.acting_for) is not None


def test_revoked_designation_is_refused_at_the_next_request(client):
    kayser = log_in(client, KAYSER)
    hoffmann = patient_id(HOFFMANN)
    client.call(dsp.act_for, hoffmann)
    assert client.call(dsp.list_access).granted

    assert _revoke() is True
    assert _revoke() is False
    error = _err(client.call, dsp.list_access)
    assert isinstance(error, AccessDenied) and error.code == "assistant_revoked"
    refused = _audit_rows("access.list")[-1]
    assert (refused.outcome, refused.actor_patient_id, refused.patient_id) == ("assistant_revoked", kayser, hoffmann)

    # the session falls back to the user's own record
    assert _acting_for_column(client) is None
    assert client.call(dsp.acting_for) is None
    assert client.call(dsp.list_access) == dsp.AccessOverview([], [])
    assert client.call(dsp.list_assisted) == []
    assert _err(client.call, dsp.act_for, hoffmann).code == "not_designated"
    assert _err(client.call, dsp.person_name, hoffmann).code == "not_designated"

    # a new designation works again
    assert _designate() is True
    assert client.call(dsp.act_for, hoffmann).patient_id == hoffmann


@pytest.mark.parametrize(
    ("service", "args"),
    [(dsp.search_professionals, ("muller",)), (dsp.acting_for, ()), (dsp.grant_access, (1,))],
    ids=["search", "acting_for", "grant"],
)
def test_every_record_service_checks_the_designation(client, service, args):
    log_in(client, KAYSER)
    client.call(dsp.act_for, patient_id(HOFFMANN))
    _revoke()
    assert _err(client.call, service, *args).code == "assistant_revoked"
    assert client.call(dsp.acting_for) is None


def test_switch_back_after_revocation(client):
    log_in(client, KAYSER)
    client.call(dsp.act_for, patient_id(HOFFMANN))
    _revoke()
    assert client.call(dsp.act_for_self) is True
    assert client.call(dsp.list_access) == dsp.AccessOverview([], [])


def test_not_designated_sees_nothing_of_the_other_record(client):
    goncalves = log_in(client, GONCALVES)
    hoffmann = patient_id(HOFFMANN)
    assert client.call(dsp.list_assisted) == []
    for holder in (hoffmann, goncalves, 999_999):
        error = _err(client.call, dsp.act_for, holder)
        assert isinstance(error, AccessDenied) and error.code == "not_designated"
    error = _err(client.call, dsp.person_name, hoffmann)
    assert error.code == "not_designated" and error.params == {}
    assert "Hoffmann" not in repr(error)
    assert client.call(dsp.acting_for) is None
    assert _acting_for_column(client) is None
    assert client.call(dsp.list_access) == dsp.AccessOverview([], [])
    refused = _audit_rows("assistant.switch")
    assert [(r.outcome, r.actor_patient_id, r.patient_id, r.object) for r in refused] == [
        ("not_designated", goncalves, goncalves, f"patient:{hoffmann}"),
        ("not_designated", goncalves, goncalves, f"patient:{goncalves}"),
        ("not_designated", goncalves, goncalves, "patient:999999"),
    ]
    assert all(r.on_behalf_of is None for r in refused)


def test_not_logged_in(client):
    hoffmann = patient_id(HOFFMANN)
    for service, args in (
        (dsp.list_assisted, ()),
        (dsp.act_for, (hoffmann,)),
        (dsp.act_for_self, ()),
        (dsp.acting_for, ()),
        (dsp.person_name, (hoffmann,)),
    ):
        error = _err(client.call, service, *args)
        assert isinstance(error, AuthError) and error.code == "not_logged_in"


def test_terms_pending(client):
    log_in(client, GONCALVES, accept_terms=False)
    assert _err(client.call, dsp.list_assisted).code == "terms_pending"


def test_idle_session_ends_the_switch(client, fake_clock):
    log_in(client, KAYSER)
    hoffmann = patient_id(HOFFMANN)
    client.call(dsp.act_for, hoffmann)
    fake_clock.advance(30 * 60 + 1)
    assert _err(client.call, dsp.list_access).code == "not_logged_in"
    assert _err(client.call, dsp.acting_for).code == "not_logged_in"
    log_in(client, KAYSER)
    assert client.call(dsp.acting_for) is None  # a new login starts on the user's own record


def test_designation_administration():
    assert _designate() is False  # seeded already
    assert _designate(GONCALVES, KAYSER) is True
    assert _designate(GONCALVES, KAYSER) is False
    with pytest.raises(ValueError):
        _designate(KAYSER, KAYSER)
    with pytest.raises(MatriculeInvalid):
        _designate(HOFFMANN, type("P", (), {"matricule": "123"})())
    unknown = type("P", (), {"matricule": dsp.generate_matricule(HOFFMANN.birth_date, 999)})()
    with pytest.raises(LookupError):
        _revoke(HOFFMANN, unknown)
    with UnitOfWork() as uow:
        assert dsp.designation_in_force(uow, patient_id(GONCALVES), patient_id(KAYSER))
        assert not dsp.designation_in_force(uow, patient_id(KAYSER), patient_id(GONCALVES))
    rows = _audit_rows("assistant.designate")
    assert [(r.actor, r.outcome) for r in rows[-3:]] == [("cli", "unchanged"), ("cli", "ok"), ("cli", "unchanged")]
    assert rows[-2].patient_id == patient_id(GONCALVES) and rows[-2].object == f"patient:{patient_id(KAYSER)}"


def test_seed_is_idempotent_and_keeps_later_changes(client):
    log_in(client, HOFFMANN)
    klein = client.call(dsp.search_professionals, "klein")[0].id
    client.call(dsp.unblock_access, klein)
    _revoke()
    with UnitOfWork() as uow:
        dsp.seed_demo(uow)
    with UnitOfWork() as uow:
        assert uow.session.scalars(select(AccessGrant).where(AccessGrant.professional_id == klein)).first() is None
        assert not dsp.designation_in_force(uow, patient_id(HOFFMANN), patient_id(KAYSER))
        assert uow.session.scalars(select(Professional).where(Professional.family_name == "Weiß")).one()


def _dsp(env_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "DSP_STATE_DIR": str(env_dir), "HOME": str(env_dir)}
    return subprocess.run(
        [sys.executable, "-m", "bot.dsp.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_designate_assistant(tmp_path):
    state = tmp_path / "cli"
    assert _dsp(state, "seed-demo").returncode == 0
    args = ("designate-assistant", "--holder", SCHMIT.matricule, "--assistant", GONCALVES.matricule)
    outputs = []
    for extra in ((), (), ("--revoke",), ("--revoke",)):
        done = _dsp(state, *args, *extra)
        assert done.returncode == 0, done.stderr
        outputs.append(json.loads(done.stdout))
        assert "Schmit" not in done.stdout and "Gonçalves" not in done.stdout
    assert [o["status"] for o in outputs] == ["designated", "already_designated", "revoked", "not_designated"]
    bad = _dsp(state, "designate-assistant", "--holder", "123", "--assistant", GONCALVES.matricule)
    assert bad.returncode == 2 and "matricule_format" in bad.stderr
    same = _dsp(state, "designate-assistant", "--holder", SCHMIT.matricule, "--assistant", SCHMIT.matricule)
    assert same.returncode == 2 and same.stderr
    audit = [json.loads(line) for line in _dsp(state, "audit", "--last", "4").stdout.splitlines()]
    assert [(a["actor"], a["action"]) for a in audit] == [
        ("cli", "assistant.designate"), ("cli", "assistant.designate"),
        ("cli", "assistant.revoke"), ("cli", "assistant.revoke"),
    ]
    listed = json.loads(_dsp(state, "demo-patients").stdout)
    kayser = next(p for p in listed if p["matricule"] == KAYSER.matricule)
    assert kayser["assistant_of"] == ["Marie Hoffmann"] and kayser["password"] == dsp.DEMO_PASSWORD
