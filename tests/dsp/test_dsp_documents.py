"""Documents: upload (format from the content), filing, listing, reading, refusals, expiry, audit."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import stat
import struct
import zlib

import pytest
from dsp_helpers import Client
from dsp_session import log_in, patient_id
from PIL import Image
from pydicom.data import get_testdata_file
from pypdf import PdfWriter
from sqlalchemy import func, select

import bot.dsp as dsp
from bot.dsp import DEMO_PATIENTS, UnitOfWork
from bot.dsp.demo import DEMO_DOCUMENTS
from bot.dsp.documents import local_date, sanitize_title
from bot.dsp.errors import AccessDenied, AuthError, DspError, UploadRejected
from bot.dsp.orm import AuditEvent, Document, StagedUpload
from bot.dsp.settings import get_settings

HOFFMANN = DEMO_PATIENTS[2]  # terms accepted; demo documents by Dr Anne Müller and Ana Gonçalves
GONCALVES = DEMO_PATIENTS[3]  # terms not accepted
KAYSER = DEMO_PATIENTS[5]  # designated assistant of Marie Hoffmann

FORMATS = "PDF, JPEG, PNG, TIFF, TXT, DICOM"


@pytest.fixture(autouse=True)
def demo():
    with UnitOfWork() as uow:
        dsp.seed_demo(uow)


@pytest.fixture
def long_sessions(monkeypatch):
    """Sessions that outlive a staged upload (the default idle limit is 30 minutes)."""
    monkeypatch.setenv("DSP_SESSION_IDLE_SECONDS", str(10 * 86400))
    get_settings.cache_clear()


# --------------------------------------------------------------------------- real small files


def _pdf(pages: int = 1) -> bytes:
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(595, 842)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def _image(fmt: str, color=(200, 30, 30), size=(32, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, fmt)
    return buffer.getvalue()


def _dicom() -> bytes:
    with open(get_testdata_file("CT_small.dcm"), "rb") as handle:
        return handle.read()


def _text() -> bytes:
    return "\ufeffDirectives anticipées\nJe soussignée… refuse l'acharnement thérapeutique.\n".encode()


SAMPLES = {
    "pdf": _pdf,
    "jpeg": lambda: _image("JPEG"),
    "png": lambda: _image("PNG"),
    "tiff": lambda: _image("TIFF"),
    "dicom": _dicom,
    "text": _text,
}
MIME = {
    "pdf": "application/pdf",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "tiff": "image/tiff",
    "dicom": "application/dicom",
    "text": "text/plain",
}


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_bomb() -> bytes:
    """A tiny PNG that declares 40000 x 40000 pixels."""
    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 100))
        + _png_chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------- helpers


def _err(fn, *args, **kwargs) -> DspError:
    with pytest.raises(DspError) as info:
        fn(*args, **kwargs)
    return info.value


def _stored_files() -> set[str]:
    directory = get_settings().documents_dir
    return {p.name for p in directory.iterdir()} if directory.exists() else set()


def _counts() -> tuple[int, int]:
    with UnitOfWork() as uow:
        return (
            uow.session.scalar(select(func.count()).select_from(Document)),
            uow.session.scalar(select(func.count()).select_from(StagedUpload)),
        )


def _audit_rows(action: str) -> list[AuditEvent]:
    with UnitOfWork() as uow:
        return list(uow.session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def _upload(client: Client, data: bytes, filename: str | None = "scan.bin", doc_type: str = "holder_expression"):
    staged = client.call(dsp.stage_upload, data, filename)
    return client.call(dsp.file_document, staged.ref, doc_type)


# --------------------------------------------------------------------------- detection


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_detect_format_from_content(fmt):
    assert dsp.detect_format(SAMPLES[fmt]()) == fmt


def test_text_that_starts_like_another_format_stays_text():
    # text starting with bytes that are the magic of another format (BMP: "BM") stays text
    assert dsp.detect_format(b"BMI 24, poids 70 kg\n") == "text"
    assert dsp.detect_format("Kürzer Bericht: alles gut, 37,5 °C.\r\n".encode()) == "text"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "file_empty"),
        (b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff" + b"\x00" * 200, "file_type_refused"),
        (b"\x7fELF\x02\x01\x01" + b"\x00" * 100, "file_type_refused"),
        (b"#!/bin/sh\nrm -rf ~\n", "file_type_refused"),
        (b"PK\x03\x04\x14\x00\x06\x00" + b"\x00" * 30 + b"[Content_Types].xml", "file_type_refused"),
        (bytes.fromhex("d0cf11e0a1b11ae1") + b"\x00" * 600, "file_type_refused"),
        (b"<!DOCTYPE html><html><script>alert(1)</script></html>", "file_type_refused"),
        (b"GIF89a\x01\x00\x01\x00" + b"\x00" * 20, "file_type_refused"),
        ("caf\xe9 cr\xe8me".encode("latin-1"), "file_type_refused"),
        (b"\x01\x02\x03\x04" * 50, "file_type_refused"),
        (_pdf()[: len(_pdf()) // 2], "file_damaged"),
        (_pdf().replace(b"%%EOF", b"%%XXX"), "file_damaged"),
        (_image("PNG")[:-40], "file_damaged"),
        (_image("JPEG")[:150], "file_damaged"),
        (_image("TIFF")[:200], "file_damaged"),
        (_png_bomb(), "file_damaged"),
        (_dicom()[: len(_dicom()) // 2], "file_damaged"),
        (_dicom()[:140], "file_damaged"),
    ],
    ids=[
        "empty", "exe", "elf", "script", "docx", "ole", "html", "gif", "latin1", "binary", "pdf-half",
        "pdf-no-eof", "png-cut", "jpeg-cut", "tiff-cut", "png-bomb", "dicom-half", "dicom-header-only",
    ],
)  # fmt: skip
def test_detect_format_refusals(data, code):
    error = _err(dsp.detect_format, data)
    assert isinstance(error, UploadRejected)
    assert error.code == code
    if code == "file_type_refused":
        assert error.params == {"formats": FORMATS}


def test_refusal_params_from_settings(monkeypatch):
    monkeypatch.setenv("DSP_UPLOAD_MAX_MB", "7")
    monkeypatch.setenv("DSP_DOCUMENT_QUOTA_MB", "50")
    get_settings.cache_clear()
    assert dsp.refusal_params("file_too_large") == {"limit_mb": 7}
    assert dsp.refusal_params("quota_exceeded") == {"quota_mb": 50}
    assert dsp.refusal_params("file_type_refused") == {"formats": FORMATS}
    assert dsp.refusal_params("file_damaged") == {}


def test_defaults():
    settings = get_settings()
    assert (settings.upload_max_mb, settings.document_quota_mb) == (20, 200)
    assert settings.documents_dir == settings.state_dir / "documents"


def test_sanitize_title():
    assert sanitize_title("C:\\Users\\marie\\Compte_rendu   2024.pdf") == "Compte rendu 2024"
    assert sanitize_title("../../etc/passwd") == "passwd"
    assert sanitize_title("ordonnance\u202egpj.exe") == "ordonnancegpj"  # bidi override dropped
    assert sanitize_title("a\x00b\x1bc\nd.txt") == "abc d"
    assert sanitize_title("x" * 200 + ".pdf") == "x" * 80
    assert sanitize_title(None) == sanitize_title("") == sanitize_title(".pdf") == ""
    assert sanitize_title("rapport.final.pdf") == "rapport.final"


# --------------------------------------------------------------------------- upload, file, list, read


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_each_format_is_staged_filed_listed_and_read_back(client, fmt):
    marie = log_in(client, HOFFMANN)
    data = SAMPLES[fmt]()
    staged = client.call(dsp.stage_upload, data, f"Mon_document {fmt}.{'pdf' if fmt != 'pdf' else 'jpg'}")
    assert staged.format == fmt and staged.size_bytes == len(data)
    assert staged.ref.startswith("up_")
    info = client.call(dsp.file_document, staged.ref, "holder_expression")
    assert (info.format, info.mime_type, info.size_bytes) == (fmt, MIME[fmt], len(data))
    assert info.title == f"Mon document {fmt}"
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert (info.author_kind, info.author_name, info.doc_type) == ("holder", "Marie Hoffmann", "holder_expression")

    listed = client.call(dsp.list_documents)
    assert listed[0] == info  # newest first
    assert len(listed) == 1 + sum(d.holder == HOFFMANN for d in DEMO_DOCUMENTS)

    read_info, content = client.call(dsp.read_document, info.id)
    assert read_info == info
    assert content == data and hashlib.sha256(content).hexdigest() == info.sha256

    directory = get_settings().documents_dir
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    with UnitOfWork() as uow:
        row = uow.session.get(Document, info.id)
        assert row.patient_id == marie and row.author_patient_id == marie and row.author_professional_id is None
        assert len(row.storage_name) == 32 and int(row.storage_name, 16) >= 0
        stored = directory / row.storage_name
        assert stored.read_bytes() == data
        assert stat.S_IMODE(stored.stat().st_mode) == 0o600
        assert uow.session.scalar(select(func.count()).select_from(StagedUpload)) == 0
    assert not [name for name in _stored_files() if name.endswith(".tmp")]


def test_default_title_is_the_filing_date(client, fake_clock):
    log_in(client, HOFFMANN)
    info = _upload(client, _image("PNG"), None, "vaccination")
    assert info.title == "Document 01/03/2026"
    assert info.created_at == fake_clock.now


def test_list_is_newest_first_and_audited(client, fake_clock):
    marie = log_in(client, HOFFMANN)
    first = _upload(client, b"premier\n")
    fake_clock.advance(60)
    second = _upload(client, b"second\n")
    ids = [d.id for d in client.call(dsp.list_documents)]
    assert ids.index(second.id) < ids.index(first.id)
    row = _audit_rows("document.list")[-1]
    assert (row.actor_patient_id, row.patient_id, row.outcome) == (marie, marie, "ok")
    assert json.loads(row.detail) == {"count": len(ids)}


def test_demo_documents_fill_mes_documents(client):
    log_in(client, HOFFMANN)
    listed = client.call(dsp.list_documents)
    assert [(d.title, d.format, d.author_kind, d.author_name) for d in listed] == [
        ("Certificat de vaccination", "pdf", "professional", "Ana Gonçalves"),
        ("Compte rendu de consultation", "text", "professional", "Dr Anne Müller"),
        # the reports of the demo imaging studies (bot.dsp.demo.DEMO_STUDIES) are documents too
        ("Compte rendu d'IRM", "text", "professional", "Dr Patrick Lentz"),
        ("Compte rendu de scanner", "text", "professional", "Dr Sophie Lefèvre"),
    ]
    for info in listed:
        _, content = client.call(dsp.read_document, info.id)
        assert dsp.detect_format(content) == info.format
    # seeding again adds nothing, and restores a lost file
    with UnitOfWork() as uow:
        row = uow.session.get(Document, listed[0].id)
        (get_settings().documents_dir / row.storage_name).unlink()
        dsp.seed_demo(uow)
    assert client.call(dsp.list_documents) == listed
    assert client.call(dsp.read_document, listed[0].id)[0] == listed[0]


def test_describe_documents_keeps_order_and_skips_foreign_and_unknown_ids(client):
    log_in(client, HOFFMANN)
    mine = [_upload(client, f"note {i}\n".encode()).id for i in range(2)]
    other = Client("conv-kayser")
    log_in(other, KAYSER)
    foreign = [d.id for d in other.call(dsp.list_documents)]
    assert foreign
    audited = len(_audit_rows("document.read")) + len(_audit_rows("document.list"))
    described = client.call(dsp.describe_documents, [mine[1], foreign[0], 999_999, mine[0], mine[1]])
    assert [d.id for d in described] == [mine[1], mine[0]]
    assert other.call(dsp.describe_documents, mine) == []
    assert len(_audit_rows("document.read")) + len(_audit_rows("document.list")) == audited  # not audited


def test_a_guessed_id_reads_nothing(client):
    marie = log_in(client, HOFFMANN)
    secret = _upload(client, b"confidentiel\n")
    other = Client("conv-kayser")
    nora = log_in(other, KAYSER)
    for guess in (secret.id, 999_999):
        error = _err(other.call, dsp.read_document, guess)
        assert isinstance(error, AccessDenied) and error.code == "document_not_found"
        row = _audit_rows("document.read")[-1]
        assert (row.actor_patient_id, row.patient_id) == (nora, nora)
        assert (row.object, row.outcome) == (f"document:{guess}", "document_not_found")
    # the holder still reads it
    assert client.call(dsp.read_document, secret.id)[1] == b"confidentiel\n"
    row = _audit_rows("document.read")[-1]
    assert (row.actor_patient_id, row.patient_id, row.object, row.outcome) == (
        marie, marie, f"document:{secret.id}", "ok",
    )  # fmt: skip


def test_an_altered_file_is_not_served(client, caplog):
    log_in(client, HOFFMANN)
    info = _upload(client, b"original\n")
    with UnitOfWork() as uow:
        path = get_settings().documents_dir / uow.session.get(Document, info.id).storage_name
    path.write_bytes(b"altered\n")
    error = _err(client.call, dsp.read_document, info.id)
    assert error.code == "document_not_found"
    assert _audit_rows("document.read")[-1].outcome == "storage_error"


# --------------------------------------------------------------------------- refusals store nothing


def _assert_refused_and_nothing_stored(client, data, filename, code, actor=None):
    before_files, before_rows = _stored_files(), _counts()
    error = _err(client.call, dsp.stage_upload, data, filename)
    assert error.code == code
    assert _stored_files() == before_files
    assert _counts() == before_rows
    row = _audit_rows("document.upload")[-1]
    assert row.outcome == code
    if actor is not None:
        assert (row.actor_patient_id, row.patient_id, row.object) == (actor, actor, None)
    title = sanitize_title(filename)
    assert len(title) < 4 or title not in (row.detail or "")
    return error


@pytest.mark.parametrize(
    ("make", "filename", "code"),
    [
        (lambda: b"", "vide.txt", "file_empty"),
        (lambda: b"MZ\x90\x00\x03\x00\x00\x00\x04\x00" + b"\x00" * 500 + b"This program cannot be run in DOS mode",
         "report.pdf", "file_type_refused"),
        (lambda: _pdf(3)[: len(_pdf(3)) // 2], "report.pdf", "file_damaged"),
        (lambda: _dicom()[:20000], "scanner.dcm", "file_damaged"),
        (lambda: b"PK\x03\x04" + b"\x00" * 100, "lettre.docx", "file_type_refused"),
    ],
    ids=["empty", "renamed-exe", "truncated-pdf", "truncated-dicom", "zip"],
)  # fmt: skip
def test_refused_uploads_store_nothing(client, make, filename, code):
    marie = log_in(client, HOFFMANN)
    error = _assert_refused_and_nothing_stored(client, make(), filename, code, actor=marie)
    if code == "file_type_refused":
        assert error.params == {"formats": FORMATS}


def test_oversize_is_refused_before_anything_is_read(client, monkeypatch):
    monkeypatch.setenv("DSP_UPLOAD_MAX_MB", "1")
    get_settings.cache_clear()
    marie = log_in(client, HOFFMANN)
    error = _assert_refused_and_nothing_stored(client, b"a" * (1024 * 1024 + 1), "gros.txt", "file_too_large", marie)
    assert error.params == {"limit_mb": 1}
    assert client.call(dsp.stage_upload, b"a" * (1024 * 1024), "juste.txt").size_bytes == 1024 * 1024


def test_duplicate_names_the_date_of_the_existing_document(client, fake_clock, long_sessions):
    marie = log_in(client, HOFFMANN)
    data = _image("PNG")
    _upload(client, data, "radio.png")
    fake_clock.advance(3 * 86400)
    error = _assert_refused_and_nothing_stored(client, data, "radio (copie).png", "file_duplicate", marie)
    assert error.params == {"date": "01/03/2026"}
    # a demo document counts too
    demo_pdf = next(d for d in DEMO_DOCUMENTS if d.holder == HOFFMANN and d.format == "pdf")
    listed = {d.sha256: d for d in client.call(dsp.list_documents)}
    existing = listed[hashlib.sha256(demo_pdf.content()).hexdigest()]
    error = _err(client.call, dsp.stage_upload, demo_pdf.content(), "certificat.pdf")
    assert (error.code, error.params) == ("file_duplicate", {"date": local_date(existing.created_at)})


def test_the_same_file_staged_twice_is_filed_once(client):
    log_in(client, HOFFMANN)
    other = Client("conv-2")
    log_in(other, HOFFMANN)  # the same person on two chats
    first = client.call(dsp.stage_upload, b"double envoi\n", "a.txt")
    second = other.call(dsp.stage_upload, b"double envoi\n", "a.txt")
    client.call(dsp.file_document, first.ref, "holder_expression")
    error = _err(other.call, dsp.file_document, second.ref, "holder_expression")
    assert error.code == "file_duplicate"
    assert _counts()[1] == 0
    assert len(_stored_files()) == len(DEMO_DOCUMENTS) + 1


def test_quota_counts_documents_and_staged_uploads(client, monkeypatch):
    monkeypatch.setenv("DSP_DOCUMENT_QUOTA_MB", "1")
    get_settings.cache_clear()
    marie = log_in(client, HOFFMANN)
    first = client.call(dsp.stage_upload, b"a" * 600_000, "a.txt")
    error = _assert_refused_and_nothing_stored(client, b"b" * 600_000, "bilan.txt", "quota_exceeded", marie)
    assert error.params == {"quota_mb": 1}
    client.call(dsp.discard_upload, first.ref)
    assert client.call(dsp.stage_upload, b"b" * 600_000, "b.txt").size_bytes == 600_000


def test_not_logged_in_stores_nothing(client):
    files, before = _stored_files(), _counts()
    error = _err(client.call, dsp.stage_upload, _pdf(), "report.pdf")
    assert isinstance(error, AuthError) and error.code == "not_logged_in"
    assert (_stored_files(), _counts()) == (files, before)
    row = _audit_rows("document.upload")[-1]
    assert (row.outcome, row.patient_id, row.actor_patient_id) == ("not_logged_in", None, None)
    for fn, args in ((dsp.list_documents, ()), (dsp.read_document, (1,)), (dsp.describe_documents, ([1],))):
        assert _err(client.call, fn, *args).code == "not_logged_in"


def test_terms_pending_stores_nothing(client):
    log_in(client, GONCALVES, accept_terms=False)
    files, before = _stored_files(), _counts()
    assert _err(client.call, dsp.stage_upload, b"texte\n", "t.txt").code == "terms_pending"
    assert (_stored_files(), _counts()) == (files, before)


# --------------------------------------------------------------------------- staged uploads


def test_document_type_unknown_keeps_the_upload(client):
    log_in(client, HOFFMANN)
    staged = client.call(dsp.stage_upload, b"directives\n", "d.txt")
    error = _err(client.call, dsp.file_document, staged.ref, "x-rays")
    assert isinstance(error, UploadRejected) and error.code == "document_type_unknown"
    info = client.call(dsp.file_document, staged.ref, "advance_directives")
    assert info.doc_type == "advance_directives"
    # filed: the same reference again (a retried request) gives the same document, not a second one
    assert client.call(dsp.file_document, staged.ref, "advance_directives") == info


def test_staged_upload_expires_after_an_hour(client, fake_clock, long_sessions):
    marie = log_in(client, HOFFMANN)
    files = _stored_files()
    staged = client.call(dsp.stage_upload, b"en attente\n", "x.txt")
    assert len(_stored_files()) == len(files) + 1
    fake_clock.advance(3600)
    error = _err(client.call, dsp.file_document, staged.ref, "holder_expression")
    assert error.code == "upload_expired"
    assert _stored_files() == files and _counts()[1] == 0
    row = _audit_rows("document.file")[-1]
    assert (row.actor_patient_id, row.patient_id, row.outcome) == (marie, marie, "upload_expired")


def test_purge_removes_expired_uploads_only(client, fake_clock):
    log_in(client, HOFFMANN)
    other = Client("conv-2")
    log_in(other, HOFFMANN)
    files = _stored_files()
    client.call(dsp.stage_upload, b"ancien\n", "a.txt")
    fake_clock.advance(1800)
    other.call(dsp.stage_upload, b"recent\n", "b.txt")
    fake_clock.advance(1801)
    with UnitOfWork() as uow:
        assert dsp.purge_expired_uploads(uow) == 1
    assert len(_stored_files()) == len(files) + 1 and _counts()[1] == 1
    fake_clock.advance(1800)
    with UnitOfWork() as uow:
        assert dsp.purge_expired_uploads(uow) == 1
        assert dsp.purge_expired_uploads(uow) == 0
    assert _stored_files() == files and _counts()[1] == 0


def test_discard_deletes_the_file(client):
    log_in(client, HOFFMANN)
    files = _stored_files()
    staged = client.call(dsp.stage_upload, b"annule\n", "a.txt")
    client.call(dsp.discard_upload, staged.ref)
    assert _stored_files() == files and _counts()[1] == 0
    client.call(dsp.discard_upload, staged.ref)  # twice: harmless, and nothing to audit
    assert [r.outcome for r in _audit_rows("document.discard")] == ["ok"]


def test_a_new_file_replaces_the_one_waiting_for_its_type(client):
    log_in(client, HOFFMANN)
    files = _stored_files()
    first = client.call(dsp.stage_upload, b"premier\n", "a.txt")
    second = client.call(dsp.stage_upload, b"second\n", "b.txt")
    assert len(_stored_files()) == len(files) + 1 and _counts()[1] == 1
    assert _err(client.call, dsp.file_document, first.ref, "holder_expression").code == "upload_expired"
    assert client.call(dsp.file_document, second.ref, "holder_expression").title == "b"


def test_an_upload_belongs_to_its_conversation(client):
    log_in(client, HOFFMANN)
    staged = client.call(dsp.stage_upload, b"mien\n", "a.txt")
    other = Client("conv-2")
    log_in(other, HOFFMANN)  # the same person on another chat
    assert _err(other.call, dsp.file_document, staged.ref, "holder_expression").code == "upload_expired"
    other.call(dsp.discard_upload, staged.ref)
    assert client.call(dsp.file_document, staged.ref, "holder_expression").title == "a"


# --------------------------------------------------------------------------- assistant, audit


def test_an_assistant_adds_a_document_to_the_holders_record(client):
    other = Client("conv-kayser")
    nora = log_in(other, KAYSER)
    marie = patient_id(HOFFMANN)
    other.call(dsp.act_for, marie)
    info = _upload(other, b"pour Marie\n", "note.txt", "end_of_life_wishes")
    assert (info.author_kind, info.author_name) == ("assistant", "Nora Kayser")
    row = _audit_rows("document.file")[-1]
    assert (row.actor_patient_id, row.patient_id, row.on_behalf_of) == (nora, marie, f"patient:{marie}")
    assert row.object == f"document:{info.id}"
    log_in(client, HOFFMANN)
    mine = client.call(dsp.list_documents)
    assert mine[0] == info
    other.call(dsp.act_for_self)
    assert info.id not in [d.id for d in other.call(dsp.list_documents)]


def test_no_personal_value_in_audit_or_logs(client, caplog):
    caplog.set_level(logging.DEBUG)
    log_in(client, HOFFMANN)
    filename = "Diagnostic_Marie_Hoffmann_VIH.pdf"
    info = _upload(client, _pdf(), filename)
    assert info.title == "Diagnostic Marie Hoffmann VIH"
    _err(client.call, dsp.stage_upload, _pdf(), filename)  # duplicate
    _err(client.call, dsp.stage_upload, b"MZ" + b"\x00" * 64, filename)
    with UnitOfWork() as uow:
        for row in uow.session.scalars(select(AuditEvent)):
            text = " ".join(str(v) for v in (row.actor, row.object, row.detail, row.outcome, row.on_behalf_of))
            assert "Diagnostic" not in text and "VIH" not in text and "Hoffmann" not in text
    assert "Diagnostic" not in caplog.text and "VIH" not in caplog.text
    ok = [r for r in _audit_rows("document.upload") if r.outcome == "ok"][-1]
    assert json.loads(ok.detail) == {"format": "pdf", "size_bytes": len(_pdf())}
    assert ok.object.startswith("upload:")
