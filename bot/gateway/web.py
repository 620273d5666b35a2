"""The page behind the password-reset link of the e-mail (guide: Mot de passe oublié).

`GET /reset-password?token=…` shows a form (new password + confirmation); `POST` sets it through
the domain layer. The token and the passwords go only to the vault and the domain, never to Rasa
or a log. Texts follow the browser's language (fr, de, en).
"""

from __future__ import annotations

import asyncio
import html
import secrets

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse

from bot.dsp import DspError, accounts, vault
from bot.dsp.uow import UnitOfWork

router = APIRouter()

TEXTS = {
    "fr": {"title": "Nouveau mot de passe", "password": "Nouveau mot de passe", "confirm": "Confirmez-le",
           "submit": "Valider mon nouveau mot de passe", "done": "Votre nouveau mot de passe est enregistré. "
           "Vous pouvez vous connecter avec lui.", "hint": "Au moins 8 caractères ; une phrase de plusieurs mots "
           "convient très bien.", "password_mismatch": "Les deux saisies sont différentes.",
           "reset_token_invalid": "Ce lien est inconnu, déjà utilisé ou expiré. Demandez-en un nouveau.",
           "password_too_short": "Ce mot de passe est trop court.",
           "password_too_long": "Ce mot de passe est trop long.",
           "password_common": "Ce mot de passe est trop courant et facile à deviner.",
           "other": "Une erreur est survenue ; rien n'a été modifié. Réessayez ou appelez le helpdesk "
           "au +352 27 12 50 18 33."},
    "de": {"title": "Neues Passwort", "password": "Neues Passwort", "confirm": "Bestätigen",
           "submit": "Neues Passwort speichern", "done": "Ihr neues Passwort ist gespeichert. Sie können sich "
           "damit anmelden.", "hint": "Mindestens 8 Zeichen; ein Satz aus mehreren Wörtern eignet sich sehr gut.",
           "password_mismatch": "Die beiden Eingaben stimmen nicht überein.",
           "reset_token_invalid": "Dieser Link ist unbekannt, bereits benutzt oder abgelaufen. Fordern Sie "
           "einen neuen an.", "password_too_short": "Dieses Passwort ist zu kurz.",
           "password_too_long": "Dieses Passwort ist zu lang.",
           "password_common": "Dieses Passwort ist zu verbreitet und leicht zu erraten.",
           "other": "Ein Fehler ist aufgetreten; nichts wurde geändert. Versuchen Sie es erneut oder rufen Sie "
           "den Helpdesk unter +352 27 12 50 18 33 an."},
    "en": {"title": "New password", "password": "New password", "confirm": "Confirm it",
           "submit": "Save my new password", "done": "Your new password is saved. You can log in with it.",
           "hint": "At least 8 characters; a phrase of several words works well.",
           "password_mismatch": "The two entries differ.",
           "reset_token_invalid": "This link is unknown, already used or expired. Ask for a new one.",
           "password_too_short": "This password is too short.", "password_too_long": "This password is too long.",
           "password_common": "This password is too common and easy to guess.",
           "other": "Something went wrong; nothing was changed. Try again or call the helpdesk on "
           "+352 27 12 50 18 33."},
}


def page_language(request: Request) -> str:
    """Return fr, de or en from the Accept-Language header (French by default)."""
    header = request.headers.get("accept-language", "").lower()
    for part in header.split(","):
        code = part.strip()[:2]
        if code in TEXTS:
            return code
    return "fr"


def render(language: str, token: str, message: str | None = None, done: bool = False) -> HTMLResponse:
    """Return the page: the form, or the final message."""
    t = TEXTS[language]
    body = f"<p role='status'>{html.escape(message)}</p>" if message else ""
    if not done:
        body += (
            f"<form method='post'><input type='hidden' name='token' value='{html.escape(token)}'>"
            f"<p>{html.escape(t['hint'])}</p>"
            f"<label>{t['password']}<br><input type='password' name='password' autocomplete='new-password' "
            f"required minlength='8' maxlength='128'></label><br>"
            f"<label>{t['confirm']}<br><input type='password' name='confirm' autocomplete='new-password' "
            f"required></label><br><button type='submit'>{t['submit']}</button></form>"
        )
    page = (f"<!doctype html><html lang='{language}'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width'><meta name='referrer' content='no-referrer'>"
            f"<title>{t['title']}</title></head><body><h1>{t['title']}</h1>{body}</body></html>")
    return HTMLResponse(page, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


@router.get("/reset-password", response_class=HTMLResponse, include_in_schema=False)
async def reset_form(request: Request, token: str = "") -> HTMLResponse:
    """Show the new-password form of a reset link."""
    return render(page_language(request), token[:200])


@router.post("/reset-password", response_class=HTMLResponse, include_in_schema=False)
async def reset_submit(request: Request, token: str = Form(""), password: str = Form(""),
                       confirm: str = Form("")) -> HTMLResponse:
    """Set the new password with the link's token."""
    language = page_language(request)
    web_id = "web-" + secrets.token_hex(8)

    def apply() -> None:
        with UnitOfWork() as uow:
            try:
                token_ref = vault.put(uow, web_id, "reset_token", token[:200])
                password_ref = vault.put(uow, web_id, "password", password[:512])
                confirm_ref = vault.put(uow, web_id, "password_confirm", confirm[:512])
                accounts.confirm_password(uow, web_id, password_ref, confirm_ref)
                accounts.complete_password_reset(uow, web_id, token_ref=token_ref, password_ref=password_ref)
            finally:
                vault.discard(uow, web_id)
                uow.commit()

    try:
        await asyncio.to_thread(apply)
    except DspError as error:
        text = TEXTS[language].get(error.code, TEXTS[language]["other"])
        return render(language, token, text, done=error.code == "reset_token_invalid")
    return render(language, "", TEXTS[language]["done"], done=True)
