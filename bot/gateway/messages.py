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
    "busy": {
        "fr": "Je traite encore votre message précédent. Patientez un instant, puis réessayez.",
        "de": "Ich bearbeite noch Ihre vorherige Nachricht. Warten Sie einen Moment und versuchen Sie es dann erneut.",
        "en": "I am still working on your previous message. Wait a moment, then try again.",
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
    "no_answer": {
        "fr": "Je n'ai pas de réponse à cela. Dites « aide » pour voir ce que je sais faire, ou « annuler » pour "
              "repartir de zéro.",
        "de": "Darauf habe ich keine Antwort. Sagen Sie „Hilfe“, um zu sehen, was ich kann, oder „abbrechen“, um "
              "neu zu beginnen.",
        "en": "I have no answer to that. Say \"help\" to see what I can do, or \"cancel\" to start again.",
    },
    "document_gone": {
        "fr": "Je ne trouve pas ce document dans le dossier. Demandez « mes documents » pour voir la liste à jour.",
        "de": "Ich finde dieses Dokument nicht im Dossier. Fragen Sie nach „meine Dokumente“ für die aktuelle Liste.",
        "en": "I cannot find that document in the record. Ask for \"my documents\" to see the current list.",
    },
    "view_refused": {
        "fr": "Je ne peux pas afficher cela pour l'instant. Vérifiez que vous êtes toujours connecté, puis réessayez.",
        "de": "Das kann ich gerade nicht anzeigen. Prüfen Sie, ob Sie noch angemeldet sind, und versuchen Sie es "
              "erneut.",
        "en": "I cannot show that right now. Check that you are still logged in, then try again.",
    },
    "download_expired": {
        "fr": "Ce lien de téléchargement a expiré. Redemandez le document dans la conversation.",
        "de": "Dieser Download-Link ist abgelaufen. Fordern Sie das Dokument im Gespräch erneut an.",
        "en": "This download link has expired. Ask for the document again in the conversation.",
    },
    "file_missing": {
        "fr": "Aucun fichier reçu. Joignez un fichier (champ « file ») et renvoyez-le.",
        "de": "Keine Datei erhalten. Hängen Sie eine Datei an (Feld „file“) und senden Sie sie erneut.",
        "en": "No file received. Attach a file (field \"file\") and send it again.",
    },
}

#: Imaging modalities in words (DICOM Modality, PS3.3 C.7.3.1.1.1), per language.
MODALITIES: dict[str, dict[str, str]] = {
    "CT": {"fr": "Scanner (CT)", "de": "Computertomographie (CT)", "en": "CT scan"},
    "MR": {"fr": "IRM", "de": "Magnetresonanztomographie (MRT)", "en": "MRI scan"},
    "US": {"fr": "Échographie", "de": "Ultraschall", "en": "Ultrasound"},
    "CR": {"fr": "Radiographie", "de": "Röntgenaufnahme", "en": "X-ray"},
    "DX": {"fr": "Radiographie", "de": "Röntgenaufnahme", "en": "X-ray"},
    "MG": {"fr": "Mammographie", "de": "Mammographie", "en": "Mammogram"},
    "NM": {"fr": "Scintigraphie", "de": "Szintigraphie", "en": "Nuclear medicine scan"},
    "PT": {"fr": "TEP (PET scan)", "de": "PET-Untersuchung", "en": "PET scan"},
    "XA": {"fr": "Angiographie", "de": "Angiographie", "en": "Angiography"},
    "RF": {"fr": "Radioscopie", "de": "Durchleuchtung", "en": "Fluoroscopy"},
    "OT": {"fr": "Imagerie", "de": "Bildgebung", "en": "Imaging"},
}
#: Templates of the imaging views.
IMAGING: dict[str, dict[str, str]] = {
    "line": {"fr": "{what} du {date}", "de": "{what} vom {date}", "en": "{what} of {date}"},
    "undated": {"fr": "{what} (date inconnue)", "de": "{what} (Datum unbekannt)", "en": "{what} (date unknown)"},
    "images": {"fr": "{series} série(s), {images} image(s)", "de": "{series} Serie(n), {images} Bild(er)",
               "en": "{series} series, {images} image(s)"},
    "open_viewer": {"fr": "Ouvrir le viewer web", "de": "Web-Viewer öffnen", "en": "Open the web viewer"},
    "series": {"fr": "Série", "de": "Serie", "en": "Series"},
    "image": {"fr": "Image", "de": "Bild", "en": "Image"},
    "previous": {"fr": "Précédente", "de": "Zurück", "en": "Previous"},
    "next": {"fr": "Suivante", "de": "Weiter", "en": "Next"},
    "not_renderable": {"fr": "Cette image ne peut pas être affichée ici (format de compression non pris en charge).",
                       "de": "Dieses Bild kann hier nicht angezeigt werden (Kompressionsformat nicht unterstützt).",
                       "en": "This image cannot be shown here (compression format not supported)."},
    "viewer_gone": {"fr": "Ce lien du viewer a expiré ou la session est fermée. Redemandez vos images dans la "
                          "conversation.",
                    "de": "Dieser Viewer-Link ist abgelaufen oder die Sitzung ist beendet. Fordern Sie Ihre Bilder im "
                          "Gespräch erneut an.",
                    "en": "This viewer link has expired or the session has ended. Ask for your images again in the "
                          "conversation."},
}

#: Handoff notices (issue 6): what the user reads when an agent takes, answers or closes a ticket.
HANDOFF: dict[str, dict[str, str]] = {
    "claimed": {"fr": "{agent}, du helpdesk, s'occupe de votre demande {reference}. Écrivez ici : vos messages "
                      "lui sont transmis directement.",
                "de": "{agent} vom Helpdesk kümmert sich um Ihr Anliegen {reference}. Schreiben Sie hier: Ihre "
                      "Nachrichten gehen direkt an sie oder ihn.",
                "en": "{agent} from the helpdesk is handling your request {reference}. Write here: your messages "
                      "go straight to them."},
    "agent_reply": {"fr": "{agent} (helpdesk) : {text}", "de": "{agent} (Helpdesk): {text}",
                    "en": "{agent} (helpdesk): {text}"},
    "closed": {"fr": "{agent} a clôturé votre demande {reference}. C'est de nouveau moi, l'assistant : "
                     "que puis-je faire pour vous ?",
               "de": "{agent} hat Ihr Anliegen {reference} abgeschlossen. Jetzt bin wieder ich, der Assistent, "
                     "für Sie da: Was kann ich für Sie tun?",
               "en": "{agent} has closed your request {reference}. It is me, the assistant, again: "
                     "what can I do for you?"},
    "secret_not_relayed": {"fr": "Un agent du helpdesk lit cette conversation : n'écrivez ici ni mot de passe, "
                                 "ni code. Ce message ne lui a pas été transmis.",
                           "de": "Eine Person vom Helpdesk liest dieses Gespräch: Schreiben Sie hier weder "
                                 "Passwort noch Code. Diese Nachricht wurde nicht weitergegeben.",
                           "en": "A helpdesk agent reads this conversation: do not write a password or a code "
                                 "here. This message was not passed on."},
    "file_not_relayed": {"fr": "Un agent du helpdesk s'occupe de votre demande : les fichiers ne lui sont pas "
                               "transmis par ce chat. Écrivez-lui ce dont vous avez besoin.",
                         "de": "Der Helpdesk bearbeitet Ihr Anliegen: Dateien werden über diesen Chat nicht "
                               "weitergegeben. Schreiben Sie, was Sie brauchen.",
                         "en": "A helpdesk agent is handling your request: files are not passed on through this "
                               "chat. Write what you need."},
}


#: Labels of the document types a patient may add (the app's French label first).
DOCUMENT_TYPES: dict[str, dict[str, str]] = {
    "holder_expression": {"fr": "Expression du titulaire", "de": "Expression du titulaire",
                          "en": "Expression du titulaire"},
    "advance_directives": {"fr": "Directives anticipées", "de": "Patientenverfügung",
                           "en": "Advance directives"},
    "end_of_life_wishes": {"fr": "Dispositions de fin de vie", "de": "Verfügungen zum Lebensende",
                           "en": "End-of-life wishes"},
    "vaccination": {"fr": "Vaccinations", "de": "Impfungen", "en": "Vaccinations"},
    "imaging_report": {"fr": "Rapport d'imagerie", "de": "Bildgebungsbefund", "en": "Imaging report"},
}


def text(key: str, language: str | None) -> str:
    """Return the gateway message `key` in `language` (French when unknown).

    Raises:
        KeyError: for an unknown key (a programming error).
    """
    variants = MESSAGES[key]
    return variants.get(language or "fr", variants["fr"])


def document_type(code: str, language: str | None) -> str:
    """Return the label of a document type in `language` (the code itself for a type added by a professional)."""
    labels = DOCUMENT_TYPES.get(code)
    if labels is None:
        return code
    return labels.get(language or "fr", labels["fr"])


def modality(code: str, language: str | None) -> str:
    """Return an imaging modality in words (``"CT"`` -> ``"Scanner (CT)"``); unknown codes read as imaging."""
    labels = MODALITIES.get(code.upper(), MODALITIES["OT"])
    return labels.get(language or "fr", labels["fr"])


def imaging(key: str, language: str | None, **values: object) -> str:
    """Return an imaging template filled with `values`."""
    variants = IMAGING[key]
    return variants.get(language or "fr", variants["fr"]).format(**values)


def handoff(key: str, language: str | None, **values: object) -> str:
    """Return a handoff notice (`HANDOFF`) filled with `values` (agent, reference, text)."""
    variants = HANDOFF[key]
    return variants.get(language or "fr", variants["fr"]).format(**values)
