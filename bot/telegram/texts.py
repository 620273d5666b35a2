"""The Telegram front end's own words (everything else comes from the gateway), in fr, de and en."""

from __future__ import annotations

import unicodedata

from bot.telegram.settings import SUPPORTED_LANGUAGES

TEXTS: dict[str, dict[str, str]] = {
    "welcome": {
        "fr": "Bonjour, je suis MyDSP Assistant, l'assistant du Dossier de Soins Partagé (Agence eSanté).\n"
              "Je peux activer votre compte eSanté, vous connecter, récupérer un mot de passe oublié, "
              "ajouter un document, gérer l'accès des médecins et agir pour une personne dont vous êtes "
              "l'assistant.\nÉcrivez simplement ce que vous souhaitez, par exemple « activer mon compte ». "
              "/help pour l'aide, /language pour changer de langue.",
        "de": "Guten Tag, ich bin MyDSP Assistant, der Assistent der Gemeinsamen Patientenakte (Agence eSanté).\n"
              "Ich kann Ihr eSanté-Konto aktivieren, Sie anmelden, ein vergessenes Passwort ersetzen, "
              "ein Dokument hinzufügen, den Zugriff von Ärzten verwalten und für eine Person handeln, "
              "deren Assistent Sie sind.\nSchreiben Sie einfach Ihr Anliegen, zum Beispiel „Konto aktivieren“. "
              "/help für Hilfe, /language für eine andere Sprache.",
        "en": "Hello, I am MyDSP Assistant, the assistant of the shared care record (DSP, Agence eSanté).\n"
              "I can activate your eSanté account, log you in, recover a forgotten password, add a document, "
              "manage doctors' access and act for a person whose assistant you are.\n"
              "Just type what you need, for example \"activate my account\". "
              "/help for help, /language to change the language.",
    },
    "help": {
        "fr": "Écrivez votre demande en quelques mots (« ajouter un document », « qui a accès à mon dossier ? ») "
              "et touchez les boutons pour choisir.\n"
              "Quand je demande une donnée privée (matricule, code, mot de passe), votre message est effacé "
              "du chat dès que je l'ai lu.\n"
              "Envoyez un document en pièce jointe (PDF, image ; 20 Mo au plus).\n\n"
              "/start : accueil\n/language : changer de langue\n/cancel : annuler la démarche en cours\n"
              "/logout : vous déconnecter\n\nHelpdesk : +352 27 12 50 18 33",
        "de": "Schreiben Sie Ihr Anliegen in wenigen Worten („Dokument hinzufügen“, „wer hat Zugriff auf meine "
              "Akte?“) und tippen Sie auf die Schaltflächen, um zu wählen.\n"
              "Wenn ich nach vertraulichen Daten frage (Matrikelnummer, Code, Passwort), wird Ihre Nachricht "
              "aus dem Chat gelöscht, sobald ich sie gelesen habe.\n"
              "Senden Sie ein Dokument als Anhang (PDF, Bild; höchstens 20 MB).\n\n"
              "/start: Begrüßung\n/language: Sprache wechseln\n/cancel: laufenden Vorgang abbrechen\n"
              "/logout: abmelden\n\nHelpdesk: +352 27 12 50 18 33",
        "en": "Type your request in a few words (\"add a document\", \"who has access to my record?\") and tap "
              "the buttons to choose.\n"
              "When I ask for private data (matricule, code, password), your message is deleted from the chat "
              "as soon as I have read it.\n"
              "Send a document as an attachment (PDF, image; 20 MB at most).\n\n"
              "/start: welcome\n/language: change the language\n/cancel: stop the current task\n"
              "/logout: log out\n\nHelpdesk: +352 27 12 50 18 33",
    },
    "choose_language": {
        "fr": "Choisissez votre langue :",
        "de": "Wählen Sie Ihre Sprache:",
        "en": "Choose your language:",
    },
    "language_set": {
        "fr": "D'accord, je vous réponds en français.",
        "de": "In Ordnung, ich antworte auf Deutsch.",
        "en": "All right, I will answer in English.",
    },
    "received": {
        "fr": "✓ Reçu. Votre message a été effacé du chat.",
        "de": "✓ Erhalten. Ihre Nachricht wurde aus dem Chat gelöscht.",
        "en": "✓ Received. Your message was deleted from the chat.",
    },
    "received_not_deleted": {
        "fr": "✓ Reçu. Je n'ai pas pu effacer votre message : effacez-le vous-même, s'il vous plaît.",
        "de": "✓ Erhalten. Ich konnte Ihre Nachricht nicht löschen: Bitte löschen Sie sie selbst.",
        "en": "✓ Received. I could not delete your message: please delete it yourself.",
    },
    "private_hint": {
        "fr": "🔒 Réponse privée : votre prochain message est transmis sans être lu par l'assistant "
              "conversationnel, puis effacé du chat. /cancel pour arrêter.",
        "de": "🔒 Private Antwort: Ihre nächste Nachricht wird weitergegeben, ohne dass der Dialogassistent "
              "sie liest, und dann aus dem Chat gelöscht. /cancel zum Abbrechen.",
        "en": "🔒 Private answer: your next message is passed on without the dialogue engine reading it, "
              "then deleted from the chat. /cancel to stop.",
    },
    "file_hint": {
        "fr": "📎 Envoyez le fichier en pièce jointe (PDF ou image, 20 Mo au plus).",
        "de": "📎 Senden Sie die Datei als Anhang (PDF oder Bild, höchstens 20 MB).",
        "en": "📎 Send the file as an attachment (PDF or image, 20 MB at most).",
    },
    "file_too_large": {
        "fr": "Ce fichier dépasse 20 Mo, la taille maximale qu'un bot Telegram peut recevoir. "
              "Envoyez un fichier plus petit, ou ajoutez-le dans l'application MyDSP.",
        "de": "Diese Datei ist größer als 20 MB, die Höchstgröße, die ein Telegram-Bot empfangen kann. "
              "Senden Sie eine kleinere Datei oder fügen Sie sie in der MyDSP-App hinzu.",
        "en": "This file is over 20 MB, the largest a Telegram bot can receive. "
              "Send a smaller file, or add it in the MyDSP app.",
    },
    "file_failed": {
        "fr": "Je n'ai pas pu récupérer ce fichier chez Telegram. Réessayez dans un instant.",
        "de": "Ich konnte diese Datei nicht von Telegram abrufen. Versuchen Sie es gleich noch einmal.",
        "en": "I could not fetch this file from Telegram. Try again in a moment.",
    },
    "send_failed": {
        "fr": "Je n'ai pas pu joindre ce fichier ici. Redemandez-le dans un instant, ou ouvrez-le dans "
              "l'application MyDSP.",
        "de": "Ich konnte diese Datei hier nicht anhängen. Fragen Sie gleich noch einmal danach oder öffnen Sie "
              "sie in der MyDSP-App.",
        "en": "I could not attach this file here. Ask for it again in a moment, or open it in the MyDSP app.",
    },
    "choice_expired": {
        "fr": "Ce choix n'est plus disponible.",
        "de": "Diese Auswahl ist nicht mehr verfügbar.",
        "en": "That choice is no longer available.",
    },
    "unavailable": {
        "fr": "L'assistant est momentanément indisponible. Rien n'est perdu : réessayez dans un instant, "
              "ou appelez le helpdesk au +352 27 12 50 18 33.",
        "de": "Der Assistent ist vorübergehend nicht erreichbar. Nichts ist verloren: Versuchen Sie es gleich "
              "noch einmal oder rufen Sie den Helpdesk unter +352 27 12 50 18 33 an.",
        "en": "The assistant is briefly unavailable. Nothing is lost: try again in a moment, "
              "or call the helpdesk on +352 27 12 50 18 33.",
    },
    "edited": {
        "fr": "Je ne tiens pas compte des messages modifiés : envoyez plutôt un nouveau message.",
        "de": "Bearbeitete Nachrichten berücksichtige ich nicht: Senden Sie bitte eine neue Nachricht.",
        "en": "I do not take edited messages into account: please send a new message instead.",
    },
    "sticker": {
        "fr": "Joli autocollant ! Je ne lis que le texte, les documents et les photos : écrivez-moi votre demande.",
        "de": "Schöner Sticker! Ich lese nur Text, Dokumente und Fotos: Schreiben Sie mir Ihr Anliegen.",
        "en": "Nice sticker! I only read text, documents and photos: type your request.",
    },
    "voice": {
        "fr": "Je ne peux pas écouter les messages vocaux ni les vidéos : écrivez-moi votre demande.",
        "de": "Sprachnachrichten und Videos kann ich nicht abhören: Schreiben Sie mir Ihr Anliegen.",
        "en": "I cannot listen to voice messages or videos: please type your request.",
    },
    "location": {
        "fr": "Je n'ai pas besoin de votre position, et je ne la garde pas. Écrivez-moi votre demande.",
        "de": "Ihren Standort brauche ich nicht, und ich speichere ihn nicht. Schreiben Sie mir Ihr Anliegen.",
        "en": "I do not need your location, and I do not keep it. Please type your request.",
    },
    "contact": {
        "fr": "Je ne garde pas les contacts partagés. Quand j'ai besoin d'un numéro, je le demande en privé.",
        "de": "Geteilte Kontakte speichere ich nicht. Wenn ich eine Nummer brauche, frage ich privat danach.",
        "en": "I do not keep shared contacts. When I need a number, I ask for it privately.",
    },
    "unsupported": {
        "fr": "Je ne lis que le texte, les documents et les photos : écrivez-moi votre demande.",
        "de": "Ich lese nur Text, Dokumente und Fotos: Schreiben Sie mir Ihr Anliegen.",
        "en": "I only read text, documents and photos: please type your request.",
    },
    "unknown_command": {
        "fr": "Je ne connais pas cette commande. /help donne la liste.",
        "de": "Diesen Befehl kenne ich nicht. /help zeigt die Liste.",
        "en": "I do not know that command. /help lists them.",
    },
    "private_only": {
        "fr": "Pour protéger vos données de santé, je ne réponds qu'en conversation privée. "
              "Écrivez-moi directement.",
        "de": "Zum Schutz Ihrer Gesundheitsdaten antworte ich nur im privaten Chat. Schreiben Sie mir direkt.",
        "en": "To protect your health data, I only answer in a private chat. Please write to me directly.",
    },
    "photo_caption": {"fr": "image", "de": "Bild", "en": "image"},
}

#: One-word replies that stay conversation while a private answer is pending (the gateway's command words,
#: compared without accents and case): "annuler" leaves the prompt instead of being taken as the secret.
ESCAPE_WORDS = frozenset({
    "annuler", "stop", "arreter", "abandonner", "aide", "retour", "helpdesk", "non",
    "abbrechen", "hilfe", "zuruck", "nein", "cancel", "help", "back", "quit", "no",
})

#: What /cancel and /logout say to the assistant, in each language (intents `cancel` and `log_out`).
COMMAND_UTTERANCES: dict[str, dict[str, str]] = {
    "cancel": {"fr": "annuler", "de": "abbrechen", "en": "cancel"},
    "logout": {"fr": "je veux me déconnecter", "de": "ich möchte mich abmelden", "en": "log me out"},
}

#: Deep-link parameters of /start (t.me/<bot>?start=<name>) and the request each opens.
DEEP_LINKS: dict[str, dict[str, str]] = {
    "activate": {"fr": "je veux activer mon compte eSanté", "de": "ich möchte mein eSanté-Konto aktivieren",
                 "en": "I want to activate my eSanté account"},
    "login": {"fr": "je veux me connecter à mon dossier", "de": "Ich möchte mich bei meiner Akte anmelden",
              "en": "I want to log in to my record"},
    "reset_password": {"fr": "j'ai oublié mon mot de passe", "de": "ich habe mein Passwort vergessen",
                       "en": "I forgot my password"},
    "add_document": {"fr": "je veux ajouter un document", "de": "ich möchte ein Dokument hinzufügen",
                     "en": "I want to add a document"},
    "my_documents": {"fr": "montre-moi mes documents", "de": "zeig mir meine Dokumente",
                     "en": "show me my documents"},
    "grant_access": {"fr": "je veux donner accès à mon médecin", "de": "ich möchte meinem Arzt Zugriff geben",
                     "en": "I want to give my doctor access"},
    "block_access": {"fr": "je veux bloquer l'accès à un médecin",
                     "de": "ich möchte einem Arzt den Zugriff sperren", "en": "block a doctor's access"},
    "unblock_access": {"fr": "je veux débloquer un professionnel de santé",
                       "de": "ich möchte einen gesperrten Arzt wieder freigeben",
                       "en": "I want to unblock a health professional"},
    "access_list": {"fr": "qui a accès à mon dossier ?", "de": "wer hat Zugriff auf meine Akte?",
                    "en": "who has access to my record?"},
    "imaging": {"fr": "où sont mes images médicales", "de": "wo sind meine medizinischen Bilder",
                "en": "where are my medical images"},
    "helpdesk": {"fr": "je veux parler à quelqu'un", "de": "ich möchte mit einem Menschen sprechen",
                 "en": "I want to talk to someone"},
}

#: The command menu registered with setMyCommands, per language.
COMMANDS: dict[str, list[tuple[str, str]]] = {
    "fr": [("start", "Accueil"), ("help", "Aide et commandes"), ("language", "Changer de langue"),
           ("cancel", "Annuler la démarche en cours"), ("logout", "Se déconnecter")],
    "de": [("start", "Begrüßung"), ("help", "Hilfe und Befehle"), ("language", "Sprache wechseln"),
           ("cancel", "Laufenden Vorgang abbrechen"), ("logout", "Abmelden")],
    "en": [("start", "Welcome"), ("help", "Help and commands"), ("language", "Change the language"),
           ("cancel", "Stop the current task"), ("logout", "Log out")],
}

LANGUAGE_NAMES = {"fr": "Français", "de": "Deutsch", "en": "English"}


def text(key: str, language: str | None) -> str:
    """Return the bot's own message `key` in `language` (French when unknown)."""
    variants = TEXTS[key]
    return variants.get(language or "fr", variants["fr"])


def is_escape_word(message: str) -> bool:
    """Return True when `message` is one command word ("annuler", "Abbrechen!"), not an answer."""
    words = message.split()
    if len(words) != 1:
        return False
    folded = unicodedata.normalize("NFKD", words[0].lower()).encode("ascii", "ignore").decode()
    return folded.strip(".!?") in ESCAPE_WORDS


def telegram_language(code: str | None, default: str) -> str:
    """Map Telegram's IETF `language_code` (e.g. `de-LU`) to fr, de or en; else `default`."""
    base = (code or "").split("-")[0].lower()
    return base if base in SUPPORTED_LANGUAGES else default
