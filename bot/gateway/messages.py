"""The gateway's own few replies (everything else comes from Rasa's responses), in fr, de, en."""

from __future__ import annotations

MESSAGES: dict[str, dict[str, str]] = {
    "masked": {
        "fr": "Pour votre sécurité, je n'ai pas gardé le numéro, le code ou l'adresse que vous avez écrit. "
              "Quand j'en ai besoin, je vous le demande dans un champ privé.",
        "de": "Zu Ihrer Sicherheit habe ich die eingegebene Nummer, den Code oder die Adresse nicht übernommen. "
              "Wenn ich so etwas brauche, frage ich in einem privaten Eingabefeld danach.",
        "en": "For your safety I did not keep the number, code or address you typed. "
              "When I need one, I ask for it in a private field.",
    },
    "empty": {
        "fr": "Je n'ai rien reçu. Écrivez votre question, par exemple « activer mon compte ».",
        "de": "Ich habe nichts erhalten. Schreiben Sie Ihre Frage, zum Beispiel „Konto aktivieren“.",
        "en": "I received nothing. Type your question, for example \"activate my account\".",
    },
    "unknown_choice": {
        "fr": "Ce choix n'est plus disponible. Répondez à la dernière question, ou écrivez ce que vous souhaitez.",
        "de": "Diese Auswahl ist nicht mehr verfügbar. "
              "Antworten Sie auf die letzte Frage oder schreiben Sie Ihr Anliegen.",
        "en": "That choice is no longer available. Answer the last question, or type what you need.",
    },
    "nothing_pending": {
        "fr": "Je n'attends aucune donnée privée en ce moment. Dites-moi ce que vous souhaitez faire.",
        "de": "Ich erwarte gerade keine vertrauliche Eingabe. Sagen Sie mir, was Sie tun möchten.",
        "en": "I am not waiting for any private value right now. Tell me what you would like to do.",
    },
    "unavailable": {
        "fr": "L'assistant est momentanément indisponible. Rien n'est perdu : réessayez dans un instant, "
              "ou appelez le helpdesk au +352 27 12 50 18 33.",
        "de": "Der Assistent ist vorübergehend nicht erreichbar. Nichts ist verloren: Versuchen Sie es gleich noch "
              "einmal oder rufen Sie den Helpdesk unter +352 27 12 50 18 33 an.",
        "en": "The assistant is briefly unavailable. Nothing is lost: try again in a moment, "
              "or call the helpdesk on +352 27 12 50 18 33.",
    },
    "invalid": {
        "fr": "Cette demande n'a pas la forme attendue ; rien n'a été enregistré.",
        "de": "Diese Anfrage hat nicht die erwartete Form; nichts wurde gespeichert.",
        "en": "This request does not have the expected shape; nothing was stored.",
    },
    "too_long": {
        "fr": "Cette valeur est trop longue. Vérifiez-la et renvoyez-la.",
        "de": "Dieser Wert ist zu lang. Bitte prüfen und erneut senden.",
        "en": "That value is too long. Check it and send it again.",
    },
}


def text(key: str, language: str | None) -> str:
    """Return the gateway message `key` in `language` (French when unknown).

    Raises:
        KeyError: for an unknown key (a programming error).
    """
    variants = MESSAGES[key]
    return variants.get(language or "fr", variants["fr"])
