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
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from bot.dsp import DspError, UnitOfWork, assistants, documents
from bot.dsp.security import keyed_hash, same_hash
from bot.gateway import messages

logger = logging.getLogger("bot.gateway.views")

PERSON_PLACEHOLDER = "[[person]]"
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
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    document_id, expiry = int(parts[0]), int(parts[1])
    if expiry < (now or time.time()):
        return None
    expected = keyed_hash("download", f"{conversation_id}|{document_id}|{expiry}")[:32]
    return document_id if same_hash(expected, parts[2]) else None


def file_name(info: documents.DocumentInfo) -> str:
    """Return a safe download file name for a document: its title and the extension of its format."""
    stem = "".join(ch if ch.isalnum() or ch in " -_" else "_" for ch in info.title).strip()[:60] or "document"
    return stem + EXTENSIONS.get(info.format, "")


def _render_sync(conversation_id: str, language: str, view: str, custom: dict[str, Any], text: str) -> Rendered:
    with UnitOfWork() as uow:
        if view == "documents":
            found = documents.describe_documents(uow, conversation_id, _ids(custom.get("ids")))
            lines = [
                f"• {doc.title} — {messages.document_type(doc.doc_type, language)} — "
                f"{localized_date(doc, language)} — {doc.author_name}"
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
