"""The helpdesk console in a real browser (Debian's chromium driven by Playwright) on the full stack (issue 6).

An agent made with ``dsp add-agent`` signs in, filters the queue, opens a ticket, claims it, replies and
closes it; every step is checked in the domain too (the deliveries the user's chat will receive, the
audit). A wrong password is refused; a page asked for without a session goes to the sign-in. The
triage page classifies a caller's words with the assistant's own NLU (the real Rasa). The tickets are
made through the domain layer in a subprocess with the services' environment (the chat-to-console
test, through the assistant, is the lead's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bot.dsp import helpdesk
from tests.support import DSP, REPO, SECRETS, run_dsp_lines

pytestmark = pytest.mark.services

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
PASSWORD = "Console-Browser-Passphrase-2026"


def domain(services, code: str) -> Any:
    """Run helpdesk domain code on the services' database; `code` assigns a JSON-serialisable `result`."""
    script = "\n".join([
        "import json", "from bot.dsp import helpdesk", "from bot.dsp.uow import UnitOfWork",
        "with UnitOfWork() as uow:", textwrap.indent(textwrap.dedent(code), "    "), "    uow.commit()",
        "print(json.dumps(result, default=str))",
    ])
    done = subprocess.run([sys.executable, "-c", script], env=services.env, cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def add_agent(services, username: str, name: str) -> int:
    """Create an agent with the command line, the password on stdin (never in argv)."""
    done = subprocess.run([str(DSP), "add-agent", "--username", username, "--name", name, "--password-stdin"],
                          input=PASSWORD + "\n", env=services.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    assert created["username"] == username and PASSWORD not in done.stdout + done.stderr
    return int(created["id"])


def open_ticket(services, conversation_id: str, language: str, intent: str | None, reason: str,
                lines: list[tuple[str, str]]) -> dict[str, Any]:
    """Open a ticket as the assistant would; return its id and reference."""
    return domain(services, f"""
        found = helpdesk.triage({intent!r}, {reason!r})
        info = helpdesk.open_ticket(uow, {conversation_id!r}, language={language!r}, category=found.category,
                                    priority=found.priority, reason={reason!r}, tried=["form:login_form"],
                                    transcript=[helpdesk.TranscriptLine(*line) for line in {lines!r}])
        result = {{"id": info.id, "reference": info.reference}}
    """)


def deliveries(services, conversation_id: str) -> list[list[Any]]:
    """Return the (kind, text, agent) of the conversation's undelivered helpdesk messages."""
    return domain(services, f"""
        result = [[d.kind, d.text, d.agent_name]
                  for d in helpdesk.pending_deliveries(uow, conversation_id={conversation_id!r})]
    """)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            yield launched
        finally:
            launched.close()


def sign_in(page: Any, base: str, username: str, password: str) -> None:
    page.goto(f"{base}/helpdesk/login")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("button[type=submit]")


def test_a_page_without_a_session_redirects_to_the_sign_in(services, browser):
    response = httpx.get(f"{services.gateway_url}/helpdesk/tickets/1", follow_redirects=False, timeout=30)
    assert response.status_code == 303 and response.headers["location"] == "/helpdesk/login"
    page = browser.new_page()
    try:
        page.goto(f"{services.gateway_url}/helpdesk?status=closed")
        assert page.url == f"{services.gateway_url}/helpdesk/login"
        assert page.locator("h1").inner_text() == "Connexion au helpdesk"
    finally:
        page.close()


def test_a_wrong_password_is_refused(services, browser):
    username = f"marc.{uuid.uuid4().hex[:8]}"
    add_agent(services, username, "Marc Schmit")
    context = browser.new_context()
    try:
        page = context.new_page()
        sign_in(page, services.gateway_url, username, "Not-The-Right-Passphrase")
        assert page.locator(".alert.error").inner_text() == "Nom d'utilisateur ou mot de passe incorrect."
        assert page.url.endswith("/helpdesk/login")
        assert "hd_session" not in {cookie["name"] for cookie in context.cookies()}
        sign_in(page, services.gateway_url, "nobody-" + username, PASSWORD)  # an unknown name: the same answer
        assert page.locator(".alert.error").inner_text() == "Nom d'utilisateur ou mot de passe incorrect."
    finally:
        context.close()


def test_sign_in_filter_the_queue_claim_reply_and_close(services, browser):
    suffix = uuid.uuid4().hex[:8]
    username = f"claire.{suffix}"
    agent_id = add_agent(services, username, "Claire Weber")
    imaging = open_ticket(services, f"tg-c{suffix}", "de", "view_imaging", "asked", [
        ("user", "Wo finde ich mein MRT? Meine Nummer ist 1985041212345"),
        ("assistant", "Ich kann Ihnen Ihre Bilder zeigen. Melden Sie sich zuerst an."),
    ])
    locked = open_ticket(services, f"term-c{suffix}", "fr", "log_in", "account_locked",
                         [("user", "mon compte est bloqué")])
    context = browser.new_context()
    base = services.gateway_url
    try:
        page = context.new_page()
        sign_in(page, base, username, PASSWORD)
        page.wait_for_url(f"{base}/helpdesk")
        cookies = {cookie["name"]: cookie for cookie in context.cookies()}
        session = cookies["hd_session"]
        SECRETS.add(session["value"], PASSWORD)  # never in a log, the tracker or the audit
        assert session["httpOnly"] and session["sameSite"] == "Strict" and session["path"] == "/helpdesk"
        assert page.locator("header .who span").inner_text() == "Claire Weber"
        queue = page.locator("table.queue")
        assert imaging["reference"] in queue.inner_text() and locked["reference"] in queue.inner_text()

        # Filter: imaging in German, opened less than an hour ago.
        page.select_option("select[name=category]", "imaging")
        page.select_option("select[name=language]", "de")
        page.select_option("select[name=age]", "1h")
        page.click("form.filters button[type=submit]")
        page.wait_for_url("**/helpdesk?*category=imaging*")
        assert "language=de" in page.url and "age=1h" in page.url
        listed = page.locator("table.queue").inner_text()
        assert imaging["reference"] in listed and locked["reference"] not in listed
        assert page.locator("select[name=category]").input_value() == "imaging"  # the form keeps the filter
        page.select_option("select[name=status]", "closed")
        page.click("form.filters button[type=submit]")
        page.wait_for_url("**status=closed*")
        assert imaging["reference"] not in page.content()

        # The ticket page: masked transcript, what was tried, the steps to read out in German.
        page.goto(f"{base}/helpdesk?category=imaging&language=de")
        page.click(f"text={imaging['reference']}")
        page.wait_for_url(f"{base}/helpdesk/tickets/{imaging['id']}")
        body = page.locator("main").inner_text()
        assert "Wo finde ich mein MRT? Meine Nummer ist ***" in body and "1985041212345" not in page.content()
        assert "Imagerie médicale" in body and "Telegram" in body and "Allemand" in body
        assert "Étapes suivies avec l'assistant : Connexion" in body
        assert helpdesk.guide_steps("imaging", "de")[0] in page.locator(".guide").inner_text()
        assert page.locator("textarea#reply").count() == 0  # no reply before claiming

        page.click("text=Prendre en charge")
        page.wait_for_url("**done=claimed")
        assert "Vous avez pris la demande en charge" in page.locator(".alert.ok").inner_text()
        assert deliveries(services, f"tg-c{suffix}") == [["claimed", None, "Claire Weber"]]

        domain(services, f"result = helpdesk.relay_user_message(uow, {imaging['id']}, 'Ich sehe keine Bilder')")
        page.click("text=Actualiser")
        assert "Ich sehe keine Bilder" in page.locator("ol.chat").last.inner_text()

        page.fill("textarea#reply", "Tippen Sie auf „Medizinische Bildgebung“.")
        page.click("form[action$='/reply'] button")
        page.wait_for_url("**done=replied")
        assert "Tippen Sie auf „Medizinische Bildgebung“." in page.locator("ol.chat").last.inner_text()
        assert deliveries(services, f"tg-c{suffix}")[-1] == [
            "agent_reply", "Tippen Sie auf „Medizinische Bildgebung“.", "Claire Weber"]

        page.fill("textarea#note", "Rappeler demain si besoin")
        page.click("form[action$='/note'] button")
        page.wait_for_url("**done=noted")
        assert len(deliveries(services, f"tg-c{suffix}")) == 2  # a note is never delivered

        # A forged form (wrong CSRF token, with the session cookie) changes nothing.
        forged = context.request.post(f"{base}/helpdesk/tickets/{imaging['id']}/reply",
                                      form={"csrf": "forged", "text": "forged"}, max_redirects=0)
        assert forged.status == 303 and "error=csrf" in forged.headers["location"]
        assert len(deliveries(services, f"tg-c{suffix}")) == 2

        page.click("text=Clôturer la demande")
        page.wait_for_url("**done=closed")
        assert page.locator("h1 .st-closed").inner_text() == "Clôturé"
        assert deliveries(services, f"tg-c{suffix}")[-1] == ["closed", None, "Claire Weber"]
        assert domain(services, f"result = helpdesk.active_ticket(uow, 'tg-c{suffix}')") is None

        page.click("header .who button")  # sign out
        page.wait_for_url(f"{base}/helpdesk/login")
        page.goto(f"{base}/helpdesk")
        assert page.url == f"{base}/helpdesk/login"
    finally:
        context.close()
    audit = [json.loads(line) for line in run_dsp_lines(services, "audit", "--last", "400")]
    mine = {(row["action"], row["outcome"]) for row in audit if row["actor"] == f"agent:{agent_id}"}
    assert {("helpdesk.login", "ok"), ("helpdesk.queue.view", "ok"), ("helpdesk.ticket.view", "ok"),
            ("helpdesk.ticket.claim", "ok"), ("helpdesk.ticket.reply", "ok"), ("helpdesk.ticket.note", "ok"),
            ("helpdesk.ticket.close", "ok"), ("helpdesk.logout", "ok")} <= mine
    assert not any("Bildgebung" in (row["detail"] or "") for row in audit)


def test_triage_classifies_a_callers_words_with_the_assistants_nlu(services, browser):
    username = f"lea.{uuid.uuid4().hex[:8]}"
    add_agent(services, username, "Léa Hoffmann")
    context = browser.new_context()
    try:
        page = context.new_page()
        sign_in(page, services.gateway_url, username, PASSWORD)
        page.wait_for_url(f"{services.gateway_url}/helpdesk")
        page.click("text=Aide au tri")
        page.fill("textarea#text", "j'ai oublié mon mot de passe")
        page.select_option("select#language", "fr")
        page.click("form.card button[type=submit]")
        result = page.locator("section.result")
        assert result.locator("dd.category").inner_text() == "Mot de passe oublié"
        assert "reset_password" in result.inner_text()
        assert helpdesk.guide_steps("password", "fr")[0] in result.locator("ol.steps").inner_text()
    finally:
        context.close()
