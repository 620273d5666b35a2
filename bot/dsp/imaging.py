"""Imaging store: the DICOM studies of a record, their reports and key images, rendered for chat.

Follows the MyDSP quick guide, "Accès à l'imagerie médicale" (p.31-33): under "Imagerie médicale"
the holder finds their studies (scanner, IRM...), the report of each ("Images radiologiques ou
autres...") and its key images ("Key images Document Radiology"), and can open a web viewer.

Indexing (:func:`import_dicom`, ``dsp import-dicom PATH --matricule M``): every file of a folder is
read with pydicom, header only (``stop_before_pixels``, ``defer_size``), and filed as an instance of
a series of a study of the record (keyed by the Study / Series / SOP Instance UIDs). The file is
copied to ``<DSP_STATE_DIR>/imaging/<uuid4 hex>`` (directory 0700, file 0600) with its SHA-256.
Structured reports and key object selections (SOP classes ``1.2.840.10008.5.1.4.1.1.88.*``) are
indexed without images; other objects without pixel data (RT plans, waveforms, DICOMDIR) are refused.

Key images: the instances referenced by a Key Object Selection document of the study, when one was
imported and references instances that are there; otherwise, in each series, the middle image by
instance number (a renderable one when the series has any). A multi-frame instance is rendered at
its middle frame unless a frame is asked for.

Safety: a bad file never hurts the server. Files above ``DSP_DICOM_MAX_MB`` are refused unread;
reads never allocate more than the file holds (a declared length past the end of the file is
refused as ``dicom_truncated``, not read); the pixel data length is checked against rows x columns
x frames x samples x bits before anything is decoded; one frame is decoded at a time and a frame
above :data:`MAX_FRAME_PIXELS` pixels is not rendered; a compressed frame's own header must not
declare more pixels than the DICOM header; a deflated data set must inflate within the size limit.
Every exception of pydicom or a decoder becomes a refusal code: ``file_empty``, ``file_too_large``,
``dicom_invalid``, ``dicom_truncated``, ``dicom_no_pixels``, or (for rendering) ``image_not_renderable``.

Privacy: names, IDs, UIDs, dates and descriptions from headers are never logged; this module logs
only codes and internal ids, and withholds the messages of pydicom and of the decoder plugins (they
may quote header values). The file's own patient name and ID are not stored: the patient is the
record's holder, named by matricule on import. Reads of a record are audited (``imaging.list``,
``imaging.open``, ``imaging.render``) through :func:`bot.dsp.records.audit_record`, so a designated
assistant acting for the holder is recorded with both ids.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import stat
import struct
import unicodedata
import uuid
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from sqlalchemy import case, func, select

from bot.dsp import audit, clock
from bot.dsp.errors import AccessDenied, DspError, ImagingError, UploadRejected
from bot.dsp.orm import Document, ImagingInstance, ImagingSeries, ImagingStudy, Professional
from bot.dsp.records import audit_record, audited_context, commit_and_raise, record_context
from bot.dsp.settings import get_settings

if TYPE_CHECKING:
    import numpy as np
    from pydicom.dataset import Dataset

    from bot.dsp.uow import UnitOfWork

log = logging.getLogger(__name__)

#: Largest frame rendered, in pixels (rows x columns); larger ones are indexed but not rendered.
MAX_FRAME_PIXELS = 100_000_000
#: Most frames an instance may declare.
MAX_FRAMES = 50_000
#: Bounds of ``max_size`` (the longest side of a rendered PNG), in pixels.
MIN_RENDER_SIZE, MAX_RENDER_SIZE = 16, 4096
#: Header values longer than this (bytes) are read lazily by pydicom, never at indexing.
DEFER_SIZE = 4096
#: Most top-level elements a header may have (real ones have hundreds; a file of tiny elements
#: would otherwise cost pydicom far more memory than its size).
MAX_HEADER_ELEMENTS = 10_000

#: SOP class of a Key Object Selection document (the key images of a study).
KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
#: Structured documents (SR, KOS...): indexed without images.
_STRUCTURED_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
_MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"
_DEFLATED = "1.2.840.10008.1.2.1.99"
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_PHOTOMETRICS = {
    "MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR",
}  # fmt: skip
#: Modalities listed after the image modalities of a study.
_NON_IMAGE_MODALITIES = ("SR", "KO", "PR", "DOC")
_MAX_FRAGMENTS = 1_000_000
_MAX_KOS_REFERENCES = 10_000
_MB = 1024 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MODALITY = re.compile(r"[^A-Z0-9_]")


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class StudyInfo:
    """An imaging study, as listed under "Imagerie médicale".

    Attributes:
        id: Internal id (meaningful only within its record: another record's id is "not found").
        study_date: Date of the study (from the header), or None.
        modalities: Modalities of its series, image modalities first: ``("CT",)``, ``("MR", "SR")``.
        description: Study description from the header (personal: never sent to Rasa), or ``""``.
        body_part: Body part examined, or None.
        series_count: Number of series.
        instance_count: Number of instances (images, reports and key object selections).
        has_report: True when the study has a report document.
        key_image_count: Number of key images.
    """

    id: int
    study_date: date | None
    modalities: tuple[str, ...]
    description: str
    body_part: str | None
    series_count: int
    instance_count: int
    has_report: bool
    key_image_count: int


@dataclass(frozen=True)
class InstanceInfo:
    """One instance of a series.

    Attributes:
        id: Internal id (pass it to :func:`render_instance`).
        series_id: Internal id of its series.
        instance_number: Instance number from the header, or None.
        frames: Number of frames (0 for a structured report or key object selection).
        is_key: True for a key image.
        renderable: True when it can be rendered as PNG here (otherwise: the web viewer of the
            DSP, or nothing for a document without pixels).
    """

    id: int
    series_id: int
    instance_number: int | None
    frames: int
    is_key: bool
    renderable: bool


@dataclass(frozen=True)
class SeriesInfo:
    """A series of a study, with its instances in instance-number order."""

    id: int
    modality: str
    description: str
    instances: list[InstanceInfo]


@dataclass(frozen=True)
class StudyDetail:
    """A study opened: its series, its key images and its report (a document of the record)."""

    study: StudyInfo
    series: list[SeriesInfo]
    key_images: list[InstanceInfo]
    report_document_id: int | None


@dataclass(frozen=True)
class RenderedImage:
    """A PNG image (8-bit grey or RGB) and its size in pixels."""

    png: bytes
    width: int
    height: int


@dataclass(frozen=True)
class ImportResult:
    """What an import did.

    Attributes:
        studies: Studies that received at least one new instance.
        instances: Instances added.
        refused: ``(file name, code)`` for each file refused (and the report, if it was refused).
    """

    studies: int
    instances: int
    refused: list[tuple[str, str]]


@dataclass(frozen=True)
class DicomHeader:
    """What indexing keeps of a DICOM file (its representation shows no header value).

    Attributes:
        kind: ``image`` (pixel data), ``document`` (structured report) or ``kos`` (key object selection).
        transfer_syntax: Transfer syntax UID.
        sop_class_uid: SOP class UID.
        modality: Modality (``CT``, ``MR``...; ``OT`` when absent).
        frames: Number of frames (0 without pixel data).
        rows: Rows (0 without pixel data).
        columns: Columns (0 without pixel data).
        samples: Samples per pixel.
        bits_allocated: Bits allocated per sample.
        bits_stored: Bits stored per sample.
        photometric: Photometric interpretation.
        not_renderable: Why the image cannot be rendered here (a code safe to log), or None.
        sop_instance_uid: SOP Instance UID.
        study_instance_uid: Study Instance UID.
        series_instance_uid: Series Instance UID.
        study_date: Study date, or None.
        study_description: Study description (``""`` when absent).
        series_description: Series description.
        body_part: Body part examined, or None.
        series_number: Series number, or None.
        instance_number: Instance number, or None.
        key_references: SOP Instance UIDs a key object selection references.
        patient_key: SHA-256 of the file's patient ID and name, to compare files without keeping
            either (``""`` when both are empty).
        reading_physicians: Names of the physicians reading the study (DICOM person names,
            ``Family^Given``), to find a report's author in the directory.
    """

    kind: str
    transfer_syntax: str
    sop_class_uid: str
    modality: str
    frames: int
    rows: int
    columns: int
    samples: int
    bits_allocated: int
    bits_stored: int
    photometric: str
    not_renderable: str | None
    sop_instance_uid: str = field(repr=False)
    study_instance_uid: str = field(repr=False)
    series_instance_uid: str = field(repr=False)
    study_date: date | None = field(repr=False)
    study_description: str = field(repr=False)
    series_description: str = field(repr=False)
    body_part: str | None = field(repr=False)
    series_number: int | None = field(repr=False)
    instance_number: int | None = field(repr=False)
    key_references: frozenset[str] = field(repr=False, default=frozenset())
    patient_key: str = field(repr=False, default="")
    reading_physicians: tuple[str, ...] = field(repr=False, default=())


# --------------------------------------------------------------------------- third-party logs


class _WithheldMessage(logging.Filter):
    """Replace the text of a third-party record: pydicom and the decoders may quote header values."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        record.msg = f"{record.name}: {record.levelname.lower()} withheld (it may quote DICOM header values)"
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        return True


_WITHHOLD = _WithheldMessage()
_GUARDED_PREFIXES = ("pydicom", "pylibjpeg", "openjpeg", "libjpeg", "rle", "gdcm")
_guarded: set[str] = set()


def _guard_third_party_logs() -> None:
    """Withhold the log messages of pydicom and its plugins; stop pydicom's value-quoting validation.

    Logger filters apply to the records of their own logger only, so every existing logger under
    the names of :data:`_GUARDED_PREFIXES` gets the filter (checked at each read: plugins create
    their loggers when first imported).
    """
    import pydicom.config

    if not _guarded:
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        for module in ("pydicom.pixels.decoders.base", "pydicom.pixels.utils", "pylibjpeg", "openjpeg", "libjpeg"):
            try:
                __import__(module)
            except Exception:  # noqa: S112 - an optional plugin that is not installed
                continue
    names = [name for name in list(logging.root.manager.loggerDict) if name.split(".")[0] in _GUARDED_PREFIXES]
    for name in [*_GUARDED_PREFIXES, *names]:
        if name not in _guarded:
            logging.getLogger(name).addFilter(_WITHHOLD)
            _guarded.add(name)


# --------------------------------------------------------------------------- reading sources


class _ClampedReader(io.BufferedReader):
    """A file reader that never reads (nor allocates) past the end of the file.

    ``BufferedReader.read(n)`` allocates ``n`` bytes before reading: a DICOM length field of 4 GiB
    would allocate 4 GiB. Here ``n`` is first cut to what the file still holds.
    """

    def __init__(self, raw: io.RawIOBase, size: int) -> None:
        super().__init__(raw)  # type: ignore[arg-type]
        self._size = size

    def read(self, size: int | None = -1) -> bytes:
        left = max(0, self._size - self.tell())
        return super().read(left if size is None or size < 0 else min(size, left))


@dataclass
class _Source:
    fp: BinaryIO
    size: int

    def pread(self, offset: int, length: int) -> bytes:
        if offset >= self.size or length <= 0:
            return b""
        self.fp.seek(offset)
        return self.fp.read(min(length, self.size - offset))


@contextmanager
def _opened(source: Path | str | bytes | bytearray | memoryview) -> Iterator[_Source]:
    """Open a file (regular files only) or bytes for reading, after the size checks.

    Raises:
        ImagingError: ``file_empty``; ``file_too_large`` {limit_mb}; ``dicom_invalid`` (missing,
            unreadable, or not a regular file).
    """
    _guard_third_party_logs()
    limit_mb = get_settings().dicom_max_mb
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        _check_size(len(data), limit_mb)
        yield _Source(io.BytesIO(data), len(data))
        return
    try:
        info = os.stat(source)
    except (OSError, ValueError):
        raise ImagingError("dicom_invalid") from None
    if not stat.S_ISREG(info.st_mode):
        raise ImagingError("dicom_invalid")  # a directory, a pipe, a device...
    _check_size(info.st_size, limit_mb)
    try:
        raw = open(source, "rb", buffering=0)  # noqa: SIM115 - closed below, through the reader
    except OSError:
        raise ImagingError("dicom_invalid") from None
    reader = _ClampedReader(raw, info.st_size)  # type: ignore[arg-type]
    try:
        yield _Source(reader, info.st_size)
    finally:
        reader.close()


def _check_size(size: int, limit_mb: int) -> None:
    if size == 0:
        raise ImagingError("file_empty")
    if size > limit_mb * _MB:
        raise ImagingError("file_too_large", limit_mb=limit_mb)


# --------------------------------------------------------------------------- header parsing


@dataclass
class _Pixels:
    """Where the pixel data element's value is, and how long it says it is."""

    offset: int
    length: int
    encapsulated: bool


@dataclass
class _Parsed:
    header: DicomHeader
    pixels: _Pixels | None
    #: The whole data set, kept only for deflated files (they are inflated in memory anyway).
    dataset: Dataset | None = None
    #: The data set is not encoded as its transfer syntax says (pydicom found it out while reading).
    mislabelled: bool = False


def _scan_meta(src: _Source, start: int) -> tuple[str, int]:
    """Walk the file meta elements (group 0002, explicit VR little endian) from `start`.

    Returns:
        The transfer syntax UID (``""`` if absent) and the offset of the data set.
    """
    pos, syntax = start, ""
    for _ in range(64):
        head = src.pread(pos, 12)
        if len(head) < 8 or struct.unpack("<H", head[:2])[0] != 0x0002:
            break
        elem = struct.unpack("<H", head[2:4])[0]
        if head[4:6] in _LONG_VRS:
            if len(head) < 12:
                raise ImagingError("dicom_truncated")
            length, size = struct.unpack("<I", head[8:12])[0], 12
        else:
            length, size = struct.unpack("<H", head[6:8])[0], 8
        if elem == 0x0010:
            syntax = src.pread(pos + size, min(length, 64)).rstrip(b"\x00 ").decode("ascii", "replace")
        pos += size + length
    return syntax, pos


def _looks_like_meta(head: bytes) -> bool:
    """True if the bytes start with a file meta element without the 128-byte preamble and ``DICM``."""
    return len(head) >= 8 and head[:2] == b"\x02\x00" and head[4:6].isalpha() and head[4:6].isupper()


def _check_inflated_size(src: _Source, offset: int) -> None:
    """Refuse a deflated data set that would inflate past the size limit (a "zip bomb")."""
    limit = get_settings().dicom_max_mb * _MB
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    src.fp.seek(offset)
    total = 0
    while chunk := src.fp.read(1 << 20):
        while chunk:
            total += len(inflater.decompress(chunk, 1 << 20))
            chunk = inflater.unconsumed_tail
            if total > limit:
                raise ImagingError("file_too_large", limit_mb=get_settings().dicom_max_mb)
        if inflater.eof:
            break


def _read_dataset(src: _Source) -> tuple[Dataset, int, bool]:
    """Read the header (and the whole data set of a deflated file).

    Returns:
        The data set, where the read stopped, and whether the file is deflated.
    """
    from pydicom.errors import InvalidDicomError
    from pydicom.filereader import read_partial

    head = src.pread(0, 140)
    if len(head) >= 132 and head[128:132] == b"DICM":
        force, meta_start = False, 132
    elif _looks_like_meta(head):
        force, meta_start = True, 0  # no preamble, but the meta is there: read with force
    else:
        raise ImagingError("dicom_invalid")
    syntax, data_start = _scan_meta(src, meta_start)
    deflated = syntax == _DEFLATED
    if deflated:
        _check_inflated_size(src, data_start)
    seen = 0

    def stop_when(tag: int, _vr: str | None, _length: int) -> bool:
        nonlocal seen
        seen += 1
        if seen > MAX_HEADER_ELEMENTS:
            raise ImagingError("dicom_invalid")
        return not deflated and tag in _PIXEL_TAGS  # stop before the pixel data (read whole when deflated)

    src.fp.seek(0)
    try:
        dataset = read_partial(src.fp, stop_when, defer_size=None if deflated else DEFER_SIZE, force=force)
    except ImagingError:
        raise
    except InvalidDicomError:
        raise ImagingError("dicom_invalid") from None
    except (EOFError, struct.error):
        raise ImagingError("dicom_truncated") from None
    except Exception as error:  # pydicom raises many kinds of errors on broken files
        log.info("dicom header unreadable: %s", type(error).__name__)
        raise ImagingError("dicom_invalid") from None
    return dataset, src.fp.tell(), deflated


def _check_lengths(src: _Source, dataset: Dataset, stopped_at: int) -> None:
    """Refuse a header whose elements claim more bytes than the file holds."""
    from pydicom.dataelem import RawDataElement

    if stopped_at > src.size:
        raise ImagingError("dicom_truncated")  # pydicom skipped a deferred value past the end
    for tag in list(dataset.keys()):
        try:
            raw = dataset.get_item(tag, keep_deferred=True)
        except Exception:
            raise ImagingError("dicom_invalid") from None
        if not isinstance(raw, RawDataElement) or raw.length == 0xFFFFFFFF:
            continue
        if raw.value is None:
            if raw.value_tell is not None and raw.value_tell + raw.length > src.size:
                raise ImagingError("dicom_truncated")
        elif len(raw.value) != raw.length:
            raise ImagingError("dicom_truncated")
    if stopped_at >= src.size and len(dataset):
        # pydicom stops quietly on a partial element header at the end: the last element must end the file
        last = dataset.get_item(list(dataset.keys())[-1], keep_deferred=True)
        if isinstance(last, RawDataElement) and last.length != 0xFFFFFFFF and last.value_tell is not None:
            if last.value_tell + last.length < src.size:
                raise ImagingError("dicom_truncated")


def _found_encoding(dataset: Dataset, syntax: Any) -> tuple[bool, bool]:
    """(implicit VR, little endian) as pydicom read the data set: some files say explicit VR and are not."""
    from pydicom.dataelem import RawDataElement

    for tag in reversed(list(dataset.keys())):
        raw = dataset.get_item(tag, keep_deferred=True)
        if isinstance(raw, RawDataElement):
            return bool(raw.is_implicit_VR), bool(raw.is_little_endian)
    return bool(syntax.is_implicit_VR), bool(syntax.is_little_endian)


def _pixel_element(src: _Source, pos: int, little: bool, implicit: bool) -> _Pixels | None:
    """Read the header of the pixel data element where pydicom stopped (``stop_before_pixels``)."""
    head = src.pread(pos, 12)
    if len(head) < 8:
        return None
    order = "<" if little else ">"
    group, elem = struct.unpack(order + "HH", head[:4])
    if (group << 16 | elem) not in _PIXEL_TAGS:
        return None
    if implicit:
        length, size = struct.unpack(order + "I", head[4:8])[0], 8
    elif head[4:6] in _LONG_VRS:
        if len(head) < 12:
            raise ImagingError("dicom_truncated")
        length, size = struct.unpack(order + "I", head[8:12])[0], 12
    else:
        length, size = struct.unpack(order + "H", head[6:8])[0], 8
    return _Pixels(offset=pos + size, length=length, encapsulated=length == 0xFFFFFFFF)


def _walk_fragments(src: _Source, offset: int) -> None:
    """Check that encapsulated pixel data (items, then a sequence delimiter) lies within the file."""
    pos = offset
    for _ in range(_MAX_FRAGMENTS):
        item = src.pread(pos, 8)
        if len(item) < 8:
            raise ImagingError("dicom_truncated")
        group, elem, length = struct.unpack("<HHI", item)
        if (group, elem) == (0xFFFE, 0xE0DD):
            return
        if (group, elem) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF:
            raise ImagingError("dicom_invalid")
        pos += 8 + length
        if pos > src.size:
            raise ImagingError("dicom_truncated")
    raise ImagingError("dicom_invalid")


def _clean(value: object, limit: int) -> str:
    text = " ".join(str(part) for part in value) if isinstance(value, list | tuple) else str(value)
    text = _CONTROL.sub(" ", unicodedata.normalize("NFC", text)).replace("^", " ")
    kept = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cf", "Co", "Cs"))
    return " ".join(kept.split())[:limit].rstrip()


def _value(dataset: Dataset, keyword: str) -> Any:
    """A header value converted by pydicom, or None when absent, deferred (too long) or malformed."""
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import RawDataElement

    tag = tag_for_keyword(keyword)
    if tag is None or tag not in dataset:
        return None
    try:
        raw = dataset.get_item(tag, keep_deferred=True)
        if isinstance(raw, RawDataElement) and raw.value is None:
            return None
        return dataset[tag].value
    except Exception:
        return None


def _text(dataset: Dataset, keyword: str, limit: int = 255) -> str:
    value = _value(dataset, keyword)
    return "" if value is None else _clean(value, limit)


def _uid(dataset: Dataset, keyword: str) -> str:
    value = _text(dataset, keyword, 200).strip("\x00 ")
    if not value or len(value) > 64:
        raise ImagingError("dicom_invalid")
    return value


def _optional_int(dataset: Dataset, keyword: str) -> int | None:
    value = _value(dataset, keyword)
    try:
        return int(str(value).strip()) if value is not None and str(value).strip() else None
    except ValueError:
        return None


def _required_int(dataset: Dataset, keyword: str) -> int:
    value = _value(dataset, keyword)
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        raise ImagingError("dicom_invalid") from None
    if number < 0:
        raise ImagingError("dicom_invalid")
    return number


def _study_date(dataset: Dataset) -> date | None:
    text = _text(dataset, "StudyDate", 32)
    match = re.fullmatch(r"(\d{4})\.?(\d{2})\.?(\d{2})", text)
    if not match:
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


def _frames(dataset: Dataset) -> int:
    """Number of Frames: 1 when absent or empty; a malformed value ("1A") makes the file invalid."""
    from pydicom.dataelem import RawDataElement

    if 0x00280008 not in dataset:
        return 1
    value = _value(dataset, "NumberOfFrames")
    if value is None or not str(value).strip():
        raw = dataset.get_item(0x00280008, keep_deferred=True)
        if isinstance(raw, RawDataElement) and raw.value and raw.value.strip(b"\x00 "):
            raise ImagingError("dicom_invalid")  # a value pydicom could not convert
        return 1
    frames = _required_int(dataset, "NumberOfFrames")
    if frames < 1 or frames > MAX_FRAMES:
        raise ImagingError("dicom_invalid")
    return frames


def _kos_references(dataset: Dataset) -> frozenset[str]:
    """The SOP Instance UIDs a key object selection references (evidence and content items)."""
    found: set[str] = set()

    def add_from(items: Any) -> None:
        for item in items or ():
            for ref in item.get("ReferencedSOPSequence") or ():
                uid = str(ref.get("ReferencedSOPInstanceUID") or "").strip("\x00 ")
                if uid and len(found) < _MAX_KOS_REFERENCES:
                    found.add(uid)

    try:
        for study in dataset.get("CurrentRequestedProcedureEvidenceSequence") or ():
            add_from(study.get("ReferencedSeriesSequence"))
        pending, depth = [dataset.get("ContentSequence")], 0
        while pending and depth < 8:
            level = [item for items in pending for item in (items or ())]
            add_from(level)
            pending, depth = [item.get("ContentSequence") for item in level], depth + 1
    except Exception as error:
        log.info("key object selection unreadable: %s", type(error).__name__)
    return frozenset(found)


def _person_names(dataset: Dataset, keyword: str) -> tuple[str, ...]:
    value = _value(dataset, keyword)
    if value is None:
        return ()
    names = value if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue" else [value]
    return tuple(str(name)[:200] for name in list(names)[:8] if str(name).strip())


def _patient_key(dataset: Dataset) -> str:
    ident = _text(dataset, "PatientID", 64).casefold()
    name = _text(dataset, "PatientName", 200).casefold()
    return hashlib.sha256(f"{ident}|{name}".encode()).hexdigest() if ident or name else ""


def _modality(dataset: Dataset, kind: str) -> str:
    value = _MODALITY.sub("", _text(dataset, "Modality", 16).upper())
    return value or {"kos": "KO", "document": "SR"}.get(kind, "OT")


def _renderability(syntax: Any, rows: int, columns: int, samples: int, bits: int, photometric: str) -> str | None:
    """Why an image cannot be rendered here, before trying (a code safe to log), or None."""
    from pydicom.pixels import get_decoder

    if rows < 1 or columns < 1:
        return "no_size"
    if rows * columns > MAX_FRAME_PIXELS:
        return "too_many_pixels"
    if samples not in (1, 3) or bits not in (1, 8, 16, 32, 64):
        return "pixel_format"
    if photometric not in _PHOTOMETRICS or (photometric == "PALETTE COLOR" and samples != 1):
        return "photometric"
    try:
        if not get_decoder(syntax).is_available:
            return "syntax_no_decoder"
    except Exception:
        return "syntax_unsupported"
    return None


def _parse(src: _Source) -> _Parsed:
    """Read and check a DICOM file's header for indexing and rendering.

    Raises:
        ImagingError: ``dicom_invalid``, ``dicom_truncated``, ``dicom_no_pixels``, ``file_too_large``.
    """
    from pydicom.pixels.utils import get_expected_length
    from pydicom.uid import UID

    dataset, stopped_at, deflated = _read_dataset(src)
    meta = getattr(dataset, "file_meta", None)
    if meta is None:
        raise ImagingError("dicom_invalid")
    syntax_text = str(meta.get("TransferSyntaxUID") or "").strip("\x00 ")
    if not syntax_text or len(syntax_text) > 64:
        raise ImagingError("dicom_invalid")
    syntax = UID(syntax_text)
    if not syntax.is_transfer_syntax:
        raise ImagingError("dicom_invalid")  # private syntax: its data set cannot even be parsed
    pixels: _Pixels | None
    mislabelled = False
    if deflated:
        raw = dataset.get_item(0x7FE00010) if 0x7FE00010 in dataset else None
        pixels = None if raw is None else _Pixels(0, len(raw.value or b""), syntax.is_encapsulated)
    else:
        _check_lengths(src, dataset, stopped_at)
        implicit, little = _found_encoding(dataset, syntax)
        mislabelled = (implicit, little) != (syntax.is_implicit_VR, syntax.is_little_endian)
        pixels = _pixel_element(src, stopped_at, little, implicit)
    sop_class = _text(dataset, "SOPClassUID", 64) or _clean(meta.get("MediaStorageSOPClassUID") or "", 64)
    if pixels is not None:
        kind = "image"
    elif sop_class.startswith(_STRUCTURED_PREFIX):
        kind = "kos" if sop_class == KOS_SOP_CLASS else "document"
    else:
        raise ImagingError("dicom_no_pixels")  # RT plan, waveform, DICOMDIR, image without its pixels...
    if sop_class == _MEDIA_DIRECTORY:
        raise ImagingError("dicom_no_pixels")
    uids = (_uid(dataset, "StudyInstanceUID"), _uid(dataset, "SeriesInstanceUID"), _uid(dataset, "SOPInstanceUID"))
    frames = rows = columns = samples = bits = bits_stored = 0
    photometric, not_renderable = "", None
    if pixels is not None:
        rows, columns = _required_int(dataset, "Rows"), _required_int(dataset, "Columns")
        bits = _required_int(dataset, "BitsAllocated")
        samples = _optional_int(dataset, "SamplesPerPixel") or 1
        bits_stored = _optional_int(dataset, "BitsStored") or bits
        frames = _frames(dataset)
        photometric = _text(dataset, "PhotometricInterpretation", 32).upper()
        if pixels.encapsulated != syntax.is_encapsulated:
            raise ImagingError("dicom_invalid")
        if pixels.encapsulated and not deflated:
            _walk_fragments(src, pixels.offset)
        elif not pixels.encapsulated:
            if not deflated and pixels.offset + pixels.length > src.size:
                raise ImagingError("dicom_truncated")
            try:
                expected = get_expected_length(dataset, "bytes") if rows and columns and bits else 0
            except Exception:
                raise ImagingError("dicom_invalid") from None
            if pixels.length < expected:
                raise ImagingError("dicom_truncated")  # a lying header cannot make us read more
        not_renderable = _renderability(syntax, rows, columns, samples, bits, photometric)
    header = DicomHeader(
        kind=kind,
        transfer_syntax=syntax_text,
        sop_class_uid=sop_class[:64],
        modality=_modality(dataset, kind),
        frames=frames,
        rows=rows,
        columns=columns,
        samples=samples,
        bits_allocated=bits,
        bits_stored=bits_stored,
        photometric=photometric,
        not_renderable=not_renderable,
        sop_instance_uid=uids[2],
        study_instance_uid=uids[0],
        series_instance_uid=uids[1],
        study_date=_study_date(dataset),
        study_description=_text(dataset, "StudyDescription"),
        series_description=_text(dataset, "SeriesDescription"),
        body_part=_text(dataset, "BodyPartExamined", 64) or None,
        series_number=_optional_int(dataset, "SeriesNumber"),
        instance_number=_optional_int(dataset, "InstanceNumber"),
        key_references=_kos_references(dataset) if kind == "kos" else frozenset(),
        patient_key=_patient_key(dataset),
        reading_physicians=_person_names(dataset, "NameOfPhysiciansReadingStudy"),
    )
    return _Parsed(header=header, pixels=pixels, dataset=dataset if deflated else None, mislabelled=mislabelled)


def read_header(source: Path | str | bytes) -> DicomHeader:
    """Read and check a DICOM file's header, safely, for indexing (no pixel data is decoded).

    Args:
        source: A file path or the file's bytes.

    Returns:
        The header's indexing values (their representation shows none of them).

    Raises:
        ImagingError: ``file_empty``; ``file_too_large`` {limit_mb}; ``dicom_invalid`` (not DICOM,
            no file meta or transfer syntax, a required UID missing, a malformed pixel description);
            ``dicom_truncated`` (the file ends before an element or the pixel data it declares);
            ``dicom_no_pixels`` (a valid object that is neither an image nor a structured report or
            key object selection).
    """
    with _opened(source) as src:
        return _parse(src).header


# --------------------------------------------------------------------------- rendering


def _codestream_size(frame: bytes) -> tuple[int, int] | None:
    """Columns and rows a JPEG, JPEG-LS or JPEG 2000 frame declares in its own header, if found."""
    start = frame.find(b"\xff\x4f\xff\x51")  # JPEG 2000: SOC then SIZ (also inside a JP2 box)
    if start >= 0 and len(frame) >= start + 24:
        xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", frame[start + 8 : start + 24])
        return max(0, xsiz - xosiz), max(0, ysiz - yosiz)
    if not frame.startswith(b"\xff\xd8"):
        return None
    pos = 2
    while pos + 4 <= len(frame):
        if frame[pos] != 0xFF:
            return None
        marker = frame[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        length = struct.unpack(">H", frame[pos + 2 : pos + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7):
            if pos + 9 > len(frame):
                return None
            rows, columns = struct.unpack(">HH", frame[pos + 5 : pos + 9])
            return columns, rows
        pos += 2 + length
    return None


def _check_codestream(src: _Source, parsed: _Parsed, index: int) -> None:
    """Refuse a compressed frame whose own header declares more pixels than the DICOM header."""
    from pydicom.encaps import get_frame

    header, pixels = parsed.header, parsed.pixels
    if pixels is None or not pixels.encapsulated or parsed.dataset is not None:
        return
    if header.transfer_syntax.startswith("1.2.840.10008.1.2.5"):
        return  # RLE: the decoder writes into an array of the DICOM header's size
    src.fp.seek(pixels.offset)
    frame = get_frame(src.fp, index, number_of_frames=header.frames)
    size = _codestream_size(frame[:65536])
    if size is not None and (size[0] > header.columns or size[1] > header.rows):
        log.info("dicom render refused: codestream larger than the header")
        raise ImagingError("image_not_renderable")


def _to_u8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] to [0, 255] (either order), clipping the rest."""
    import numpy as np

    values = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=low, posinf=high, neginf=low)
    if high == low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - np.float32(low)) * np.float32(255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _window_range(dataset: Dataset) -> tuple[float, float]:
    """The output range of pydicom's windowing (PS3.3 C.11.2.1.2), as ``apply_windowing`` computes it."""
    if dataset.get("ModalityLUTSequence"):
        low, high = 0.0, float(2 ** int(dataset.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(dataset.get("PixelRepresentation", 0) or 0) == 0:
        low, high = 0.0, float(2 ** int(dataset.BitsStored) - 1)
    else:
        low, high = float(-(2 ** (int(dataset.BitsStored) - 1))), float(2 ** (int(dataset.BitsStored) - 1) - 1)
    slope, intercept = dataset.get("RescaleSlope"), dataset.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        low, high = low * float(slope) + float(intercept), high * float(slope) + float(intercept)
    return low, high


def _voi_lut_range(dataset: Dataset) -> tuple[float, float] | None:
    """The range of values of the first VOI LUT, when pydicom's ``apply_voi_lut`` would use it."""
    import numpy as np

    sequence = dataset.get("VOILUTSequence")
    if not sequence or sequence[0].get("LUTDescriptor") is None or sequence[0].get("LUTData") is None:
        return None
    data = sequence[0].LUTData
    if isinstance(data, bytes | bytearray):
        table = np.frombuffer(data, dtype="<u2" if int(sequence[0].LUTDescriptor[2]) > 8 else "u1")
    else:
        table = np.asarray(data if isinstance(data, list | tuple) else [data], dtype=np.float64)
    return float(table.min()), float(table.max())


def _auto_window(values: np.ndarray, header: DicomHeader, rescaled: bool) -> tuple[float, float]:
    """A window for an image without one: the full range of 8-bit (or fewer) data, else 0.5-99.5 %."""
    import numpy as np

    if not rescaled and values.dtype.kind in "ui" and header.bits_stored <= 8:
        if values.dtype.kind == "u" or values.min() >= 0:
            return 0.0, float(2**header.bits_stored - 1)
    step = max(1, int((values.size / 1_000_000) ** 0.5))
    sample = np.asarray(values[::step, ::step], dtype=np.float64).ravel()
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 0.0
    low, high = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
    if high <= low:
        low, high = float(sample.min()), float(sample.max())
    return low, high


def _grey(frame: np.ndarray, dataset: Dataset, header: DicomHeader) -> np.ndarray:
    """Modality LUT (rescale), then the file's VOI LUT or window (else an automatic one), to 8 bits."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(frame, dataset)
    rescaled = values is not frame
    window: tuple[float, float] | None = None
    has_window = dataset.get("WindowCenter") is not None and dataset.get("WindowWidth") is not None
    lut_range = _voi_lut_range(dataset)
    if lut_range is not None or has_window:
        try:
            windowed = apply_voi_lut(values, dataset, index=0, prefer_lut=True)
            window = lut_range if lut_range is not None else _window_range(dataset)
            values = windowed
        except Exception as error:  # a malformed window or LUT: fall back to an automatic window
            log.info("dicom window unusable: %s", type(error).__name__)
    if window is None:
        window = _auto_window(values, header, rescaled)
    grey = _to_u8(values, *window)
    return 255 - grey if header.photometric == "MONOCHROME1" else grey


def _colour(frame: np.ndarray, bits_stored: int) -> np.ndarray:
    import numpy as np

    if frame.dtype == np.uint8:
        return frame
    bits = min(max(bits_stored, 1), 32)
    return _to_u8(frame, 0.0, float(2**bits - 1))


def _to_png(frame: np.ndarray, dataset: Dataset, header: DicomHeader, max_size: int) -> RenderedImage:
    import numpy as np
    from PIL import Image
    from pydicom.pixels import apply_color_lut

    frame = np.asarray(frame)
    if frame.ndim == 3 and header.samples == 1:  # (1, rows, columns)
        frame = frame[0]
    step = max(1, max(frame.shape[0], frame.shape[1]) // (2 * max_size))
    if step > 1:  # decimate first (windowing and palettes are per pixel), then resample with Lanczos
        frame = frame[::step, ::step]
    if header.photometric == "PALETTE COLOR":
        rgb = np.asarray(apply_color_lut(frame, dataset))
        pixels = rgb if rgb.dtype == np.uint8 else _colour(rgb, 8 if rgb.max() <= 255 else 16)
    elif header.samples == 3:
        pixels = _colour(frame, header.bits_stored)  # pydicom returned RGB (YBR converted, ICT/RCT decoded)
    else:
        pixels = _grey(frame, dataset, header)
    image = Image.fromarray(np.ascontiguousarray(pixels), "RGB" if pixels.ndim == 3 else "L")
    image.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=6)
    return RenderedImage(png=buffer.getvalue(), width=image.width, height=image.height)


def _render(src: _Source, parsed: _Parsed, *, max_size: int, frame: int | None) -> RenderedImage:
    from pydicom import dcmread
    from pydicom.dataset import Dataset
    from pydicom.pixels import pixel_array

    header = parsed.header
    if header.kind != "image":
        raise ImagingError("dicom_no_pixels")
    if header.not_renderable is not None:
        log.info("dicom not renderable: %s", header.not_renderable)
        raise ImagingError("image_not_renderable")
    max_size = min(max(int(max_size), MIN_RENDER_SIZE), MAX_RENDER_SIZE)
    index = header.frames // 2 if frame is None else min(max(int(frame), 0), header.frames - 1)
    try:
        _check_codestream(src, parsed, index)
        if parsed.dataset is not None:
            dataset = parsed.dataset
            array = pixel_array(dataset, index=index)
        elif parsed.mislabelled:  # pydicom reads such files whole only (the size was checked)
            src.fp.seek(0)
            dataset = dcmread(src.fp, force=True)
            array = pixel_array(dataset, index=index)
        else:
            dataset = Dataset()
            src.fp.seek(0)
            array = pixel_array(src.fp, index=index, ds_out=dataset)
        return _to_png(array, dataset, header, max_size)
    except ImagingError:
        raise
    except Exception as error:  # decoders raise anything on damaged data (MemoryError included)
        log.info("dicom render failed: %s", type(error).__name__)
        raise ImagingError("image_not_renderable") from None


def render_dicom(source: Path | str | bytes, *, max_size: int = 1024, frame: int | None = None) -> RenderedImage:
    """Render one frame of a DICOM image as an 8-bit PNG (pure: no database, no audit).

    Grey images get the modality LUT (rescale slope / intercept), then the file's VOI LUT or first
    window (centre / width), else an automatic window (the full range of 8-bit data, otherwise the
    0.5-99.5 percentiles); MONOCHROME1 is inverted. Colour images are RGB (pydicom converts
    YBR_FULL / YBR_FULL_422; JPEG 2000 decoders undo YBR_ICT / YBR_RCT); PALETTE COLOR goes through
    the palette. 16- and 32-bit colour is scaled to 8 bits. The image is scaled down (never up) so
    that its longest side is at most `max_size`, keeping its aspect.

    Args:
        source: A file path or the file's bytes.
        max_size: Longest side of the PNG, in pixels (kept within 16-4096).
        frame: Frame of a multi-frame image (from 0); the middle one by default; out-of-range
            values are brought to the nearest frame.

    Returns:
        The PNG and its size.

    Raises:
        ImagingError: the codes of :func:`read_header`; ``dicom_no_pixels`` for a structured report
            or key object selection; ``image_not_renderable`` when the pixel data cannot be decoded
            here (no decoder for its compression, damaged data, too many pixels, unsupported
            photometric interpretation): it may still open in a full DICOM viewer.
    """
    with _opened(source) as src:
        return _render(src, _parse(src), max_size=max_size, frame=frame)


# --------------------------------------------------------------------------- storage


def _imaging_dir() -> Path:
    return get_settings().imaging_dir


def _store(source: Path | bytes, storage_name: str | None = None) -> tuple[str, str, int]:
    """Copy a file into the imaging directory (atomically, mode 0600).

    Returns:
        The storage name (uuid4 hex), the SHA-256 and the size of what was written.
    """
    directory = _imaging_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    name = storage_name or uuid.uuid4().hex
    temp = directory / f".{name}.tmp"
    digest, size = hashlib.sha256(), 0
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            if isinstance(source, bytes):
                handle.write(source)
                digest.update(source)
                size = len(source)
            else:
                with open(source, "rb") as original:
                    while chunk := original.read(1 << 20):
                        handle.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, directory / name)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return name, digest.hexdigest(), size


def _remove(storage_name: str) -> None:
    (_imaging_dir() / storage_name).unlink(missing_ok=True)


# --------------------------------------------------------------------------- import


def _collect(root: Path) -> list[tuple[str, Path]]:
    """The files to import: `root` itself, or every file under it (sorted, symbolic links to folders not followed)."""
    if not root.is_dir():
        return [(root.name, root)]
    found: list[tuple[str, Path]] = []
    for folder, subfolders, names in os.walk(root, followlinks=False):
        subfolders.sort()
        for name in sorted(names):
            path = Path(folder) / name
            found.append((path.relative_to(root).as_posix(), path))
    return found


def _modalities(series: list[ImagingSeries]) -> str:
    ordered = sorted(series, key=lambda s: (s.series_number is None, s.series_number or 0, s.id or 0))
    names = list(dict.fromkeys(s.modality for s in ordered if s.modality))
    names.sort(key=lambda m: m in _NON_IMAGE_MODALITIES)  # stable: image modalities first
    return ",".join(names)[:128]


def _middle(instances: list[ImagingInstance]) -> ImagingInstance:
    ordered = sorted(instances, key=lambda i: (i.instance_number is None, i.instance_number or 0, i.id or 0))
    return ordered[(len(ordered) - 1) // 2]


def _refresh_study(uow: UnitOfWork, study: ImagingStudy) -> None:
    """Recompute a study's modalities, display values and key images after an import."""
    series = list(uow.session.scalars(
        select(ImagingSeries).where(ImagingSeries.study_id == study.id).order_by(ImagingSeries.id)
    ))  # fmt: skip  (ordered: "the first series with a description" must not depend on the database)
    study.modalities = _modalities(series)
    if not study.description:
        study.description = next(
            (s.description for s in series if s.description and s.modality not in _NON_IMAGE_MODALITIES), ""
        )
    if not study.body_part:
        study.body_part = next((s.body_part for s in series if s.body_part), None)
    by_series: dict[int, list[ImagingInstance]] = {s.id: [] for s in series}
    if by_series:
        for row in uow.session.scalars(
            select(ImagingInstance).where(ImagingInstance.series_id.in_(by_series)).order_by(ImagingInstance.id)
        ):
            by_series[row.series_id].append(row)
    instances = [row for rows in by_series.values() for row in rows]
    references: set[str] = set()
    for row in instances:
        if row.sop_class_uid == KOS_SOP_CLASS:
            try:
                references |= read_header(_imaging_dir() / row.storage_name).key_references
            except DspError as error:
                log.info("stored key object selection %s unreadable: %s", row.id, error.code)
    images = [row for row in instances if row.frames > 0]
    keys = {row.id for row in images if row.sop_instance_uid in references}
    if not keys:  # no key object selection (or none of its images is here): the middle of each series
        for rows in by_series.values():
            candidates = [row for row in rows if row.frames > 0]
            if candidates:
                keys.add(_middle([row for row in candidates if row.renderable] or candidates).id)
    for row in instances:
        row.is_key = row.id in keys


def _attach_report(
    uow: UnitOfWork,
    patient_id: int,
    study: ImagingStudy,
    data: bytes,
    *,
    name: str,
    author_id: int | None,
    title: str | None,
    created_at: datetime | None,
) -> Document:
    """File a report as a document of the record (``imaging_report``) and link it to the study."""
    from bot.dsp.documents import ACCEPTED_FORMATS, detect_format, local_date, sanitize_title, store_file

    fmt = detect_format(data)  # UploadRejected file_empty / file_type_refused / file_damaged
    if fmt == "dicom":
        raise UploadRejected("file_type_refused")
    digest = hashlib.sha256(data).hexdigest()
    document = uow.session.scalars(
        select(Document).where(Document.patient_id == patient_id, Document.sha256 == digest)
    ).first()
    if document is None:
        now = created_at or clock.now()
        document = Document(
            patient_id=patient_id,
            doc_type="imaging_report",
            title=title or sanitize_title(name) or f"Rapport d'imagerie {local_date(now)}",
            format=fmt,
            mime_type=ACCEPTED_FORMATS[fmt],
            size_bytes=len(data),
            sha256=digest,
            storage_name=store_file(data),
            created_at=now,
            author_professional_id=author_id,
        )
        uow.session.add(document)
        uow.session.flush()
    study.report_document_id = document.id
    return document


def _ingest(
    uow: UnitOfWork,
    patient_id: int,
    items: list[tuple[str, Path | bytes]],
    *,
    actor: str,
    study_date: date | None = None,
    report: tuple[str, bytes] | None = None,
    report_author_id: int | None = None,
    report_document_id: int | None = None,
) -> ImportResult:
    """Index and store DICOM files for one record; commit (or store nothing when the commit fails)."""
    refused: list[tuple[str, str]] = []
    accepted: list[tuple[str, Path | bytes, DicomHeader, bool]] = []
    for label, source in items:
        try:
            with _opened(source) as src:
                parsed = _parse(src)
                renderable = False
                if parsed.header.kind == "image" and parsed.header.not_renderable is None:
                    try:
                        _render(src, parsed, max_size=64, frame=None)
                        renderable = True
                    except ImagingError:
                        renderable = False
        except ImagingError as error:
            log.info("dicom refused: %s", error.code)
            refused.append((label, error.code))
            continue
        accepted.append((label, source, parsed.header, renderable))
    if len({header.patient_key for _, _, header, _ in accepted if header.patient_key}) > 1:
        log.info("dicom refused: dicom_patient_mismatch (%d files)", len(accepted))
        refused.extend((label, "dicom_patient_mismatch") for label, _, _, _ in accepted)
        accepted = []
    stored: list[str] = []
    touched: dict[int, ImagingStudy] = {}
    added: dict[int, int] = {}
    physicians: list[str] = []
    try:
        for label, source, header, renderable in accepted:
            study = uow.session.scalars(
                select(ImagingStudy).where(
                    ImagingStudy.patient_id == patient_id,
                    ImagingStudy.study_instance_uid == header.study_instance_uid,
                )
            ).first()
            if study is None:
                study = ImagingStudy(
                    patient_id=patient_id,
                    study_instance_uid=header.study_instance_uid,
                    study_date=study_date or header.study_date,
                    description=header.study_description,
                    body_part=header.body_part,
                    created_at=clock.now(),
                )
                uow.session.add(study)
                uow.session.flush()
            elif study.study_date is None and (study_date or header.study_date):
                study.study_date = study_date or header.study_date
            series = uow.session.scalars(
                select(ImagingSeries).where(
                    ImagingSeries.study_id == study.id,
                    ImagingSeries.series_instance_uid == header.series_instance_uid,
                )
            ).first()
            if series is None:
                series = ImagingSeries(
                    study_id=study.id,
                    series_instance_uid=header.series_instance_uid,
                    series_number=header.series_number,
                    modality=header.modality,
                    description=header.series_description,
                    body_part=header.body_part,
                )
                uow.session.add(series)
                uow.session.flush()
            known = uow.session.scalars(
                select(ImagingInstance.id).where(
                    ImagingInstance.series_id == series.id,
                    ImagingInstance.sop_instance_uid == header.sop_instance_uid,
                )
            ).first()
            if known is not None:
                log.info("dicom refused: dicom_duplicate (instance %s)", known)
                refused.append((label, "dicom_duplicate"))
                continue
            name, digest, size = _store(source)
            stored.append(name)
            uow.session.add(
                ImagingInstance(
                    series_id=series.id,
                    sop_instance_uid=header.sop_instance_uid,
                    sop_class_uid=header.sop_class_uid,
                    instance_number=header.instance_number,
                    frames=header.frames,
                    renderable=renderable,
                    storage_name=name,
                    sha256=digest,
                    size_bytes=size,
                    transfer_syntax=header.transfer_syntax,
                    created_at=clock.now(),
                )
            )
            uow.session.flush()
            touched[study.id] = study
            added[study.id] = added.get(study.id, 0) + 1
            physicians.extend(header.reading_physicians)
        for study in touched.values():
            _refresh_study(uow, study)
        _link_report(
            uow, patient_id, touched, refused, report, report_author_id, report_document_id,
            actor=actor, physicians=physicians,
        )  # fmt: skip
        for study_id, count in added.items():
            audit.record(
                uow,
                actor=actor,
                action="imaging.import",
                outcome="ok",
                patient_id=patient_id,
                object_ref=f"study:{study_id}",
                detail={"instances": count},
            )
        if refused or not added:
            codes: dict[str, int] = {}
            for _, code in refused:
                codes[code] = codes.get(code, 0) + 1
            audit.record(
                uow,
                actor=actor,
                action="imaging.import",
                outcome="refused" if refused else "empty",
                patient_id=patient_id,
                detail={"refused": codes} if codes else None,
            )
        uow.commit()
    except BaseException:
        uow.rollback()
        for name in stored:
            _remove(name)
        raise
    return ImportResult(studies=len(added), instances=sum(added.values()), refused=refused)


def _reading_physician(uow: UnitOfWork, names: list[str]) -> int | None:
    """The one professional of the directory named as reading physician in the headers, if exactly one."""
    from bot.dsp.orm import fold

    found: set[int] = set()
    for name in dict.fromkeys(names):
        family, _, rest = name.partition("^")
        given = rest.split("^")[0]
        if not family.strip() or not given.strip():
            continue
        key = f"{fold(family)} {fold(given)} "
        query = select(Professional.id).where(Professional.search_key.startswith(key, autoescape=True)).limit(3)
        found.update(uow.session.scalars(query))
    return found.pop() if len(found) == 1 else None


def _link_report(
    uow: UnitOfWork,
    patient_id: int,
    touched: dict[int, ImagingStudy],
    refused: list[tuple[str, str]],
    report: tuple[str, bytes] | None,
    report_author_id: int | None,
    report_document_id: int | None,
    *,
    actor: str,
    physicians: list[str],
) -> None:
    if report is None and report_document_id is None:
        return
    label = report[0] if report is not None else f"document:{report_document_id}"
    if len(touched) != 1:
        log.info("imaging report not attached: %d studies imported", len(touched))
        refused.append((label, "report_not_attached"))
        return
    study = next(iter(touched.values()))
    if report_document_id is not None:
        study.report_document_id = report_document_id
    elif report is not None:
        if report_author_id is None:
            report_author_id = _reading_physician(uow, physicians)
        try:
            document = _attach_report(
                uow,
                patient_id,
                study,
                report[1],
                name=report[0],
                author_id=report_author_id,
                title=None,
                created_at=None,
            )
        except UploadRejected as error:
            log.info("imaging report refused: %s", error.code)
            refused.append((label, error.code))
            return
        audit.record(
            uow,
            actor=actor,
            action="imaging.report",
            outcome="ok",
            patient_id=patient_id,
            object_ref=f"document:{document.id}",
            detail={"study": study.id},
        )


def import_dicom(
    uow: UnitOfWork,
    path: Path | Sequence[Path],
    matricule: str,
    *,
    actor: str = "cli",
    report: Path | None = None,
    report_author_id: int | None = None,
    study_date: date | None = None,
) -> ImportResult:
    """Index DICOM files (a file, a folder, or several) into a patient's record (audited ``imaging.import``).

    Files are read one by one (header, then a trial rendering of the key frame to know whether the
    image can be shown here), then the accepted ones are copied into the imaging store. A file
    whose patient differs from the others' (patient ID and name compared, never kept) makes the
    whole import refused (``dicom_patient_mismatch``): a folder must hold one patient's files.
    An instance already in the record is refused (``dicom_duplicate``). Key images are
    recomputed for every study touched.

    Args:
        uow: Unit of work (committed here).
        path: A DICOM file or a folder (every file under it), or a list of them.
        matricule: The holder's matricule (13 digits).
        actor: Who imports, for the audit (``cli``, ``system``...).
        report: Optional report (PDF or UTF-8 text) of the study; filed as a document of the record
            (``imaging_report``, shown in "Mes documents") when the import touches exactly one study.
        report_author_id: The professional of the directory who wrote the report. Without it, the
            author is the reading physician the headers name ("Name of Physician(s) Reading
            Study"), when exactly one professional of the directory has that name; otherwise the
            report is filed without an author.
        study_date: Date to give the studies created (the header's date otherwise).

    Returns:
        Counts and the refused files with their codes: ``file_empty``, ``file_too_large``,
        ``dicom_invalid``, ``dicom_truncated``, ``dicom_no_pixels``, ``dicom_duplicate``,
        ``dicom_patient_mismatch``; for the report: ``report_not_attached``, ``file_type_refused``,
        ``file_damaged``.

    Raises:
        MatriculeInvalid: ``matricule_*``.
        LookupError: No patient has this matricule, or no professional has `report_author_id`.
        FileNotFoundError: A path (or `report`) does not exist.
        ValueError: A report larger than ``DSP_UPLOAD_MAX_MB``.
    """
    from bot.dsp.assistants import _patient_by_matricule  # late: assistants imports the record services

    patient = _patient_by_matricule(uow, matricule)
    roots = [Path(path)] if isinstance(path, str | os.PathLike) else [Path(p) for p in path]
    if not roots or not all(root.exists() for root in roots):
        raise FileNotFoundError("no such file or folder")
    report_item: tuple[str, bytes] | None = None
    if report is not None:
        if report_author_id is not None and uow.session.get(Professional, report_author_id) is None:
            raise LookupError("no professional with this id")
        report_path = Path(report)
        if report_path.stat().st_size > get_settings().upload_max_mb * _MB:
            raise ValueError("the report is larger than DSP_UPLOAD_MAX_MB")
        report_item = (report_path.name, report_path.read_bytes())
    items: list[tuple[str, Path | bytes]] = [item for root in roots for item in _collect(root)]
    return _ingest(
        uow,
        patient.id,
        items,
        actor=actor,
        study_date=study_date,
        report=report_item,
        report_author_id=report_author_id,
    )


# --------------------------------------------------------------------------- record services


_fail = commit_and_raise  # shared with the other record services (bot/dsp/records.py)
_context = audited_context


def _study_infos(uow: UnitOfWork, holder_id: int, study_ids: list[int] | None = None) -> list[StudyInfo]:
    """The studies of a record (all, newest first, or those of `study_ids`), counted in three queries."""
    query = select(ImagingStudy).where(ImagingStudy.patient_id == holder_id)
    if study_ids is not None:
        query = query.where(ImagingStudy.id.in_(study_ids))
    query = query.order_by(
        ImagingStudy.study_date.is_(None), ImagingStudy.study_date.desc(),
        ImagingStudy.created_at.desc(), ImagingStudy.id.desc(),
    )  # fmt: skip
    rows = list(uow.session.scalars(query))
    if not rows:
        return []
    scope = select(ImagingStudy.id).where(ImagingStudy.patient_id == holder_id)
    if study_ids is not None:
        scope = scope.where(ImagingStudy.id.in_(study_ids))
    series_counts: dict[int, int] = {
        study_id: count
        for study_id, count in uow.session.execute(
            select(ImagingSeries.study_id, func.count(ImagingSeries.id))
            .where(ImagingSeries.study_id.in_(scope))
            .group_by(ImagingSeries.study_id)
        )
    }
    instance_counts = {
        study_id: (count, int(keys or 0))
        for study_id, count, keys in uow.session.execute(
            select(
                ImagingSeries.study_id,
                func.count(ImagingInstance.id),
                func.sum(case((ImagingInstance.is_key.is_(True), 1), else_=0)),
            )
            .join(ImagingInstance, ImagingInstance.series_id == ImagingSeries.id)
            .where(ImagingSeries.study_id.in_(scope))
            .group_by(ImagingSeries.study_id)
        )
    }
    return [
        StudyInfo(
            id=row.id,
            study_date=row.study_date,
            modalities=tuple(m for m in row.modalities.split(",") if m),
            description=row.description,
            body_part=row.body_part,
            series_count=series_counts.get(row.id, 0),
            instance_count=instance_counts.get(row.id, (0, 0))[0],
            has_report=row.report_document_id is not None,
            key_image_count=instance_counts.get(row.id, (0, 0))[1],
        )
        for row in rows
    ]


def list_studies(uow: UnitOfWork, conversation_id: str) -> list[StudyInfo]:
    """List the imaging studies of the record, newest first (audited ``imaging.list``).

    Studies without a date come last; studies of the same date, the last imported first.

    Args:
        uow: Unit of work.
        conversation_id: The gateway conversation.

    Returns:
        The studies of the record acted on (the holder's, or the assisted person's).

    Raises:
        AuthError: ``not_logged_in``, ``terms_pending``.
        AccessDenied: ``assistant_revoked``.
    """
    action = "imaging.list"
    context = _context(uow, conversation_id, action)
    infos = _study_infos(uow, context.holder_patient_id)
    audit_record(uow, context, action, "ok", count=len(infos))
    uow.commit()
    return infos


def describe_studies(uow: UnitOfWork, conversation_id: str, ids: list[int]) -> list[StudyInfo]:
    """Describe studies for the gateway's views (descriptions never go through Rasa).

    Not audited: the listing or opening that produced the ids was. Ids of another record, unknown
    ids and repeated ids are skipped.

    Args:
        uow: Unit of work.
        conversation_id: The gateway conversation.
        ids: Internal study ids, in display order.

    Returns:
        The record's studies among `ids`, in the given order.

    Raises:
        AuthError: ``not_logged_in``, ``terms_pending``.
        AccessDenied: ``assistant_revoked``.
    """
    context = record_context(uow, conversation_id, "imaging.describe")
    wanted: list[int] = []
    for value in ids:
        if isinstance(value, int) and not isinstance(value, bool) and value not in wanted:
            wanted.append(value)
    found = {info.id: info for info in _study_infos(uow, context.holder_patient_id, wanted)} if wanted else {}
    uow.commit()  # the session's last-seen time
    return [found[study_id] for study_id in wanted if study_id in found]


def _instance_info(row: ImagingInstance) -> InstanceInfo:
    return InstanceInfo(
        id=row.id,
        series_id=row.series_id,
        instance_number=row.instance_number,
        frames=row.frames,
        is_key=row.is_key,
        renderable=row.renderable,
    )


def open_study(uow: UnitOfWork, conversation_id: str, study_id: int) -> StudyDetail:
    """Open a study of the record: its series, key images and report (audited ``imaging.open``).

    Args:
        uow: Unit of work.
        conversation_id: The gateway conversation.
        study_id: Internal id, as listed.

    Returns:
        The study with its series (by series number) and their instances (by instance number),
        its key images in the same order, and the id of its report document (or None).

    Raises:
        AuthError: ``not_logged_in``, ``terms_pending``.
        AccessDenied: ``assistant_revoked``; ``study_not_found`` for an unknown id and for an id of
            another record alike (audited as a refusal).
    """
    action = "imaging.open"
    context = _context(uow, conversation_id, action)
    object_ref = f"study:{study_id}"
    valid = isinstance(study_id, int) and not isinstance(study_id, bool)
    infos = _study_infos(uow, context.holder_patient_id, [study_id]) if valid else []
    if not infos:
        audit_record(uow, context, action, "study_not_found", object_ref)
        _fail(uow, AccessDenied("study_not_found"))
    series_rows = list(
        uow.session.scalars(
            select(ImagingSeries)
            .where(ImagingSeries.study_id == study_id)
            .order_by(ImagingSeries.series_number.is_(None), ImagingSeries.series_number, ImagingSeries.id)
        )
    )
    instances: dict[int, list[InstanceInfo]] = {row.id: [] for row in series_rows}
    if instances:
        for row in uow.session.scalars(
            select(ImagingInstance)
            .where(ImagingInstance.series_id.in_(instances))
            .order_by(ImagingInstance.instance_number.is_(None), ImagingInstance.instance_number, ImagingInstance.id)
        ):
            instances[row.series_id].append(_instance_info(row))
    series = [
        SeriesInfo(id=row.id, modality=row.modality, description=row.description, instances=instances[row.id])
        for row in series_rows
    ]
    study_row = uow.session.get(ImagingStudy, study_id)
    audit_record(uow, context, action, "ok", object_ref)
    uow.commit()
    return StudyDetail(
        study=infos[0],
        series=series,
        key_images=[info for item in series for info in item.instances if info.is_key],
        report_document_id=study_row.report_document_id if study_row is not None else None,
    )


def render_instance(
    uow: UnitOfWork, conversation_id: str, instance_id: int, *, max_size: int = 1024, frame: int | None = None
) -> RenderedImage:
    """Render an image of the record as PNG (audited ``imaging.render``, object ``instance:<id>``).

    Args:
        uow: Unit of work.
        conversation_id: The gateway conversation.
        instance_id: Internal id of an instance, as opened.
        max_size: Longest side of the PNG, in pixels (kept within 16-4096).
        frame: Frame of a multi-frame image (from 0); the middle one by default.

    Returns:
        The PNG and its size (see :func:`render_dicom`).

    Raises:
        AuthError: ``not_logged_in``, ``terms_pending``.
        AccessDenied: ``assistant_revoked``; ``image_not_found`` for an unknown id and for an id of
            another record alike (audited as a refusal), and for a stored file that is missing or
            altered (audited ``storage_error``, logged).
        ImagingError: ``image_not_renderable``: a report or key object selection, or pixel data
            that cannot be decoded here (the web viewer of the DSP may still show it).
    """
    action = "imaging.render"
    context = _context(uow, conversation_id, action)
    object_ref = f"instance:{instance_id}"
    row = None
    if isinstance(instance_id, int) and not isinstance(instance_id, bool):
        row = uow.session.execute(
            select(ImagingInstance)
            .join(ImagingSeries, ImagingSeries.id == ImagingInstance.series_id)
            .join(ImagingStudy, ImagingStudy.id == ImagingSeries.study_id)
            .where(ImagingInstance.id == instance_id, ImagingStudy.patient_id == context.holder_patient_id)
        ).scalar_one_or_none()
    if row is None:
        audit_record(uow, context, action, "image_not_found", object_ref)
        _fail(uow, AccessDenied("image_not_found"))
    if not row.renderable:
        audit_record(uow, context, action, "image_not_renderable", object_ref)
        _fail(uow, ImagingError("image_not_renderable"))
    try:
        data = (_imaging_dir() / row.storage_name).read_bytes()
    except OSError:
        data = None
    if data is None or hashlib.sha256(data).hexdigest() != row.sha256:
        log.error("stored file of imaging instance %s is missing or altered", row.id)
        audit_record(uow, context, action, "storage_error", object_ref)
        _fail(uow, AccessDenied("image_not_found"))
    try:
        image = render_dicom(data, max_size=max_size, frame=frame)
    except ImagingError as error:
        log.info("imaging instance %s not rendered: %s", row.id, error.code)
        audit_record(uow, context, action, "image_not_renderable", object_ref)
        _fail(uow, ImagingError("image_not_renderable"))
    audit_record(uow, context, action, "ok", object_ref)
    uow.commit()
    return image
