"""Documents of a record: upload (staged, then filed under a type), listing and reading.

Follows the MyDSP quick guide, "Ajout d'un document": the holder picks a file, chooses its
"Type de document" (e.g. "Expression du titulaire"), and finds it under "Mes documents".
Here the gateway receives the file and calls :func:`stage_upload`; the bot asks for the type
and :func:`file_document` files it (or :func:`discard_upload` drops it).

Rules:

* the format is detected from the content only (magic bytes with ``puremagic``, then a structure
  check per format: ``pypdf``, Pillow, ``pydicom``, UTF-8), never from the file name or the
  declared MIME type; accepted: PDF, JPEG, PNG, TIFF, plain UTF-8 text, DICOM (Part 10);
* limits: ``DSP_UPLOAD_MAX_MB`` per file and ``DSP_DOCUMENT_QUOTA_MB`` per record (documents
  and uploads still waiting for their type both count); the same content twice is refused;
* files are stored under ``<DSP_STATE_DIR>/documents/<uuid4 hex>`` (directory 0700, files 0600,
  written to a temporary name then renamed) with their SHA-256; a refused file is never written;
* a staged upload lives one hour unless filed (:func:`purge_expired_uploads` removes the rest);
* idempotent (issue 9), under a lock on the record (:func:`bot.dsp.idempotency.serialize`): the same
  bytes uploaded again in the conversation while they wait for their type give back the same staged
  upload (no second file); filing the same upload again (same ``upload_ref``, a retried request or
  two at once) gives back the document it became, for :data:`UPLOAD_TTL` after filing (its stored
  file is named after the reference, so the reference still finds it once the staged row is gone);
  the same content as a document of the record is refused (``file_duplicate``: "already there");
* every outcome is audited, refusals included, without any personal value (no file name, no
  title): the audit row says who, for whom, which record, which object (``document:<id>``).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import secrets
import struct
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import func, select

from bot.dsp import audit, clock, idempotency
from bot.dsp.access import _display_name as professional_name  # "Dr Anne Müller", as the directory shows
from bot.dsp.errors import AccessDenied, UploadRejected
from bot.dsp.orm import Document, Patient, Professional, StagedUpload
from bot.dsp.records import RecordContext, audit_record, audited_context, commit_and_raise, record_context
from bot.dsp.security import keyed_hash
from bot.dsp.settings import get_settings

if TYPE_CHECKING:
    from bot.dsp.uow import UnitOfWork

log = logging.getLogger(__name__)

#: Document types a holder can choose (quick guide, "Type de document").
DOCUMENT_TYPES: tuple[str, ...] = (
    "holder_expression",  # "Expression du titulaire" (quick guide p.16-21): the holder's own documents
    "advance_directives",  # "Directives anticipées"
    "end_of_life_wishes",  # "Dispositions de fin de vie"
    "vaccination",  # "Vaccinations"
)

#: Accepted formats (detected from the content) and the MIME type they are served with.
#: Text documents are always UTF-8 (the gateway adds ``charset=utf-8`` when serving them).
ACCEPTED_FORMATS: dict[str, str] = {
    "pdf": "application/pdf",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "tiff": "image/tiff",
    "text": "text/plain",
    "dicom": "application/dicom",
}

#: The accepted formats as shown to the user (param ``formats`` of ``file_type_refused``).
FORMATS_LABEL = "PDF, JPEG, PNG, TIFF, TXT, DICOM"

#: Lifetime of a staged upload that was not filed.
UPLOAD_TTL = timedelta(hours=1)

#: Longest title kept from a file name, in characters.
MAX_TITLE_LENGTH = 80
#: Largest image accepted, in pixels (a 50-megapixel photo); decoding it to check it stays bounded.
MAX_CHECK_PIXELS = 50_000_000

_MB = 1024 * 1024
_LOCAL_ZONE = "Europe/Luxembourg"

# Magic bytes of programs: refused outright, whatever the rest of the content.
_EXECUTABLE_MAGIC = (
    b"MZ",  # Windows PE / DOS
    b"\x7fELF",  # Linux and most Unix
    b"\xfe\xed\xfa\xce",  # Mach-O 32-bit
    b"\xfe\xed\xfa\xcf",  # Mach-O 64-bit
    b"\xce\xfa\xed\xfe",  # Mach-O 32-bit, little-endian
    b"\xcf\xfa\xed\xfe",  # Mach-O 64-bit, little-endian
    b"\xca\xfe\xba\xbe",  # Mach-O universal binary / Java class
    b"#!",  # scripts (shebang): text, but a program, not a document
)
# Text that a browser or viewer would run or render as something else than plain text.
_ACTIVE_TEXT_PREFIXES = ("<!doctype", "<html", "<svg", "<?xml", "<script", "{\\rtf", "%!ps")
# C0 and C1 control characters other than tab, line feed, vertical tab, form feed, carriage return.
_CONTROL_CHARS = re.compile(r"[\x01-\x08\x0e-\x1f\x7f-\x9f]")
# Share of control characters above which "text" is taken for binary data.
_MAX_CONTROL_SHARE = 0.01

# What puremagic may answer (MIME type or extension) -> our format.
_MAGIC_FORMATS = {
    "application/pdf": "pdf",
    "image/jpeg": "jpeg",
    "image/png": "png",
    "image/tiff": "tiff",
    "application/dicom": "dicom",
    ".pdf": "pdf",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".jfif": "jpeg",
    ".jpe": "jpeg",
    ".png": "png",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".dcm": "dicom",
}
# Pillow's names of the image formats we accept (MPO: JPEG with extra pictures, from many phones).
_PILLOW_FORMATS = {"jpeg": {"JPEG", "MPO"}, "png": {"PNG"}, "tiff": {"TIFF"}}
_DICOM_SEQUENCE_DELIMITER = {True: b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", False: b"\xff\xfe\xe0\xdd\x00\x00\x00\x00"}
_DICOM_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


@dataclass(frozen=True)
class StagedFile:
    """A checked upload waiting for its document type.

    Attributes:
        ref: Opaque reference (``up_...``) to pass to :func:`file_document` or :func:`discard_upload`.
        format: One of :data:`ACCEPTED_FORMATS`.
        size_bytes: Size of the file, in bytes.
    """

    ref: str
    format: str
    size_bytes: int


@dataclass(frozen=True)
class DocumentInfo:
    """A document of the record, as shown in "Mes documents".

    Attributes:
        id: Internal id (meaningful only within its record: another record's id is "not found").
        title: Title (from the file name, or ``Document <dd/mm/yyyy>``); personal, never sent to Rasa.
        doc_type: One of :data:`DOCUMENT_TYPES`.
        format: One of :data:`ACCEPTED_FORMATS`.
        mime_type: MIME type to serve it with.
        size_bytes: Size in bytes.
        created_at: When it was filed (naive UTC).
        author_name: The holder's or assistant's "given family" name, or the professional's name
            from the directory ("Dr Anne Müller").
        author_kind: ``holder``, ``assistant`` (a designated assistant added it) or ``professional``.
        sha256: SHA-256 of the content, 64 hex digits.
    """

    id: int
    title: str
    doc_type: str
    format: str
    mime_type: str
    size_bytes: int
    created_at: datetime
    author_name: str
    author_kind: str
    sha256: str


# --------------------------------------------------------------------------- helpers


_fail = commit_and_raise  # shared with the other record services (bot/dsp/records.py)
_context = audited_context


def refusal_params(code: str) -> dict[str, int | str]:
    """Return the parameters of an upload refusal, for callers that only know its code.

    Args:
        code: An error code, e.g. ``file_too_large``.

    Returns:
        ``{"limit_mb": int}`` for ``file_too_large``, ``{"quota_mb": int}`` for ``quota_exceeded``,
        ``{"formats": str}`` for ``file_type_refused``; an empty dict for any other code.
    """
    settings = get_settings()
    if code == "file_too_large":
        return {"limit_mb": settings.upload_max_mb}
    if code == "quota_exceeded":
        return {"quota_mb": settings.document_quota_mb}
    if code == "file_type_refused":
        return {"formats": FORMATS_LABEL}
    return {}


def _rejected(code: str) -> UploadRejected:
    return UploadRejected(code, **refusal_params(code))


def local_date(value: datetime) -> str:
    """Format a stored (naive UTC) time as the Luxembourg calendar date ``dd/mm/yyyy``.

    Args:
        value: Naive UTC datetime, as stored.

    Returns:
        e.g. ``"05/03/2026"`` (falls back to the UTC date without a time-zone database).
    """
    try:
        zone = ZoneInfo(_LOCAL_ZONE)
    except ZoneInfoNotFoundError:  # pragma: no cover - minimal systems without tzdata
        return value.strftime("%d/%m/%Y")
    return value.replace(tzinfo=ZoneInfo("UTC")).astimezone(zone).strftime("%d/%m/%Y")


def sanitize_title(filename: str | None) -> str:
    """Turn a client-given file name into a display title.

    Keeps the last path part without its extension, drops control and formatting characters
    (bidirectional overrides included), turns underscores into spaces, collapses white space,
    and cuts at :data:`MAX_TITLE_LENGTH` characters.

    Args:
        filename: The name the client gave, or None (e.g. a photo).

    Returns:
        The title, possibly ``""``.
    """
    if not filename:
        return ""
    name = re.split(r"[\\/]", filename)[-1]
    if "." in name:  # the extension goes (".pdf" alone gives "")
        name = name.rsplit(".", 1)[0]
    kept = []
    for ch in unicodedata.normalize("NFC", name):
        if ch == "_" or ch.isspace():
            kept.append(" ")
        elif unicodedata.category(ch)[0] != "C":  # Cc controls, Cf formatting (bidi overrides), ...
            kept.append(ch)
    name = " ".join("".join(kept).split()).strip(" .")
    return name[:MAX_TITLE_LENGTH].rstrip()


def _info(uow: UnitOfWork, row: Document) -> DocumentInfo:
    if row.author_professional_id is not None:
        pro = uow.session.get(Professional, row.author_professional_id)
        kind, name = "professional", professional_name(pro) if pro is not None else ""
    else:
        author = uow.session.get(Patient, row.author_patient_id) if row.author_patient_id is not None else None
        kind = "assistant" if author is not None and author.id != row.patient_id else "holder"
        name = f"{author.given_name} {author.family_name}".strip() if author is not None else ""
    return DocumentInfo(
        id=row.id,
        title=row.title,
        doc_type=row.doc_type,
        format=row.format,
        mime_type=row.mime_type,
        size_bytes=row.size_bytes,
        created_at=row.created_at,
        author_name=name,
        author_kind=kind,
        sha256=row.sha256,
    )


def _lock_record(uow: UnitOfWork, context: RecordContext) -> None:
    """Serialize the writes of documents to this record (across processes, until commit)."""
    idempotency.serialize(uow, f"record:{context.holder_patient_id}")


def _upload_storage_name(conversation_id: str, upload_ref: str) -> str:
    """The file name of a staged upload, derived from its reference (32 hex digits, keyed).

    The document filed from it keeps the name, so a retried filing finds it from the reference alone.
    """
    return keyed_hash("upload-file", f"{conversation_id}\x00{upload_ref}")[:32]


def _documents_dir() -> Path:
    return get_settings().documents_dir


def store_file(data: bytes, storage_name: str | None = None) -> str:
    """Write a file into the documents directory, atomically, readable by the owner only.

    Args:
        data: The content.
        storage_name: Name to (re)write; a new uuid4 hex by default.

    Returns:
        The storage name (uuid4 hex) under ``<DSP_STATE_DIR>/documents/``.
    """
    directory = _documents_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    name = storage_name or uuid.uuid4().hex
    temp = directory / f".{name}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, directory / name)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return name


def _remove_file(storage_name: str) -> None:
    (_documents_dir() / storage_name).unlink(missing_ok=True)


# --------------------------------------------------------------------------- format detection


def _damaged() -> UploadRejected:
    return UploadRejected("file_damaged")


def _check_pdf(data: bytes) -> None:
    # A complete PDF ends with %%EOF (readers look in the last 1024 bytes); a truncated one does not.
    if b"%%EOF" not in data[-1024:]:
        raise _damaged()
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            raise _damaged()  # protected by a password: nobody could open it from the record
        pages = reader.pages
        if len(pages) < 1:
            raise _damaged()
        for index, page in enumerate(pages):
            _ = page.mediabox
            if index < 3:
                page.get_contents()
    except UploadRejected:
        raise
    except Exception as error:  # pypdf raises many kinds of errors on broken files
        log.info("pdf check failed: %s", type(error).__name__)
        raise _damaged() from None


def _check_image(data: bytes, fmt: str) -> None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in _PILLOW_FORMATS[fmt]:
                raise _damaged()
            width, height = image.size
            if width < 1 or height < 1 or width * height > MAX_CHECK_PIXELS:
                raise _damaged()
            if image.format == "JPEG":
                image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))  # decodes all data, 1/64 memory
            image.load()
    except UploadRejected:
        raise
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError, EOFError) as error:
        # truncated ("image file is truncated"), corrupt, or too many pixels
        log.info("image check failed: %s", type(error).__name__)
        raise _damaged() from None


def _check_dicom(data: bytes) -> None:
    import pydicom

    buffer = io.BytesIO(data)
    try:
        dataset = pydicom.dcmread(buffer, stop_before_pixels=True)
    except Exception as error:  # InvalidDicomError, struct.error, ...
        log.info("dicom check failed: %s", type(error).__name__)
        raise _damaged() from None
    try:
        _check_dicom_dataset(data, dataset, buffer.tell())
    except UploadRejected:
        raise
    except Exception as error:  # noqa: BLE001 - any parser failure on a damaged header is a refusal
        log.info("dicom check failed: %s", type(error).__name__)
        raise _damaged() from None


def _check_dicom_dataset(data: bytes, dataset: Any, header_end: int) -> None:
    from pydicom.dataelem import RawDataElement
    from pydicom.uid import UID

    meta = dataset.file_meta
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if not syntax or not meta.get("MediaStorageSOPClassUID") or "SOPClassUID" not in dataset:
        raise _damaged()
    # pydicom reads short values without complaint: compare each value with its declared length.
    for tag in dataset.keys():
        raw = dataset.get_item(tag)
        if (
            isinstance(raw, RawDataElement)
            and raw.value is not None
            and raw.length != 0xFFFFFFFF
            and len(raw.value) != raw.length
        ):
            raise _damaged()
    _check_dicom_pixels(data[header_end:], UID(str(syntax)))


def _check_dicom_pixels(rest: bytes, syntax: object) -> None:
    """Check that the pixel data element (where the header read stopped) is complete."""
    if not rest:
        return  # no pixel data (structured report, encapsulated document...)
    little = getattr(syntax, "is_little_endian", True) if getattr(syntax, "is_transfer_syntax", False) else True
    implicit = getattr(syntax, "is_implicit_VR", False) if getattr(syntax, "is_transfer_syntax", False) else False
    order = "<" if little else ">"
    if len(rest) < 8:
        raise _damaged()
    if implicit:
        length, header = struct.unpack(order + "I", rest[4:8])[0], 8
    elif rest[4:6] in _DICOM_LONG_VRS:
        if len(rest) < 12:
            raise _damaged()
        length, header = struct.unpack(order + "I", rest[8:12])[0], 12
    else:
        length, header = struct.unpack(order + "H", rest[6:8])[0], 8
    if length == 0xFFFFFFFF:  # encapsulated (compressed) frames end with a sequence delimiter
        if rest.find(_DICOM_SEQUENCE_DELIMITER[little], header) < 0:
            raise _damaged()
    elif header + length > len(rest):
        raise _damaged()


def _check_text(data: bytes) -> bool:
    """True if the content is plain UTF-8 text (a BOM is accepted) and not markup or a script."""
    if b"\x00" in data:
        return False
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return False
    if not text.strip():
        return False
    head = text.lstrip()[:32].lower()
    if head.startswith(_ACTIVE_TEXT_PREFIXES):
        return False
    return len(_CONTROL_CHARS.findall(text)) <= len(text) * _MAX_CONTROL_SHARE


def _magic_format(data: bytes) -> str | None:
    """The accepted format puremagic recognises first (by confidence), if any."""
    import puremagic

    try:
        matches = puremagic.magic_string(data)
    except Exception:  # PureError: nothing recognised
        return None
    for match in matches:
        fmt = _MAGIC_FORMATS.get(match.mime_type) or _MAGIC_FORMATS.get(match.extension.lower())
        if fmt is not None:
            return fmt
    return None


def detect_format(data: bytes) -> str:
    """Detect the format of a file from its content and check its structure.

    Neither the file name nor a declared MIME type is ever used. Order: DICOM (128-byte preamble
    then ``DICM``), programs (refused), the magic bytes of PDF / JPEG / PNG / TIFF with a
    structure check (``pypdf``, Pillow), then plain UTF-8 text.

    Args:
        data: The whole content.

    Returns:
        One of :data:`ACCEPTED_FORMATS`.

    Raises:
        UploadRejected: ``file_empty``; ``file_type_refused`` {formats} (programs, archives,
            office files, markup, non-UTF-8 text...); ``file_damaged`` (a truncated or corrupt
            PDF, image or DICOM file, a password-protected PDF, an image with too many pixels).
    """
    if not data:
        raise UploadRejected("file_empty")
    if len(data) >= 132 and data[128:132] == b"DICM":
        _check_dicom(data)
        return "dicom"
    if data.startswith(_EXECUTABLE_MAGIC):
        raise _rejected("file_type_refused")
    fmt = _magic_format(data)
    if fmt == "pdf":
        _check_pdf(data)
        return fmt
    if fmt in _PILLOW_FORMATS:
        _check_image(data, fmt)
        return fmt
    if _check_text(data):
        return "text"
    raise _rejected("file_type_refused")


# --------------------------------------------------------------------------- services


def _holder_bytes(uow: UnitOfWork, holder_id: int, now: datetime) -> int:
    """Bytes the record uses: its documents and its uploads still waiting for a type."""
    documents = uow.session.scalar(
        select(func.coalesce(func.sum(Document.size_bytes), 0)).where(Document.patient_id == holder_id)
    )
    staged = uow.session.scalar(
        select(func.coalesce(func.sum(StagedUpload.size_bytes), 0)).where(
            StagedUpload.patient_id == holder_id, StagedUpload.expires_at > now
        )
    )
    return int(documents or 0) + int(staged or 0)


def stage_upload(uow: UnitOfWork, conversation_id: str, data: bytes, filename: str | None) -> StagedFile:
    """Check an uploaded file and keep it, for one hour, until its document type is chosen.

    Args:
        uow: Unit of work.
        conversation_id: The gateway conversation.
        data: The whole content (the gateway enforces a body limit before reading it).
        filename: The name given by the client (only its sanitized stem is kept, as title).

    Returns:
        The staged file (reference, detected format, size). A file of the same conversation still
        waiting for its type is replaced (deleted), unless it has the same content: then that staged
        file is returned (a retried upload; audited ``already_staged``) and nothing is written.

    Raises:
        AuthError: ``not_logged_in``, ``terms_pending`` (checked first: nothing is read or stored).
        AccessDenied: ``assistant_revoked``.
        UploadRejected: ``file_empty``; ``file_too_large`` {limit_mb}; ``file_type_refused``
            {formats}; ``file_damaged``; ``file_duplicate`` {date: dd/mm/yyyy of the document
            with the same content}; ``quota_exceeded`` {quota_mb}. Nothing is written on a refusal.
    """
    action = "document.upload"
    context = _context(uow, conversation_id, action)
    data = bytes(data)
    settings = get_settings()
    size = len(data)
    fmt = ""

    def refuse(error: UploadRejected) -> NoReturn:
        if fmt:
            audit_record(uow, context, action, error.code, format=fmt, size_bytes=size)
        else:
            audit_record(uow, context, action, error.code, size_bytes=size)
        _fail(uow, error)

    try:  # the content alone: no lock held while a file is parsed
        if size == 0:
            raise UploadRejected("file_empty")
        if size > settings.upload_max_mb * _MB:
            raise _rejected("file_too_large")
        fmt = detect_format(data)
    except UploadRejected as error:
        refuse(error)
    digest = hashlib.sha256(data).hexdigest()
    _lock_record(uow, context)
    existing = uow.session.scalars(
        select(Document)
        .where(Document.patient_id == context.holder_patient_id, Document.sha256 == digest)
        .order_by(Document.created_at)
    ).first()
    if existing is not None:
        refuse(UploadRejected("file_duplicate", date=local_date(existing.created_at)))
    now = clock.now()
    waiting = _staged_in_conversation(uow, conversation_id)
    for earlier in waiting:
        if (
            earlier.sha256 == digest
            and earlier.expires_at > now
            and (earlier.patient_id, earlier.author_patient_id) == (context.holder_patient_id, context.user_patient_id)
        ):  # the same bytes again (a retried upload): the same staged upload, no second file
            audit_record(uow, context, action, "already_staged", f"upload:{earlier.id}", format=fmt, size_bytes=size)
            uow.commit()
            return StagedFile(ref=earlier.ref, format=earlier.format, size_bytes=earlier.size_bytes)
    if _holder_bytes(uow, context.holder_patient_id, now) + size > settings.document_quota_mb * _MB:
        refuse(_rejected("quota_exceeded"))
    # One file waits for its type per conversation: a new one replaces (and deletes) the earlier one.
    for earlier in waiting:
        audit_record(uow, context, "document.discard", "replaced", f"upload:{earlier.id}")
        _drop_staged(uow, earlier)
    ref = "up_" + secrets.token_urlsafe(18)
    storage_name = store_file(data, _upload_storage_name(conversation_id, ref))
    try:
        row = StagedUpload(
            ref=ref,
            conversation_id=conversation_id,
            patient_id=context.holder_patient_id,
            author_patient_id=context.user_patient_id,
            storage_name=storage_name,
            sha256=digest,
            size_bytes=size,
            format=fmt,
            mime_type=ACCEPTED_FORMATS[fmt],
            title=sanitize_title(filename),
            created_at=now,
            expires_at=now + UPLOAD_TTL,
        )
        uow.session.add(row)
        uow.session.flush()
        audit_record(uow, context, action, "ok", f"upload:{row.id}", format=fmt, size_bytes=size)
        uow.commit()
    except BaseException:
        _remove_file(storage_name)
        raise
    return StagedFile(ref=row.ref, format=fmt, size_bytes=size)


def _staged_in_conversation(uow: UnitOfWork, conversation_id: str) -> list[StagedUpload]:
    return list(
        uow.session.scalars(
            select(StagedUpload)
            .where(StagedUpload.conversation_id == conversation_id)
            .execution_options(populate_existing=True)
        )
    )


def _filed_from(uow: UnitOfWork, context: RecordContext, upload_ref: str, now: datetime) -> Document | None:
    """The document filed from this upload reference, by this user, on this record, within UPLOAD_TTL."""
    if not isinstance(upload_ref, str) or not upload_ref:
        return None
    return uow.session.scalars(
        select(Document).where(
            Document.storage_name == _upload_storage_name(context.conversation_id, upload_ref),
            Document.patient_id == context.holder_patient_id,
            Document.author_patient_id == context.user_patient_id,
            Document.created_at > now - UPLOAD_TTL,
        )
    ).first()


def _staged(uow: UnitOfWork, context: RecordContext, upload_ref: str) -> StagedUpload | None:
    """The staged upload behind a reference, if it was made in this conversation, by this user, for this record."""
    return uow.session.scalars(
        select(StagedUpload).where(
            StagedUpload.ref == upload_ref,
            StagedUpload.conversation_id == context.conversation_id,
            StagedUpload.patient_id == context.holder_patient_id,
            StagedUpload.author_patient_id == context.user_patient_id,
        )
        .execution_options(populate_existing=True)
    ).first()


def _drop_staged(uow: UnitOfWork, row: StagedUpload) -> None:
    _remove_file(row.storage_name)
    uow.session.delete(row)


def file_document(uow: UnitOfWork, conversation_id: str, upload_ref: str, doc_type: str) -> DocumentInfo:
    """File a staged upload in the record under a document type ("Mes documents").

    Args:
        uow: Unit of work.
        conversation_id: The gateway conversation.
        upload_ref: Reference returned by :func:`stage_upload`.
        doc_type: One of :data:`DOCUMENT_TYPES`.

    Returns:
        The new document. Its title is the file name's stem, or ``Document <dd/mm/yyyy>``. Filing
        the same upload again (a retried request, or two at once) returns the document it became,
        unchanged, for :data:`UPLOAD_TTL` after filing (audited ``already_filed``).

    Raises:
        AuthError: ``not_logged_in``, ``terms_pending``.
        AccessDenied: ``assistant_revoked``.
        UploadRejected: ``upload_expired`` (unknown, expired, or staged in another conversation,
            by another user or for another record); ``document_type_unknown`` (the upload stays
            staged); ``file_duplicate`` {date} when the same content was filed meanwhile from
            another upload (the upload is dropped).
    """
    action = "document.file"
    context = _context(uow, conversation_id, action)
    _lock_record(uow, context)
    row = _staged(uow, context, upload_ref)
    now = clock.now()
    if row is None:
        filed = _filed_from(uow, context, upload_ref, now)
        if filed is not None:
            audit_record(uow, context, action, "already_filed", f"document:{filed.id}")
            uow.commit()
            return _info(uow, filed)
    if row is None or row.expires_at <= now:
        if row is not None:
            _drop_staged(uow, row)
        audit_record(uow, context, action, "upload_expired")
        _fail(uow, UploadRejected("upload_expired"))
    if doc_type not in DOCUMENT_TYPES:
        audit_record(uow, context, action, "document_type_unknown", f"upload:{row.id}")
        _fail(uow, UploadRejected("document_type_unknown"))
    existing = uow.session.scalars(
        select(Document).where(Document.patient_id == row.patient_id, Document.sha256 == row.sha256)
    ).first()
    if existing is not None:  # the same file was staged twice and the other copy was filed first
        audit_record(uow, context, action, "file_duplicate", f"upload:{row.id}")
        _drop_staged(uow, row)
        _fail(uow, UploadRejected("file_duplicate", date=local_date(existing.created_at)))
    document = Document(
        patient_id=row.patient_id,
        doc_type=doc_type,
        title=row.title or f"Document {local_date(now)}",
        format=row.format,
        mime_type=row.mime_type,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        storage_name=row.storage_name,
        created_at=now,
        author_patient_id=row.author_patient_id,
    )
    uow.session.add(document)
    uow.session.delete(row)
    uow.session.flush()
    audit_record(uow, context, action, "ok", f"document:{document.id}", doc_type=doc_type, format=document.format)
    uow.commit()
    return _info(uow, document)


def discard_upload(uow: UnitOfWork, conversation_id: str, upload_ref: str) -> None:
    """Drop a staged upload and delete its file (the user cancelled); unknown references are ignored.

    Args:
        uow: Unit of work.
        conversation_id: The gateway conversation.
        upload_ref: Reference returned by :func:`stage_upload`.

    Raises:
        AuthError: ``not_logged_in``, ``terms_pending``.
        AccessDenied: ``assistant_revoked``.
    """
    action = "document.discard"
    context = _context(uow, conversation_id, action)
    row = _staged(uow, context, upload_ref)
    if row is None:
        return  # already filed, replaced or expired: nothing was read or written
    audit_record(uow, context, action, "ok", f"upload:{row.id}")
    _drop_staged(uow, row)
    uow.commit()


def list_documents(uow: UnitOfWork, conversation_id: str) -> list[DocumentInfo]:
    """List the documents of the record ("Mes documents"), newest first (audited ``document.list``).

    Args:
        uow: Unit of work.
        conversation_id: The gateway conversation.

    Returns:
        The documents of the record acted on (the holder's, or the assisted person's).

    Raises:
        AuthError: ``not_logged_in``, ``terms_pending``.
        AccessDenied: ``assistant_revoked``.
    """
    action = "document.list"
    context = _context(uow, conversation_id, action)
    rows = list(
        uow.session.scalars(
            select(Document)
            .where(Document.patient_id == context.holder_patient_id)
            .order_by(Document.created_at.desc(), Document.id.desc())
        )
    )
    infos = [_info(uow, row) for row in rows]
    audit_record(uow, context, action, "ok", count=len(infos))
    uow.commit()
    return infos


def describe_documents(uow: UnitOfWork, conversation_id: str, ids: list[int]) -> list[DocumentInfo]:
    """Describe documents for the gateway's views (titles and authors never go through Rasa).

    Not audited: the listing that produced the ids was. Ids of another record, unknown ids and
    repeated ids are skipped.

    Args:
        uow: Unit of work.
        conversation_id: The gateway conversation.
        ids: Internal document ids, in display order.

    Returns:
        The record's documents among ``ids``, in the given order.

    Raises:
        AuthError: ``not_logged_in``, ``terms_pending``.
        AccessDenied: ``assistant_revoked``.
    """
    context = record_context(uow, conversation_id, "document.describe")
    wanted: list[int] = []
    for value in ids:
        if isinstance(value, int) and not isinstance(value, bool) and value not in wanted:
            wanted.append(value)
    rows: dict[int, Document] = {}
    if wanted:
        query = select(Document).where(Document.id.in_(wanted), Document.patient_id == context.holder_patient_id)
        rows = {row.id: row for row in uow.session.scalars(query)}
    infos = [_info(uow, rows[doc_id]) for doc_id in wanted if doc_id in rows]
    uow.commit()  # the session's last-seen time
    return infos


def read_document(uow: UnitOfWork, conversation_id: str, document_id: int) -> tuple[DocumentInfo, bytes]:
    """Read a document of the record (audited ``document.read``, object ``document:<id>``).

    Args:
        uow: Unit of work.
        conversation_id: The gateway conversation.
        document_id: Internal id, as listed.

    Returns:
        The document and its content (checked against its SHA-256).

    Raises:
        AuthError: ``not_logged_in``, ``terms_pending``.
        AccessDenied: ``assistant_revoked``; ``document_not_found`` for an unknown id and for an
            id of another record alike (audited as a refusal), and for a stored file that is
            missing or altered (audited ``storage_error``, logged).
    """
    action = "document.read"
    context = _context(uow, conversation_id, action)
    object_ref = f"document:{document_id}"
    row = uow.session.get(Document, document_id) if isinstance(document_id, int) else None
    if row is None or row.patient_id != context.holder_patient_id:
        audit_record(uow, context, action, "document_not_found", object_ref)
        _fail(uow, AccessDenied("document_not_found"))
    try:
        data = (_documents_dir() / row.storage_name).read_bytes()
    except OSError:
        data = None
    if data is None or hashlib.sha256(data).hexdigest() != row.sha256:
        log.error("stored file of document %s is missing or altered", row.id)
        audit_record(uow, context, action, "storage_error", object_ref)
        _fail(uow, AccessDenied("document_not_found"))
    audit_record(uow, context, action, "ok", object_ref)
    info = _info(uow, row)
    uow.commit()
    return info, data


def purge_expired_uploads(uow: UnitOfWork) -> int:
    """Delete the staged uploads whose hour has passed, with their files (run periodically).

    Args:
        uow: Unit of work.

    Returns:
        How many were deleted.
    """
    rows = list(uow.session.scalars(select(StagedUpload).where(StagedUpload.expires_at <= clock.now())))
    for row in rows:
        _drop_staged(uow, row)
    if rows:
        audit.record(uow, actor="system", action="document.purge_uploads", outcome="ok", detail={"count": len(rows)})
    uow.commit()
    return len(rows)
