"""Texts of the e-mails and SMS sent by the domain layer, in French, German and English.

Subjects contain no digits; a one-time code body contains the 6-digit code as its first group
of 6 or more digits (clients read it with a regex).
"""

from __future__ import annotations

from bot.dsp.settings import HELPDESK_PHONE

LANGUAGES = ("fr", "de", "en")

_OTP = {
    "fr": (
        "Votre code de confirmation eSanté",
        "Bonjour,\n\nVoici votre code de confirmation : {code}\n\n"
        "Il reste valable {minutes} minutes et ne sert qu'une fois. Ne le communiquez à personne.\n"
        "Si vous n'êtes pas à l'origine de cette demande, ignorez ce message.\n\n"
        "Agence eSanté - helpdesk {helpdesk}",
    ),
    "de": (
        "Ihr eSanté-Bestätigungscode",
        "Guten Tag,\n\nIhr Bestätigungscode lautet: {code}\n\n"
        "Er ist {minutes} Minuten gültig und nur einmal verwendbar. Geben Sie ihn niemandem weiter.\n"
        "Wenn Sie diese Anfrage nicht gestellt haben, ignorieren Sie diese Nachricht.\n\n"
        "Agence eSanté - Helpdesk {helpdesk}",
    ),
    "en": (
        "Your eSanté confirmation code",
        "Hello,\n\nYour confirmation code is: {code}\n\n"
        "It is valid for {minutes} minutes and works once. Do not share it with anyone.\n"
        "If you did not ask for it, ignore this message.\n\n"
        "Agence eSanté - helpdesk {helpdesk}",
    ),
}

_OTP_SMS = {
    "fr": "eSanté : votre code est {code} (valable {minutes} min). Ne le partagez pas.",
    "de": "eSanté: Ihr Code lautet {code} (gültig {minutes} Min.). Nicht weitergeben.",
    "en": "eSanté: your code is {code} (valid {minutes} min). Do not share it.",
}

_RESET = {
    "fr": (
        "Réinitialisation de votre mot de passe eSanté",
        "Bonjour,\n\nPour choisir un nouveau mot de passe, ouvrez ce lien :\n{link}\n\n"
        "Dans la conversation avec l'assistant, vous pouvez aussi coller ce jeton :\n{token}\n\n"
        "Le lien est valable {minutes} minutes et ne sert qu'une fois.\n"
        "Si vous n'avez rien demandé, ignorez ce message : votre mot de passe reste inchangé.\n\n"
        "Agence eSanté - helpdesk {helpdesk}",
    ),
    "de": (
        "Zurücksetzen Ihres eSanté-Passworts",
        "Guten Tag,\n\nUm ein neues Passwort festzulegen, öffnen Sie diesen Link:\n{link}\n\n"
        "Im Gespräch mit dem Assistenten können Sie auch dieses Token einfügen:\n{token}\n\n"
        "Der Link ist {minutes} Minuten gültig und nur einmal verwendbar.\n"
        "Wenn Sie nichts angefordert haben, ignorieren Sie diese Nachricht: "
        "Ihr Passwort bleibt unverändert.\n\n"
        "Agence eSanté - Helpdesk {helpdesk}",
    ),
    "en": (
        "Resetting your eSanté password",
        "Hello,\n\nTo choose a new password, open this link:\n{link}\n\n"
        "In the chat with the assistant you can also paste this token:\n{token}\n\n"
        "The link is valid for {minutes} minutes and works once.\n"
        "If you did not ask for this, ignore this message: your password stays unchanged.\n\n"
        "Agence eSanté - helpdesk {helpdesk}",
    ),
}


def _lang(language: str | None) -> str:
    code = (language or "fr").lower()[:2]
    return code if code in LANGUAGES else "fr"


def otp_message(channel: str, language: str | None, code: str, minutes: int) -> tuple[str, str]:
    """Return ``(subject, body)`` of a one-time-code message.

    Args:
        channel: ``email`` or ``sms``.
        language: ``fr``, ``de`` or ``en`` (anything else falls back to French).
        code: The 6-digit code.
        minutes: Validity in minutes.
    """
    lang = _lang(language)
    subject, body = _OTP[lang]
    if channel == "sms":
        body = _OTP_SMS[lang]
    return subject, body.format(code=code, minutes=minutes, helpdesk=HELPDESK_PHONE)


def reset_message(language: str | None, link: str, token: str, minutes: int) -> tuple[str, str]:
    """Return ``(subject, body)`` of the password-reset e-mail (link and pasteable token)."""
    subject, body = _RESET[_lang(language)]
    return subject, body.format(link=link, token=token, minutes=minutes, helpdesk=HELPDESK_PHONE)
