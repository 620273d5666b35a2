"""Command line ``dsp``: database, demo data, letters, outbox, audit, assistants, DICOM, helpdesk agents (JSON)."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bot.dsp.accounts import issue_letter, normalize_email, normalize_phone
from bot.dsp.assistants import designate_assistant, revoke_assistant
from bot.dsp.db import init_db
from bot.dsp.demo import DEMO_ASSISTANTS, DEMO_PASSWORD, DEMO_PATIENTS, seed_demo
from bot.dsp.errors import DspError
from bot.dsp.helpdesk import add_agent
from bot.dsp.imaging import import_dicom
from bot.dsp.orm import AuditEvent, OutboxMessage
from bot.dsp.uow import UnitOfWork


def _iso(value: datetime) -> str:
    return value.replace(tzinfo=UTC).isoformat()


def _message_json(row: OutboxMessage) -> dict[str, Any]:
    return {
        "body": row.body,
        "subject": row.subject,
        "channel": row.channel,
        "to": row.to_address,
        "sent_at": _iso(row.created_at),
    }


def _addresses(raw: str) -> set[str]:
    candidates = {raw.strip()}
    for normalize in (normalize_email, normalize_phone):
        try:
            candidates.add(normalize(raw))
        except DspError:
            pass
    return candidates


def _cmd_init_db(_args: argparse.Namespace) -> int:
    init_db()
    return 0


def _cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Migrate ``DSP_DATABASE_URL`` to a revision (default head); prints ``{"revision": "..."}``."""
    from bot import schema

    schema.upgrade(revision=args.revision)
    print(json.dumps({"revision": schema.current()}))
    return 0


def _cmd_db_current(_args: argparse.Namespace) -> int:
    """Print the database's revision and the code's head: ``{"revision": ..., "head": ...}`` (no URL)."""
    from bot import schema

    print(json.dumps({"revision": schema.current(), "head": schema.head()}))
    return 0


def _cmd_seed_demo(_args: argparse.Namespace) -> int:
    with UnitOfWork() as uow:
        seed_demo(uow)
    return 0


def _cmd_demo_patients(_args: argparse.Namespace) -> int:
    """Print the demo patients (fictitious) with what the walkthrough needs, as a JSON list."""
    rows = [
        {"name": f"{p.given_name} {p.family_name}", "state": p.state, "matricule": p.matricule,
         "activation_code": p.activation_code if p.state == "issued" else None,
         "password": DEMO_PASSWORD if p.state == "activated" else None, "email": p.email, "phone": p.phone,
         "assistant_of": [f"{h.given_name} {h.family_name}" for h, a in DEMO_ASSISTANTS if a == p]}
        for p in DEMO_PATIENTS
    ]
    print(json.dumps(rows, ensure_ascii=False, indent=1))
    return 0


def _cmd_designate_assistant(args: argparse.Namespace) -> int:
    """Designate (or with ``--revoke`` revoke) an assistant; audited with actor ``cli``.

    Prints a JSON confirmation without names; a refused input exits with status 2.
    """
    try:
        with UnitOfWork() as uow:
            if args.revoke:
                done = revoke_assistant(uow, holder_matricule=args.holder, assistant_matricule=args.assistant)
                status = "revoked" if done else "not_designated"
            else:
                done = designate_assistant(uow, holder_matricule=args.holder, assistant_matricule=args.assistant)
                status = "designated" if done else "already_designated"
    except DspError as error:
        print(f"dsp designate-assistant: refused: {error.code}", file=sys.stderr)
        return 2
    except (LookupError, ValueError) as error:
        print(f"dsp designate-assistant: refused: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"status": status}))
    return 0


def _cmd_import_dicom(args: argparse.Namespace) -> int:
    """Import DICOM files or folders into a patient's record; audited with actor ``cli``.

    Prints ``{"studies": n, "instances": n, "refused": [[file name, code], ...]}`` (no header value);
    a refused input (matricule, unknown patient or author, missing path) exits with status 2.
    """
    try:
        with UnitOfWork() as uow:
            result = import_dicom(
                uow, [Path(path) for path in args.paths], args.matricule, actor="cli",
                report=Path(args.report) if args.report else None, report_author_id=args.report_author,
            )  # fmt: skip
    except DspError as error:
        print(f"dsp import-dicom: refused: {error.code}", file=sys.stderr)
        return 2
    except (LookupError, ValueError, OSError) as error:
        print(f"dsp import-dicom: refused: {error}", file=sys.stderr)
        return 2
    print(json.dumps(
        {"studies": result.studies, "instances": result.instances, "refused": [list(item) for item in result.refused]},
        ensure_ascii=False,
    ))  # fmt: skip
    return 0


def _cmd_add_agent(args: argparse.Namespace) -> int:
    """Create a helpdesk agent for the console; the password comes from a no-echo prompt or stdin.

    Prints ``{"id": n, "username": "..."}``; a refused input (name taken or invalid, password policy,
    the two prompts differ) exits with status 2.
    """
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Mot de passe de l'agent : ")
        if getpass.getpass("Confirmez le mot de passe : ") != password:
            print("dsp add-agent: refused: password_mismatch", file=sys.stderr)
            return 2
    try:
        with UnitOfWork() as uow:
            agent_id = add_agent(uow, args.username, args.name, password, actor="cli")
    except DspError as error:
        print(f"dsp add-agent: refused: {error.code}", file=sys.stderr)
        return 2
    print(json.dumps({"id": agent_id, "username": args.username.strip().lower()}))
    return 0


def _cmd_issue_letter(args: argparse.Namespace) -> int:
    with UnitOfWork() as uow:
        letter = issue_letter(
            uow, email=args.email, phone=args.phone, given_name=args.given_name, family_name=args.family_name
        )
    print(json.dumps({"matricule": letter.matricule, "activation_code": letter.activation_code}))
    return 0


def _cmd_outbox(args: argparse.Namespace) -> int:
    with UnitOfWork() as uow:
        rows = [
            _message_json(row)
            for row in uow.session.scalars(
                select(OutboxMessage)
                .where(func.lower(OutboxMessage.to_address).in_({a.lower() for a in _addresses(args.to)}))
                .order_by(OutboxMessage.id)
            )
        ]
    if not rows:
        print("dsp outbox: no message for that address", file=sys.stderr)
        return 1
    if args.last:
        print(json.dumps(rows[-1], ensure_ascii=False))
    else:
        print(json.dumps(rows, ensure_ascii=False))
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    with UnitOfWork() as uow:
        rows = list(uow.session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(args.last)))
        lines = [
            json.dumps(
                {
                    "id": row.id,
                    "at": _iso(row.at),
                    "actor": row.actor,
                    "actor_patient_id": row.actor_patient_id,
                    "on_behalf_of": row.on_behalf_of,
                    "patient_id": row.patient_id,
                    "action": row.action,
                    "object": row.object,
                    "outcome": row.outcome,
                    "detail": row.detail,
                },
                ensure_ascii=False,
            )
            for row in reversed(rows)
        ]
    for line in lines:
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``dsp``."""
    parser = argparse.ArgumentParser(prog="dsp", description="DSP domain layer tools (embedded setup).")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("init-db", help="create or migrate the tables (same as: db upgrade)").set_defaults(
        func=_cmd_init_db
    )
    db = sub.add_parser("db", help="schema migrations of DSP_DATABASE_URL (Alembic)")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser("upgrade", help="migrate to the newest revision (safe to run concurrently)")
    upgrade.add_argument("revision", nargs="?", default="head", help="target revision (default: head)")
    upgrade.set_defaults(func=_cmd_db_upgrade)
    db_sub.add_parser("current", help="print the database's revision and the code's head").set_defaults(
        func=_cmd_db_current
    )
    sub.add_parser("seed-demo", help="insert demo professionals and patients").set_defaults(
        func=_cmd_seed_demo
    )
    sub.add_parser("demo-patients", help="list the demo patients (fictitious) as JSON").set_defaults(
        func=_cmd_demo_patients
    )
    letter = sub.add_parser("issue-letter", help="create a patient with an activation letter")
    letter.add_argument("--email")
    letter.add_argument("--phone")
    letter.add_argument("--given-name")
    letter.add_argument("--family-name")
    letter.set_defaults(func=_cmd_issue_letter)
    outbox = sub.add_parser("outbox", help="show messages sent to an address")
    outbox.add_argument("--to", required=True, help="e-mail address or phone number")
    outbox.add_argument("--last", action="store_true", help="only the last message")
    outbox.set_defaults(func=_cmd_outbox)
    audit = sub.add_parser("audit", help="show the last audit events as JSON lines")
    audit.add_argument("--last", type=int, default=20)
    audit.set_defaults(func=_cmd_audit)
    assistant = sub.add_parser("designate-assistant", help="designate (or revoke) a patient's assistant")
    assistant.add_argument("--holder", required=True, help="matricule of the holder (titulaire)")
    assistant.add_argument("--assistant", required=True, help="matricule of the assistant")
    assistant.add_argument("--revoke", action="store_true", help="revoke the designation instead")
    assistant.set_defaults(func=_cmd_designate_assistant)
    dicom = sub.add_parser("import-dicom", help="import DICOM files or folders into a patient's record")
    dicom.add_argument("paths", nargs="+", metavar="PATH", help="a DICOM file or a folder of DICOM files")
    dicom.add_argument("--matricule", required=True, help="matricule of the holder (titulaire)")
    dicom.add_argument("--report", help="the study's report (PDF or UTF-8 text), filed in the record's documents")
    dicom.add_argument("--report-author", type=int, help="internal id of the professional who wrote the report "
                       "(default: the reading physician named in the files, if the directory has them)")
    dicom.set_defaults(func=_cmd_import_dicom)
    agent = sub.add_parser("add-agent", help="create a helpdesk agent for the console (password prompted, never argv)")
    agent.add_argument("--username", required=True, help="sign-in name (a-z, 0-9, . _ -)")
    agent.add_argument("--name", required=True, help="display name shown to colleagues and users")
    agent.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    agent.set_defaults(func=_cmd_add_agent)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dsp`` command line.

    Returns:
        The exit status (0 on success, 1 when nothing was found or an input was refused).
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except DspError as error:
        print(f"dsp: refused: {error.code}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
