"""Take the README's screenshots of the helpdesk console: docs/helpdesk-queue.png and docs/helpdesk-ticket.png.

Runs only the gateway (uvicorn) on a throw-away SQLite database filled with fictitious tickets (the
queue and ticket pages need no Rasa), signs in with the system Chromium through Playwright, and saves
the two pages. Usage::

    .venv/bin/python scripts/console_screenshots.py [--out docs]

Environment: ``CHROMIUM`` (default ``/usr/bin/chromium``).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
AGENT = ("claire.weber", "Claire Weber", "Helpdesk-Console-Demo-2026")
COLLEAGUE = ("marc.schmit", "Marc Schmit", "Helpdesk-Console-Demo-2027")

#: (conversation, language, intent, reason, minutes ago, transcript, tried) — fictitious people and texts.
TICKETS = [
    ("tg-5550101", "fr", "block_access", "asked", 12, [
        ("user", "Je veux bloquer l'accès d'un médecin à mon dossier, tout de suite"),
        ("assistant", "Je peux bloquer l'accès d'un professionnel de santé. D'abord, connectez-vous : "
                      "quel est votre matricule ?"),
        ("user", "[protected answer]"),
        ("assistant", "Un code à usage unique a été envoyé à a***@example.lu."),
        ("user", "je n'ai rien reçu, je veux parler à quelqu'un"),
    ], ["form:login_form", "form:block_form"]),
    ("term-7f3a", "de", "log_in", "account_locked", 35, [
        ("user", "Ich kann mich nicht mehr anmelden"),
        ("assistant", "Ihr Konto ist nach zu vielen Versuchen gesperrt. Der Helpdesk kann es entsperren."),
        ("user", "[choice: open_ticket]"),
    ], ["form:login_form", "error:account_locked"]),
    ("tg-5550188", "fr", "reset_password", "no_email", 50, [
        ("user", "j'ai oublié mon mot de passe et je n'ai pas d'adresse mail"),
        ("assistant", "Pour réinitialiser le mot de passe, il faut une adresse e-mail liée au compte."),
        ("user", "[choice: open_ticket]"),
    ], ["form:reset_form"]),
    ("voice-31", "en", "view_imaging", "fallback", 150, [
        ("user", "where is the scan of my knee from last week"),
        ("assistant", "Sorry, I did not get that. Could you say it differently?"),
        ("user", "the MRI picture, the doctor said it is in the app"),
        ("assistant", "I still do not understand. Would you like to ask the helpdesk?"),
    ], ["fallback"]),
    ("tg-5550242", "fr", None, "lost_letter", 60 * 20, [
        ("user", "je n'ai jamais reçu le courrier avec le code d'activation"),
        ("assistant", "Sans le courrier, l'activation passe par le helpdesk."),
    ], ["form:activation_form"]),
    ("t-api-88", "fr", "upload_document", "asked", 60 * 26, [
        ("user", "comment ajouter une ordonnance dans mon dossier ?"),
        ("assistant", "Je peux ajouter un document à votre DSP. Connectez-vous d'abord."),
        ("user", "je préfère parler à une personne"),
    ], []),
]


def free_port() -> int:
    """Return a free loopback TCP port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def seed(env: dict[str, str]) -> int:
    """Fill the database with the agents and tickets (in a subprocess with `env`); return the ticket to show."""
    code = f"""
import json
from datetime import timedelta
from bot.dsp import clock, helpdesk
from bot.dsp.orm import Ticket, TicketMessage
from bot.dsp.uow import UnitOfWork
TICKETS = {TICKETS!r}
with UnitOfWork() as uow:
    claire = helpdesk.add_agent(uow, *{AGENT!r})
    marc = helpdesk.add_agent(uow, *{COLLEAGUE!r})
    ids = []
    for conversation, language, intent, reason, minutes, transcript, tried in TICKETS:
        found = helpdesk.triage(intent, reason)
        info = helpdesk.open_ticket(uow, conversation, language=language, category=found.category,
                                    priority=found.priority, reason=reason,
                                    transcript=[helpdesk.TranscriptLine(*line) for line in transcript], tried=tried)
        uow.session.get(Ticket, info.id).created_at = clock.now() - timedelta(minutes=minutes)
        ids.append(info.id)
    uow.commit()
    helpdesk.claim(uow, marc, ids[1])
    helpdesk.claim(uow, claire, ids[0])
    helpdesk.relay_user_message(uow, ids[0], "Le Dr X n'est plus mon médecin, il ne doit plus voir mes documents.")
    helpdesk.add_note(uow, claire, ids[0], "Priorité haute : accès non souhaité. Guider le blocage pas à pas.")
    helpdesk.reply(uow, claire, ids[0], "Bonjour, je suis Claire du helpdesk. Je vous guide : ouvrez MyDSP, "
                   "puis la rubrique « Intervenants ».")
    helpdesk.close(uow, claire, ids[5])
    for message in uow.session.query(TicketMessage).filter(TicketMessage.author.in_(("agent", "system"))):
        message.delivered_at = clock.now()
    uow.commit()
    print(json.dumps(ids[0]))
"""
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return int(done.stdout.strip().splitlines()[-1])


def wait_until_up(url: str, process: subprocess.Popen[bytes], timeout_s: float = 90) -> None:
    """Wait until the gateway answers the sign-in page."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the gateway exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/helpdesk/login", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit("the gateway did not start")


def shoot(url: str, ticket_id: int, out: Path) -> None:
    """Sign in and save the queue and the ticket pages."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
                                             args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800}, device_scale_factor=1)
            page.goto(f"{url}/helpdesk/login")
            page.fill("#username", AGENT[0])
            page.fill("#password", AGENT[2])
            page.click("button[type=submit]")
            page.wait_for_url(f"{url}/helpdesk")
            page.screenshot(path=str(out / "helpdesk-queue.png"), full_page=True)
            page.goto(f"{url}/helpdesk/tickets/{ticket_id}")
            page.screenshot(path=str(out / "helpdesk-ticket.png"), full_page=True)
        finally:
            browser.close()


def main() -> int:
    """Start the gateway on a temporary database, take the screenshots, stop it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs"), help="folder of the PNG files")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="console-shots-") as state:
        port = free_port()
        env = {**os.environ, "DSP_STATE_DIR": state, "DSP_DATABASE_URL": f"sqlite:///{state}/dsp.sqlite3",
               "GATEWAY_API_KEY": "screenshots-only", "RASA_AUTH_TOKEN": "screenshots-only",
               "RASA_URL": f"http://127.0.0.1:{free_port()}", "TZ": "Europe/Luxembourg"}
        ticket_id = seed(env)
        log = open(Path(state) / "gateway.log", "wb")  # noqa: SIM115 - closed below
        process = subprocess.Popen([sys.executable, "-m", "uvicorn", "bot.gateway.app:app", "--host", "127.0.0.1",
                                    "--port", str(port), "--no-access-log"], env=env, cwd=REPO, stdout=log,
                                   stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_up(url, process)
            shoot(url, ticket_id, out)
        finally:
            process.terminate()
            process.wait(timeout=30)
            log.close()
    print(f"wrote {out / 'helpdesk-queue.png'} and {out / 'helpdesk-ticket.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

