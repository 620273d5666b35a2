"""Views: personal values that Rasa never sees, filled into the assistant's messages by the gateway.

An action that shows document titles, authors or the name of a person sends only ids in its
message's ``custom`` (``{"view": ...}``); the gateway looks them up in the DSP domain layer for
*this* conversation (login, assistant designation and ownership checked there) and completes the
message. Rasa's tracker thus holds ids, never names or titles (docs/records-api.md).

Views:
    documents      {"ids": "12,9"}        lines "title — type — date — author" + one button per document
    document_file  {"document_id": "12"}  a short-lived download link in ``file``
    assisted       {"ids": "3,5"}         one button per person the user assists
    person         {"holder_id": "3"}     ``[[person]]`` in the text becomes the person's name
    studies        {"ids": "4,2"}         lines "CT scan of 5 March 2026 — description" + one button per study
    study          {"study_id": "4"}      ``[[study]]`` becomes the study in words
    key_image      {"instance_id": "17"}  ``image``: a short-lived URL of the key image as PNG
    viewer         {"study_id": "4"}      the web viewer's link (30 minutes, this conversation's session)
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
import unicodedata
from dataclasses import dataclass
from datetime import date
from typing import Any
from urllib.parse import quote

from babel.dates import format_date

from bot.dsp import DspError, UnitOfWork, assistants, documents, imaging
from bot.dsp import get_settings as dsp_settings
from bot.dsp.security import keyed_hash, same_hash
from bot.gateway import messages

logger = logging.getLogger("bot.gateway.views")

PERSON_PLACEHOLDER = "[[person]]"
STUDY_PLACEHOLDER = "[[study]]"
#: Lifetime of a key-image link and of a web-viewer link, in seconds.
IMAGE_TTL_SECONDS = 600
VIEWER_TTL_SECONDS = 1800
#: Babel locale per conversation language (British English writes "5 March 2026").
LOCALES = {"fr": "fr_LU", "de": "de_LU", "en": "en_GB"}
#: Lifetime of a download link, in seconds.
DOWNLOAD_TTL_SECONDS = 600
#: File-name extension per detected format.
EXTENSIONS = {"pdf": ".pdf", "jpeg": ".jpg", "png": ".png", "tiff": ".tif", "text": ".txt", "dicom": ".dcm"}

def localized_date(doc: documents.DocumentInfo, language: str) -> str:
    """Return the document's Luxembourg calendar date, ``dd.mm.yyyy`` in German, else ``dd/mm/yyyy``."""
    day = documents.local_date(doc.created_at)
    return day.replace("/", ".") if language == "de" else day


@dataclass
class Rendered:
    """What rendering one message produced.

    Attributes:
        text: The completed text (None: unchanged).
        buttons: (title, payload) pairs to add.
        file: Download description ``{"name", "mime_type", "size_bytes", "url"}`` or None.
    """

    text: str | None = None
    buttons: list[tuple[str, str]] | None = None
    file: dict[str, Any] | None = None
    image: str | None = None


def choice(entity: str, value: int | str) -> str:
    """Return the payload of a button that chooses `value` (same form as the actions' buttons)."""
    return "/choose" + json.dumps({entity: str(value)}, separators=(",", ":"))


def _ids(raw: Any) -> list[int]:
    return [int(part) for part in str(raw or "").split(",") if part.strip().isdigit()][:50]


def download_token(conversation_id: str, document_id: int, now: float | None = None) -> str:
    """Return a download token for one document of one conversation, valid `DOWNLOAD_TTL_SECONDS`.

    The token is ``<document id>.<expiry, unix seconds>.<HMAC>``; it works only with the
    conversation it was made for, and the document is read (and audited) again when downloaded.
    """
    expiry = int((now or time.time()) + DOWNLOAD_TTL_SECONDS)
    mac = keyed_hash("download", f"{conversation_id}|{document_id}|{expiry}")[:32]
    return f"{document_id}.{expiry}.{mac}"


def check_download_token(conversation_id: str, token: str, now: float | None = None) -> int | None:
    """Return the document id of a valid, unexpired token of this conversation, else None."""
    parts = token.split(".")
    if len(parts) != 3 or not all(re.fullmatch(r"[0-9]{1,12}", part) for part in parts[:2]):
        return None
    document_id, expiry = int(parts[0]), int(parts[1])
    if expiry < (now or time.time()):
        return None
    expected = keyed_hash("download", f"{conversation_id}|{document_id}|{expiry}")[:32]
    return document_id if same_hash(expected, parts[2]) else None


def seal(purpose: str, payload: dict[str, Any], ttl_seconds: int, now: float | None = None) -> str:
    """Return a signed, expiring token carrying `payload` (ids only), valid for `purpose` alone.

    The token is ``<base64url JSON>.<HMAC>``; the JSON gets the expiry as ``"e"`` (unix seconds).
    """
    body = dict(payload, e=int((now or time.time()) + ttl_seconds))
    raw = base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode().rstrip("=")
    return f"{raw}.{keyed_hash(purpose, raw)[:32]}"


def unseal(purpose: str, token: str, now: float | None = None) -> dict[str, Any] | None:
    """Return the payload of a valid, unexpired token of `purpose`, else None."""
    raw, _, mac = token.partition(".")
    if not raw or not mac or len(token) > 600 or not same_hash(keyed_hash(purpose, raw)[:32], mac):
        return None
    try:
        body = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except ValueError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("e"), int) or body["e"] < (now or time.time()):
        return None
    return body


def long_date(value: date | None, language: str) -> str | None:
    """Return a date in words in the conversation's language ("5 mars 2026"), or None."""
    return format_date(value, format="long", locale=LOCALES.get(language, "fr_LU")) if value else None


def study_in_words(study: imaging.StudyInfo, language: str) -> str:
    """Return e.g. "Scanner (CT) du 5 mars 2026 — Thorax" for a study."""
    what = " + ".join(dict.fromkeys(messages.modality(code, language) for code in study.modalities or ("OT",)))
    when = long_date(study.study_date, language)
    line = messages.imaging("line", language, what=what, date=when) if when else \
        messages.imaging("undated", language, what=what)
    details = [part for part in (study.description, study.body_part) if part]
    return f"{line} — {', '.join(details)}" if details else line


def file_name(info: documents.DocumentInfo) -> str:
    """Return a safe download file name for a document: its title and the extension of its format."""
    stem = "".join(ch if ch.isalnum() or ch in " -_" else "_" for ch in info.title).strip()[:60] or "document"
    return stem + EXTENSIONS.get(info.format, "")


def content_disposition(name: str) -> str:
    """Return an ``attachment`` Content-Disposition for any Unicode name (RFC 6266: ASCII fallback + RFC 5987)."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().replace('"', "_")
    if not ascii_name.rsplit(".", 1)[0].strip():
        ascii_name = "document" + ascii_name.strip()
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


def _render_sync(conversation_id: str, language: str, view: str, custom: dict[str, Any], text: str) -> Rendered:
    with UnitOfWork() as uow:
        if view == "documents":
            found = documents.describe_documents(uow, conversation_id, _ids(custom.get("ids")))
            lines = [
                "• " + " — ".join(part for part in (doc.title, messages.document_type(doc.doc_type, language),
                                                    localized_date(doc, language), doc.author_name) if part)
                for doc in found
            ]
            buttons = [(doc.title[:40], choice("document_id", doc.id)) for doc in found]
            return Rendered(text="\n".join([text, *lines]) if text else "\n".join(lines), buttons=buttons)
        if view == "document_file":
            ids = _ids(custom.get("document_id"))
            found = documents.describe_documents(uow, conversation_id, ids)
            if not found:
                return Rendered(text=messages.text("document_gone", language))
            doc = found[0]
            token = download_token(conversation_id, doc.id)
            return Rendered(file={
                "name": file_name(doc), "mime_type": doc.mime_type, "size_bytes": doc.size_bytes,
                "url": f"/v1/conversations/{conversation_id}/downloads/{token}",
            })
        if view == "assisted":
            buttons = []
            for holder_id in _ids(custom.get("ids")):
                try:
                    buttons.append((assistants.person_name(uow, conversation_id, holder_id),
                                    choice("holder_id", holder_id)))
                except DspError:
                    continue  # designation revoked since the action looked: not offered
            return Rendered(buttons=buttons)
        if view == "studies":
            found = imaging.describe_studies(uow, conversation_id, _ids(custom.get("ids")))
            lines = [f"• {study_in_words(study, language)}" for study in found]
            buttons = [(study_in_words(study, language)[:60], choice("study_id", study.id)) for study in found]
            return Rendered(text="\n".join([text, *lines]), buttons=buttons)
        if view == "study":
            found = imaging.describe_studies(uow, conversation_id, _ids(custom.get("study_id")))
            if not found:
                raise DspError("study_not_found")
            study = found[0]
            summary = study_in_words(study, language) + ". " + messages.imaging(
                "images", language, series=study.series_count, images=study.instance_count) + "."
            return Rendered(text=text.replace(STUDY_PLACEHOLDER, summary))
        if view == "key_image":
            ids = _ids(custom.get("instance_id"))
            if not ids:
                raise DspError("image_not_found")
            token = seal("image", {"c": conversation_id, "i": ids[0]}, IMAGE_TTL_SECONDS)
            return Rendered(image=f"/v1/conversations/{conversation_id}/images/{token}")
        if view == "viewer":
            ids = _ids(custom.get("study_id"))
            if not ids:
                raise DspError("study_not_found")
            token = seal("viewer", {"c": conversation_id, "s": ids[0], "l": language}, VIEWER_TTL_SECONDS)
            return Rendered(text=f"{text}\n{dsp_settings().public_url}/viewer/{token}")
        if view == "person":
            ids = _ids(custom.get("holder_id"))
            name = assistants.person_name(uow, conversation_id, ids[0]) if ids else None
            if name is None:
                raise DspError("not_designated")
            return Rendered(text=text.replace(PERSON_PLACEHOLDER, name))
    return Rendered()


async def render(conversation_id: str, language: str, custom: dict[str, Any], text: str | None) -> Rendered:
    """Render one view for this conversation; a refusal becomes a short localized message.

    Args:
        conversation_id: The conversation the message belongs to (its login is checked).
        language: fr, de or en.
        custom: The message's custom payload with ``view`` and its ids.
        text: The message's text from Rasa.

    Returns:
        The completed parts of the message.
    """
    view = str(custom.get("view") or "")
    try:
        return await asyncio.to_thread(_render_sync, conversation_id, language, view, custom, text or "")
    except DspError as error:
        logger.info("view %s refused: %s", view, error.code)
        return Rendered(text=messages.text("view_refused", language))
    except Exception as exc:  # noqa: BLE001 - a view never breaks the reply
        logger.error("view %s failed: %s", view, type(exc).__name__)
        return Rendered(text=messages.text("view_refused", language))
