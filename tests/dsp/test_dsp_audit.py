import json
import subprocess
import sys
from pathlib import Path

import pytest
from dsp_helpers import Client, code_in, last_message
from sqlalchemy import select, text
from sqlalchemy.exc import DatabaseError

import bot.dsp as dsp
from bot.dsp import DEMO_PASSWORD, DEMO_PATIENTS, DspError, UnitOfWork, get_engine
from bot.dsp.orm import AuditEvent, AuditTamperingError

REPO = Path(__file__).resolve().parents[2]


def _err(fn, *args, **kwargs) -> DspError:
    with pytest.raises(DspError) as info:
        fn(*args, **kwargs)
    return info.value


def test_audit_rows_hold_no_secret(client, caplog):
    caplog.set_level("DEBUG")
    email, password, new_password = "zoe.kieffer@example.org", "Zoe-secret-phrase-1", "Zoe-new-phrase-2026"
    with UnitOfWork() as uow:
        letter = dsp.issue_letter(uow, given_name="Zoé", family_name="Kieffer")
    m = letter.matricule
    _err(
        client.call,
        dsp.verify_activation_code,
        client.ref("matricule", m),
        client.ref("activation_code", "WRONGCOD"),
    )
    client.call(
        dsp.begin_activation,
        matricule_ref=client.ref("matricule", m),
        code_ref=client.ref("activation_code", letter.activation_code),
        password_ref=client.ref("password", password),
        channel="email",
        address_ref=client.ref("email", email),
        language="en",
    )
    otp1 = code_in(last_message(email).body)
    client.call(
        dsp.complete_activation, matricule_ref=client.ref("matricule", m), otp_ref=client.ref("otp", otp1)
    )
    _err(
        client.call,
        dsp.begin_login,
        matricule_ref=client.ref("matricule", m),
        password_ref=client.ref("password", "Zoe-wrong-guess"),
    )
    client.call(
        dsp.begin_login,
        matricule_ref=client.ref("matricule", m),
        password_ref=client.ref("password", password),
    )
    otp2 = code_in(last_message(email).body)
    client.call(dsp.complete_login, matricule_ref=client.ref("matricule", m), otp_ref=client.ref("otp", otp2))
    client.call(dsp.set_pin, pin_ref=client.ref("pin", "4821"), confirm_ref=client.ref("pin", "4821"))
    client.call(
        dsp.request_password_reset,
        matricule_ref=client.ref("matricule", m),
        email_ref=client.ref("email", email),
    )
    token = last_message(email).body.split("token=")[1].split()[0]
    client.call(
        dsp.complete_password_reset,
        token_ref=client.ref("reset_token", token),
        password_ref=client.ref("password", new_password),
    )

    with UnitOfWork() as uow:
        rows = list(uow.session.scalars(select(AuditEvent)))
        dump = json.dumps(
            [[r.actor, r.on_behalf_of, r.patient_id, r.action, r.outcome, r.detail] for r in rows],
            ensure_ascii=False,
        )
    actions = {r.action for r in rows}
    expected = {"activation.verify_code", "activation.begin", "activation.complete", "login.password"}
    expected |= {"login.otp", "pin.set", "password_reset.request", "password_reset.complete"}
    assert expected <= actions
    assert any(r.outcome == "password_wrong" for r in rows)
    secrets = [m, m[:11], letter.activation_code, "WRONGCOD", password, new_password, "Zoe-wrong-guess",
               email, "zoe.kieffer", otp1, otp2, "4821", token, "Zoé", "Kieffer", client.cid]  # fmt: skip
    logs = caplog.text
    for secret in secrets:
        assert secret not in dump, secret
        assert secret not in logs, secret


def test_audit_is_append_only():
    with UnitOfWork() as uow:
        dsp.audit.record(uow, actor="test", action="x", outcome="ok")
        uow.commit()
    with get_engine().connect() as connection:
        for statement in ("UPDATE audit_events SET outcome = 'changed'", "DELETE FROM audit_events"):
            with pytest.raises(DatabaseError, match="append-only"):
                connection.execute(text(statement))
            connection.rollback()
    with UnitOfWork() as uow:
        row = uow.session.scalars(select(AuditEvent)).one()
        row.outcome = "changed"
        with pytest.raises(AuditTamperingError):
            uow.session.flush()
    with UnitOfWork() as uow:
        row = uow.session.scalars(select(AuditEvent)).one()
        uow.session.delete(row)
        with pytest.raises(AuditTamperingError):
            uow.session.flush()
    with UnitOfWork() as uow:
        assert uow.session.scalars(select(AuditEvent)).one().outcome == "ok"


def _dsp(env_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "DSP_STATE_DIR": str(env_dir), "HOME": str(env_dir)}
    return subprocess.run(
        [sys.executable, "-m", "bot.dsp.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_issue_letter_and_outbox(tmp_path):
    state = tmp_path / "cli"
    done = _dsp(state, "issue-letter", "--email", "cli.user@example.org", "--given-name", "Ana")
    assert done.returncode == 0, done.stderr
    letter = json.loads(done.stdout)
    assert list(letter) == ["matricule", "activation_code"]
    assert dsp.normalize_matricule(letter["matricule"]) == letter["matricule"]

    none = _dsp(state, "outbox", "--to", "cli.user@example.org", "--last")
    assert none.returncode == 1 and none.stdout == "" and none.stderr

    # drive an activation in-process against the same database, then read the code with the CLI
    import os

    os.environ["DSP_STATE_DIR"] = str(state)
    os.environ["DSP_DATABASE_URL"] = f"sqlite:///{state / 'dsp.sqlite3'}"
    dsp.get_settings.cache_clear()
    dsp.reset_engine()
    try:
        client = Client("cli-conv")
        client.call(
            dsp.begin_activation,
            matricule_ref=client.ref("matricule", letter["matricule"]),
            code_ref=client.ref("activation_code", letter["activation_code"]),
            password_ref=client.ref("password", "Cli-phrase-de-passe"),
            channel="email",
            address_ref=client.ref("email", "cli.user@example.org"),
            language="fr",
        )
    finally:
        dsp.reset_engine()
    shown = _dsp(state, "outbox", "--to", "cli.user@example.org", "--last")
    assert shown.returncode == 0, shown.stderr
    message = json.loads(shown.stdout)
    assert list(message) == ["body", "subject", "channel", "to", "sent_at"]
    assert message["channel"] == "email" and len(code_in(message["body"])) == 6
    listing = json.loads(_dsp(state, "outbox", "--to", "CLI.user@example.org").stdout)
    assert isinstance(listing, list) and len(listing) == 1

    audit = _dsp(state, "audit", "--last", "2")
    lines = [json.loads(line) for line in audit.stdout.splitlines()]
    assert len(lines) == 2 and lines[-1]["action"] == "activation.begin"

    assert _dsp(state, "seed-demo").returncode == 0
    login = _dsp(state, "init-db")
    assert login.returncode == 0 and login.stdout == ""


def test_demo_password_documented():
    assert DEMO_PASSWORD == "Demo-Mot-de-Passe-2026"
    assert len({p.matricule for p in DEMO_PATIENTS}) == len(DEMO_PATIENTS)


def test_cli_lists_the_demo_patients_and_seeding_makes_them_real(tmp_path):
    state = tmp_path / "demo"
    assert _dsp(state, "seed-demo").returncode == 0
    listed = json.loads(_dsp(state, "demo-patients").stdout)
    assert {p["state"] for p in listed} == {"issued", "activated", "locked"}
    assert all(dsp.normalize_matricule(p["matricule"]) == p["matricule"] for p in listed)
    activated = next(p for p in listed if p["state"] == "activated" and p["email"])
    assert activated["password"] == dsp.DEMO_PASSWORD
