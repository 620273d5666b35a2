"""The helpdesk console: web pages for the Agence's helpdesk staff, served by the gateway under ``/helpdesk``.

Pages (server-rendered, Jinja2 with autoescape, in French, no script at all):

* ``GET/POST /helpdesk/login`` sign-in, ``POST /helpdesk/logout`` sign-out;
* ``GET /helpdesk`` the queue, filtered with a GET form (status, category, language, age);
* ``GET /helpdesk/tickets/{id}`` a ticket: what the assistant tried, the redacted transcript, the
  messages, the quick guide's steps in the caller's language; ``POST …/claim``, ``…/reply``,
  ``…/note``, ``…/close`` (POST-redirect-GET);
* ``GET/POST /helpdesk/triage`` a caller's description classified with the assistant's own NLU
  (Rasa ``/model/parse``): category, priority and the steps to read out.

Security: the session cookie (``hd_session``) is HttpOnly, SameSite=Strict, Path=/helpdesk, Secure over
https; only its HMAC is stored (:mod:`bot.dsp.helpdesk`). Every form carries the session's CSRF token
in a hidden field, checked before anything changes; the sign-in form carries a double-submit token.
Every page is ``no-store`` with a CSP without scripts and ``X-Frame-Options: DENY``. An unauthenticated
request for a page is redirected (303) to the sign-in. Passwords, tokens and message texts are never
logged (the gateway's access log writes methods and paths only). Domain calls run in worker threads.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
import jinja2
from fastapi import APIRouter, Form, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from bot.dsp import clock, helpdesk
from bot.dsp.errors import DspError
from bot.dsp.uow import UnitOfWork
from bot.gateway import language as lang
from bot.gateway import redact
from bot.gateway.settings import get_settings

logger = logging.getLogger("bot.gateway.console")
logging.getLogger("httpx").setLevel(logging.WARNING)  # its request lines hold Rasa's token

#: Longest caller description the triage page reads (the form allows as much), in characters.
TRIAGE_MAX_CHARS = 1000

router = APIRouter(prefix="/helpdesk", include_in_schema=False)

T = TypeVar("T")

TEMPLATES_DIR = Path(__file__).with_name("templates") / "helpdesk"
SESSION_COOKIE = "hd_session"
LOGIN_COOKIE = "hd_login"
#: Seconds the browser keeps the session cookie (the server ends the session earlier when idle).
COOKIE_MAX_AGE = int(helpdesk.SESSION_MAX_AGE.total_seconds())
#: Seconds to wait for Rasa's NLU on the triage page.
RASA_PARSE_TIMEOUT_S = 10.0
#: Below this NLU confidence the triage says the intent is uncertain and files it under "other".
MIN_INTENT_CONFIDENCE = 0.3
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                                "frame-ancestors 'none'; base-uri 'none'"),
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
try:
    LOCAL_TZ: Any = ZoneInfo("Europe/Luxembourg")
except ZoneInfoNotFoundError:  # pragma: no cover - a system without tz data shows UTC
    LOCAL_TZ = None

# --------------------------------------------------------------------------- French labels
CATEGORY_LABELS = {
    "activation": "Activation du compte", "login": "Connexion", "password": "Mot de passe oublié",
    "documents": "Documents", "access": "Accès des professionnels", "assistant": "Assistant (tierce personne)",
    "imaging": "Imagerie médicale", "other": "Autre demande",
}
PRIORITY_LABELS = {"high": "Haute", "normal": "Normale", "low": "Basse"}
STATUS_LABELS = {"open": "Ouvert", "claimed": "Pris en charge", "closed": "Clôturé"}
STATUS_FILTERS = {"active": "À traiter (ouverts et pris en charge)", "open": "Ouverts", "claimed": "Pris en charge",
                  "closed": "Clôturés", "all": "Tous"}
LANGUAGE_LABELS = {"fr": "Français", "de": "Allemand", "en": "Anglais"}
CHANNEL_LABELS = {"telegram": "Telegram", "terminal": "Terminal", "voice": "Voix", "api": "Application"}
AGE_FILTERS = {"1h": ("moins d'1 heure", 1), "24h": ("moins de 24 heures", 24), "7d": ("moins de 7 jours", 24 * 7)}
REASON_LABELS = {
    "asked": "La personne a demandé à parler à quelqu'un",
    "fallback": "L'assistant n'a pas compris la demande (deux fois)",
    "account_locked": "Compte bloqué après trop d'essais",
    "activation_locked": "Activation bloquée (code d'activation refusé trop souvent)",
    "lost_letter": "Courrier d'activation perdu ou jamais reçu",
    "no_email": "Mot de passe oublié, mais pas d'adresse e-mail sur le compte",
    "otp_limit": "Trop de codes à usage unique demandés",
    "quota_exceeded": "Espace des documents plein",
}
FORM_LABELS = {
    "activation_form": "Activation du compte", "login_form": "Connexion", "reset_form": "Mot de passe oublié",
    "pin_form": "Code PIN", "upload_form": "Ajout d'un document", "grant_form": "Donner un accès",
    "block_form": "Bloquer un accès", "unblock_form": "Débloquer un accès",
    "assistant_form": "Accès en tant qu'assistant",
}
ERROR_LABELS = {
    "agent_credentials_invalid": "Nom d'utilisateur ou mot de passe incorrect.",
    "agent_locked": "Trop d'essais : la connexion est bloquée pendant encore {retry_after_minutes} min.",
    "agent_unknown": "Votre compte n'est plus actif.",
    "agent_username_invalid": "Nom d'utilisateur non valable.",
    "agent_username_taken": "Ce nom d'utilisateur existe déjà.",
    "agent_name_invalid": "Nom affiché non valable.",
    "ticket_not_found": "Cette demande n'existe pas.",
    "ticket_already_claimed": "Cette demande est déjà prise en charge par {agent}.",
    "ticket_not_claimed": "Prenez d'abord la demande en charge.",
    "ticket_closed": "Cette demande est clôturée.",
    "text_empty": "Le message est vide (les numéros, codes et adresses sont masqués).",
    "text_too_long": "Le message est trop long ({max_chars} caractères au plus).",
    "filter_invalid": "Filtre non valable.",
    "csrf": "La page avait expiré : recommencez.",
}
DONE_LABELS = {
    "claimed": "Vous avez pris la demande en charge : la personne en est informée.",
    "replied": "Message envoyé à la personne.",
    "noted": "Note interne ajoutée (la personne ne la voit pas).",
    "closed": "Demande clôturée : la personne en est informée et l'assistant lui répond de nouveau.",
}
SPEAKER_LABELS = {"user": "Personne", "assistant": "Assistant"}

_env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True,
                          undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


# --------------------------------------------------------------------------- formatting helpers
def local_time(value: datetime | None) -> str:
    """Return a naive UTC time as ``JJ/MM/AAAA HH:MM`` in Luxembourg time ("" for None)."""
    if value is None:
        return ""
    if LOCAL_TZ is not None:
        value = value.replace(tzinfo=ZoneInfo("UTC")).astimezone(LOCAL_TZ)
    return value.strftime("%d/%m/%Y %H:%M")


def age(value: datetime) -> str:
    """Return how long ago a naive UTC time was, in French words ("il y a 5 min")."""
    seconds = max(0, int((clock.now() - value).total_seconds()))
    if seconds < 60:
        return "à l'instant"
    if seconds < 3600:
        return f"il y a {seconds // 60} min"
    if seconds < 86400:
        return f"il y a {seconds // 3600} h"
    return f"il y a {seconds // 86400} j"


def tried_label(entry: str) -> str:
    """Return what the assistant tried in words: ``form:login_form`` -> "Formulaire : Connexion"."""
    kind, _, name = entry.partition(":")
    if kind == "form":
        return f"Étapes suivies avec l'assistant : {FORM_LABELS.get(name, name)}"
    if kind == "error":
        return f"Refus de la plateforme : {name.replace('_', ' ')}"
    if entry == "fallback":
        return "L'assistant n'a pas compris un message"
    return entry


def error_text(code: str, params: dict[str, Any] | None = None) -> str:
    """Return the French message of a refusal code (the code itself when it has none)."""
    text = ERROR_LABELS.get(code) or f"Refusé ({code})."
    try:
        return text.format(**(params or {}))
    except (KeyError, IndexError):
        return text.split("{")[0].strip()


_env.filters.update(local_time=local_time, age=age, tried=tried_label)
_env.globals.update(CATEGORY_LABELS=CATEGORY_LABELS, PRIORITY_LABELS=PRIORITY_LABELS, STATUS_LABELS=STATUS_LABELS,
                    LANGUAGE_LABELS=LANGUAGE_LABELS, CHANNEL_LABELS=CHANNEL_LABELS, REASON_LABELS=REASON_LABELS,
                    SPEAKER_LABELS=SPEAKER_LABELS, STATUS_FILTERS=STATUS_FILTERS, AGE_FILTERS=AGE_FILTERS)


def render(name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render a template of ``templates/helpdesk`` as a page with the console's security headers."""
    context.setdefault("agent", None)
    return HTMLResponse(_env.get_template(name).render(**context), status_code=status_code,
                        headers=SECURITY_HEADERS)


def redirect(url: str) -> RedirectResponse:
    """Return a 303 redirect (after a POST, or to the sign-in) with the security headers."""
    return RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)


def in_uow(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one domain service in its own unit of work (committed, refusals included); worker-thread code."""
    with UnitOfWork() as uow:
        try:
            return function(uow, *args, **kwargs)
        finally:
            uow.commit()


async def call(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run :func:`in_uow` in a worker thread (the event loop never blocks on the database)."""
    return await asyncio.to_thread(in_uow, function, *args, **kwargs)


async def signed_in(request: Request) -> helpdesk.AgentInfo | None:
    """Return the agent of the request's session cookie, or None."""
    token = request.cookies.get(SESSION_COOKIE, "")
    if not token:
        return None
    return await call(helpdesk.agent_for_session, token)


def csrf_ok(agent: helpdesk.AgentInfo, sent: str) -> bool:
    """Return True when the form's CSRF token is the session's."""
    return bool(agent.csrf_token) and secrets.compare_digest(sent.encode(), (agent.csrf_token or "").encode())


def set_cookie(response: Response, request: Request, name: str, value: str, max_age: int | None) -> None:
    """Set a console cookie: HttpOnly, SameSite=Strict, Path=/helpdesk, Secure over https."""
    response.set_cookie(name, value, max_age=max_age, path="/helpdesk", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")


def clear_cookie(response: Response, request: Request, name: str) -> None:
    """Remove a console cookie."""
    response.delete_cookie(name, path="/helpdesk", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")


# --------------------------------------------------------------------------- static
STYLESHEET = (TEMPLATES_DIR / "console.css").read_text(encoding="utf-8")


@router.get("/static/console.css")
async def stylesheet() -> Response:
    """Serve the console's stylesheet (the CSP allows styles from this origin only)."""
    return Response(STYLESHEET, media_type="text/css", headers={"Cache-Control": "max-age=3600",
                                                                "X-Content-Type-Options": "nosniff"})


# --------------------------------------------------------------------------- sign-in and sign-out
def login_page(request: Request, *, error: str | None = None, username: str = "", status_code: int = 200) -> Response:
    """Render the sign-in form with a fresh double-submit token (cookie and hidden field)."""
    token = secrets.token_urlsafe(24)
    response = render("login.html", status_code=status_code, error=error, username=username, login_token=token)
    set_cookie(response, request, LOGIN_COOKIE, token, 3600)
    return response


@router.get("/login")
async def login_form(request: Request) -> Response:
    """Show the sign-in form (or the queue when already signed in)."""
    if await signed_in(request) is not None:
        return redirect("/helpdesk")
    return login_page(request)


@router.post("/login")
async def login(request: Request, username: Annotated[str, Form()] = "", password: Annotated[str, Form()] = "",
                login_token: Annotated[str, Form()] = "") -> Response:
    """Check the agent's name and password; open a session and go to the queue.

    A wrong name or password answers 401 with one message for both; five failures in a row lock the
    sign-in for 15 minutes (429).
    """
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not secrets.compare_digest(expected.encode(), login_token.encode()):
        return login_page(request, error=error_text("csrf"), username=username[:64], status_code=400)
    try:
        agent = await call(helpdesk.authenticate, username[:64], password[:256])
        token, _csrf = await call(helpdesk.start_session, agent.id)
    except DspError as refusal:
        status_code = 429 if refusal.code == "agent_locked" else 401
        return login_page(request, error=error_text(refusal.code, refusal.params), username=username[:64],
                          status_code=status_code)
    response = redirect("/helpdesk")
    set_cookie(response, request, SESSION_COOKIE, token, COOKIE_MAX_AGE)
    clear_cookie(response, request, LOGIN_COOKIE)
    return response


@router.post("/logout")
async def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    """End the session (with a valid CSRF token) and go back to the sign-in."""
    agent = await signed_in(request)
    if agent is not None and csrf_ok(agent, csrf):
        await call(helpdesk.end_session, request.cookies.get(SESSION_COOKIE, ""))
    elif agent is not None:
        return redirect("/helpdesk?" + urlencode({"error": "csrf"}))
    response = redirect("/helpdesk/login")
    clear_cookie(response, request, SESSION_COOKIE)
    return response


# --------------------------------------------------------------------------- queue
@router.get("")
async def queue(request: Request, status: str = "active", category: str = "", language: str = "",
                age_filter: Annotated[str, Query(alias="age")] = "", error: str = "") -> Response:
    """Show the queue: not closed first, then the highest priority, then the oldest (filters in a GET form)."""
    agent = await signed_in(request)
    if agent is None:
        return redirect("/helpdesk/login")
    status = status if status in STATUS_FILTERS else "active"
    category = category if category in CATEGORY_LABELS else ""
    language = language if language in LANGUAGE_LABELS else ""
    age_filter = age_filter if age_filter in AGE_FILTERS else ""
    tickets = await call(helpdesk.list_tickets, agent.id, status=None if status == "all" else status,
                         category=category or None, language=language or None,
                         max_age_hours=AGE_FILTERS[age_filter][1] if age_filter else None)
    return render("queue.html", agent=agent, tickets=tickets, now=clock.now(),
                  filters={"status": status, "category": category, "language": language, "age": age_filter},
                  error=error_text(error) if error in ERROR_LABELS else None)


# --------------------------------------------------------------------------- ticket
TicketId = Annotated[int, PathParam(ge=1, le=2**31)]


@router.get("/tickets/{ticket_id}")
async def ticket_page(request: Request, ticket_id: TicketId, done: str = "", error: str = "",
                      agent_name: Annotated[str, Query(alias="agent")] = "",
                      max_chars: int = helpdesk.MAX_TEXT_CHARS) -> Response:
    """Show one ticket (audited as a view): details, what was tried, transcript, messages, the guide's steps."""
    agent = await signed_in(request)
    if agent is None:
        return redirect("/helpdesk/login")
    try:
        view = await call(helpdesk.view_ticket, agent.id, ticket_id)
    except DspError as refusal:
        return render("error.html", status_code=404 if refusal.code == "ticket_not_found" else 403, agent=agent,
                      message=error_text(refusal.code, refusal.params))
    mine = view.info.claimed_by_agent_id == agent.id
    # The holder's name comes from the ticket itself, never from the query string (no spoofed text).
    params = {"agent": view.info.claimed_by or "?", "max_chars": helpdesk.MAX_TEXT_CHARS}
    return render(
        "ticket.html", agent=agent, view=view, ticket=view.info, mine=mine,
        done=DONE_LABELS.get(done), error=error_text(error, params) if error in ERROR_LABELS else None,
        max_chars=helpdesk.MAX_TEXT_CHARS,
    )


async def ticket_action(request: Request, ticket_id: int, csrf: str, done: str,
                        service: Callable[..., Any], *args: Any) -> Response:
    """Check the session and the CSRF token, run one staff service, and redirect to the ticket (PRG)."""
    agent = await signed_in(request)
    if agent is None:
        return redirect("/helpdesk/login")
    target = f"/helpdesk/tickets/{ticket_id}"
    if not csrf_ok(agent, csrf):
        return redirect(f"{target}?{urlencode({'error': 'csrf'})}")
    try:
        await call(service, agent.id, ticket_id, *args)
    except DspError as refusal:
        query = {"error": refusal.code, **{key: str(value) for key, value in refusal.params.items()
                                           if key in ("agent", "max_chars")}}
        return redirect(f"{target}?{urlencode(query)}")
    return redirect(f"{target}?{urlencode({'done': done})}")


@router.post("/tickets/{ticket_id}/claim")
async def claim(request: Request, ticket_id: TicketId, csrf: Annotated[str, Form()] = "") -> Response:
    """Take the ticket: the person is told that an agent answers from now on."""
    return await ticket_action(request, ticket_id, csrf, "claimed", helpdesk.claim)


@router.post("/tickets/{ticket_id}/reply")
async def reply(request: Request, ticket_id: TicketId, csrf: Annotated[str, Form()] = "",
                text: Annotated[str, Form()] = "") -> Response:
    """Send a message to the person (only the agent who holds the ticket)."""
    return await ticket_action(request, ticket_id, csrf, "replied", helpdesk.reply, text)


@router.post("/tickets/{ticket_id}/note")
async def note(request: Request, ticket_id: TicketId, csrf: Annotated[str, Form()] = "",
               text: Annotated[str, Form()] = "") -> Response:
    """Add an internal note (never sent to the person)."""
    return await ticket_action(request, ticket_id, csrf, "noted", helpdesk.add_note, text)


@router.post("/tickets/{ticket_id}/close")
async def close(request: Request, ticket_id: TicketId, csrf: Annotated[str, Form()] = "") -> Response:
    """Close the ticket: the person is told, and the assistant answers again."""
    return await ticket_action(request, ticket_id, csrf, "closed", helpdesk.close)


# --------------------------------------------------------------------------- triage
async def parse_intent(text: str) -> tuple[str | None, float] | None:
    """Return (intent, confidence) from Rasa's NLU for a redacted text, or None when Rasa does not answer.

    Each Rasa instance of RASA_URLS is asked in turn until one answers (production layout).
    """
    settings = get_settings()
    try:
        async with httpx.AsyncClient(timeout=RASA_PARSE_TIMEOUT_S) as client:
            for n, url in enumerate(settings.rasa_urls or (settings.rasa_url,), start=1):
                try:
                    response = await client.post(f"{url}/model/parse", params={"token": settings.rasa_token},
                                                 json={"text": text})
                    break
                except httpx.TransportError:
                    if n == len(settings.rasa_urls or (settings.rasa_url,)):
                        raise
        if response.status_code != 200:
            logger.warning("triage: Rasa answered %s", response.status_code)
            return None
        intent = response.json().get("intent") or {}
        return intent.get("name"), float(intent.get("confidence") or 0.0)
    except (httpx.HTTPError, ValueError, TypeError, AttributeError) as exc:
        logger.warning("triage: Rasa unreachable (%s)", type(exc).__name__)
        return None


@router.get("/triage")
async def triage_form(request: Request, category: str = "", language: str = "fr") -> Response:
    """Show the triage form; with ``category`` (chosen by hand) show that category's steps."""
    agent = await signed_in(request)
    if agent is None:
        return redirect("/helpdesk/login")
    language = language if language in LANGUAGE_LABELS else "fr"
    result = None
    if category in CATEGORY_LABELS:
        result = {"category": category, "priority": None, "intent": None, "confidence": None, "language": language,
                  "steps": helpdesk.guide_steps(category, language)}
    return render("triage.html", agent=agent, text="", chosen_language="auto", result=result, rasa_down=False)


@router.post("/triage")
async def triage(request: Request, csrf: Annotated[str, Form()] = "", text: Annotated[str, Form()] = "",
                 language: Annotated[str, Form()] = "auto") -> Response:
    """Classify a caller's description with the assistant's NLU: category, priority, steps to read out.

    The text is redacted before it goes to Rasa (no secret reaches Rasa) and is not stored. When Rasa
    does not answer, the page says so and offers to choose the category by hand.
    """
    agent = await signed_in(request)
    if agent is None:
        return redirect("/helpdesk/login")
    if not csrf_ok(agent, csrf):
        return redirect("/helpdesk/triage")
    cleaned, _masked = await asyncio.to_thread(redact.clean, text[:TRIAGE_MAX_CHARS])
    chosen = language if language in LANGUAGE_LABELS else "auto"
    if not cleaned.replace(redact.PLACEHOLDER, "").strip():
        return render("triage.html", agent=agent, text="", chosen_language=chosen, result=None, rasa_down=False,
                      error=error_text("text_empty"))
    detected: str | None = chosen
    if chosen == "auto":
        detected = await asyncio.to_thread(lang.detect, cleaned)
    detected = detected or "fr"
    parsed = await parse_intent(cleaned)
    if parsed is None:
        return render("triage.html", agent=agent, text=cleaned, chosen_language=chosen, result=None, rasa_down=True,
                      detected=detected)
    intent, confidence = parsed
    sure = intent if confidence >= MIN_INTENT_CONFIDENCE else None
    found = helpdesk.triage(sure)
    result = {"category": found.category, "priority": found.priority, "intent": intent, "confidence": confidence,
              "uncertain": sure is None, "language": detected,
              "steps": helpdesk.guide_steps(found.category, detected)}
    return render("triage.html", agent=agent, text=cleaned, chosen_language=chosen, result=result, rasa_down=False)
