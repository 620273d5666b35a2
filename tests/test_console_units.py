"""Helpdesk console without the other services: redirects, cookies, headers, CSRF, Rasa down (FastAPI TestClient).

The browser tests against the real stack are in tests/test_console.py.
"""

from __future__ import annotations

import re
import socket

import pytest
from fastapi.testclient import TestClient

from bot.dsp import helpdesk
from bot.dsp.db import reset_engine
from bot.dsp.errors import STAFF_ERROR_CODES
from bot.dsp.settings import get_settings as dsp_settings
from bot.dsp.uow import UnitOfWork
from bot.gateway import console
from bot.gateway.settings import get_settings as gateway_settings

PASSWORD = "Console-Unit-Passphrase-2026"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.setenv("DSP_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("DSP_DATABASE_URL", f"sqlite:///{tmp_path / 'dsp.sqlite3'}")
    monkeypatch.setenv("GATEWAY_API_KEY", "unit-key")
    monkeypatch.setenv("RASA_AUTH_TOKEN", "unit-rasa-token")
    monkeypatch.setenv("RASA_URL", f"http://127.0.0.1:{closed_port()}")  # nothing listens: Rasa is down
    dsp_settings.cache_clear()
    gateway_settings.cache_clear()
    reset_engine()
    from bot.gateway.app import app

    with TestClient(app, base_url="http://testserver") as test_client:
        yield test_client
    reset_engine()
    dsp_settings.cache_clear()
    gateway_settings.cache_clear()


def domain(fn, *args, **kwargs):
    with UnitOfWork() as uow:
        result = fn(uow, *args, **kwargs)
        uow.commit()
        return result


def sign_in(client: TestClient, username: str = "lea") -> str:
    domain(helpdesk.add_agent, username, "Léa Hoffmann", PASSWORD)
    page = client.get("/helpdesk/login")
    token = re.search(r'name="login_token" value="([^"]+)"', page.text).group(1)
    response = client.post("/helpdesk/login", data={"username": username, "password": PASSWORD,
                                                    "login_token": token}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/helpdesk"
    return response.headers["set-cookie"]


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/helpdesk"), ("GET", "/helpdesk?status=closed"), ("GET", "/helpdesk/tickets/1"),
    ("GET", "/helpdesk/triage"), ("POST", "/helpdesk/triage"), ("POST", "/helpdesk/tickets/1/claim"),
    ("POST", "/helpdesk/tickets/1/reply"), ("POST", "/helpdesk/tickets/1/close"), ("POST", "/helpdesk/tickets/1/note"),
])
def test_every_page_without_a_session_redirects_to_sign_in(client, method, path):
    response = client.request(method, path, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/helpdesk/login"
    client.cookies.set("hd_session", "forged-token", path="/helpdesk")
    assert client.request(method, path, follow_redirects=False).headers["location"] == "/helpdesk/login"


def test_pages_carry_security_headers_and_the_cookie_its_flags(client):
    login = client.get("/helpdesk/login")
    for response in (login,):
        assert response.headers["x-frame-options"] == "DENY"
        assert "no-store" in response.headers["cache-control"]
        csp = response.headers["content-security-policy"]
        assert "script-src" not in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "<script" not in login.text
    cookie = sign_in(client)
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Path=/helpdesk" in cookie and "Secure" not in cookie  # plain http here; https sets Secure
    queue = client.get("/helpdesk")
    assert queue.status_code == 200 and queue.headers["x-frame-options"] == "DENY" and "Léa Hoffmann" in queue.text


def test_https_sets_a_secure_cookie(client):
    domain(helpdesk.add_agent, "lea", "Léa Hoffmann", PASSWORD)
    page = client.get("https://testserver/helpdesk/login")
    token = re.search(r'name="login_token" value="([^"]+)"', page.text).group(1)
    response = client.post("https://testserver/helpdesk/login", follow_redirects=False,
                           data={"username": "lea", "password": PASSWORD, "login_token": token})
    assert response.status_code == 303 and "Secure" in response.headers["set-cookie"]


def test_sign_in_needs_the_form_token_and_refuses_a_wrong_password(client):
    domain(helpdesk.add_agent, "lea", "Léa Hoffmann", PASSWORD)
    no_token = client.post("/helpdesk/login", data={"username": "lea", "password": PASSWORD},
                           follow_redirects=False)
    assert no_token.status_code == 400 and "hd_session" not in no_token.headers.get("set-cookie", "")
    token = re.search(r'name="login_token" value="([^"]+)"', client.get("/helpdesk/login").text).group(1)
    wrong = client.post("/helpdesk/login", data={"username": "lea", "password": "nope", "login_token": token})
    assert wrong.status_code == 401 and "Nom d&#39;utilisateur ou mot de passe incorrect" in wrong.text
    assert "nope" not in wrong.text


def test_five_wrong_passwords_lock_the_sign_in_with_a_clear_message(client):
    domain(helpdesk.add_agent, "lea", "Léa Hoffmann", PASSWORD)
    for attempt in range(5):
        token = re.search(r'name="login_token" value="([^"]+)"', client.get("/helpdesk/login").text).group(1)
        response = client.post("/helpdesk/login", data={"username": "lea", "password": f"wrong-{attempt}",
                                                        "login_token": token})
    assert response.status_code == 429
    assert "Trop d&#39;essais : la connexion est bloquée pendant encore 15 min." in response.text
    token = re.search(r'name="login_token" value="([^"]+)"', response.text).group(1)
    right = client.post("/helpdesk/login", data={"username": "lea", "password": PASSWORD, "login_token": token},
                        follow_redirects=False)
    assert right.status_code == 429  # even the right password, until the lock ends


def test_a_post_with_a_wrong_csrf_token_changes_nothing(client):
    sign_in(client)
    agent_id = domain(lambda uow: helpdesk.authenticate(uow, "lea", PASSWORD)).id
    ticket = domain(helpdesk.open_ticket, "tg-42", language="fr", category="login", priority="normal",
                    reason="asked", transcript=[], tried=[])
    response = client.post(f"/helpdesk/tickets/{ticket.id}/claim", data={"csrf": "wrong"}, follow_redirects=False)
    assert response.status_code == 303 and "error=csrf" in response.headers["location"]
    assert domain(helpdesk.active_ticket, "tg-42").status == "open"
    page = client.get(f"/helpdesk/tickets/{ticket.id}")
    response = client.post(f"/helpdesk/tickets/{ticket.id}/claim", data={"csrf": csrf_of(page.text)},
                           follow_redirects=False)
    assert response.headers["location"].endswith("done=claimed")
    assert domain(helpdesk.active_ticket, "tg-42").claimed_by_agent_id == agent_id
    assert client.post("/helpdesk/logout", data={"csrf": "wrong"}, follow_redirects=False).headers[
        "location"] == "/helpdesk?error=csrf"
    assert client.get("/helpdesk", follow_redirects=False).status_code == 200  # still signed in
    out = client.post("/helpdesk/logout", data={"csrf": csrf_of(page.text)}, follow_redirects=False)
    assert out.headers["location"] == "/helpdesk/login"
    assert client.get("/helpdesk", follow_redirects=False).status_code == 303


def test_triage_says_when_rasa_is_down_and_offers_the_categories(client):
    sign_in(client)
    page = client.get("/helpdesk/triage")
    response = client.post("/helpdesk/triage", data={"csrf": csrf_of(page.text), "language": "fr",
                                                     "text": "j'ai perdu mon mot de passe, matricule 1985041212345"})
    assert response.status_code == 200
    assert "L'assistant ne répond pas" in response.text and "1985041212345" not in response.text
    chosen = client.get("/helpdesk/triage?category=password&language=de")
    assert helpdesk.guide_steps("password", "de")[0].replace("„", "") in chosen.text.replace("„", "")


def test_a_missing_ticket_is_a_404_page(client):
    sign_in(client)
    response = client.get("/helpdesk/tickets/999")
    assert response.status_code == 404 and "Cette demande n&#39;existe pas" in response.text


def test_every_staff_error_code_has_a_french_message():
    assert STAFF_ERROR_CODES <= set(console.ERROR_LABELS)
