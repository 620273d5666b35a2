"""Imaging store: every pydicom sample, rendering, malformed files, authorization, audit and privacy."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import stat
import struct
import time
import tracemalloc
import zlib
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dsp_helpers import Client
from dsp_session import log_in, patient_id
from PIL import Image
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select

import bot.dsp as dsp
from bot.dsp import DEMO_PATIENTS, UnitOfWork, clock, imaging
from bot.dsp.cli import main as cli_main
from bot.dsp.demo import DEMO_STUDIES
from bot.dsp.errors import AccessDenied, AuthError, DspError, ImagingError
from bot.dsp.matricule import generate_matricule
from bot.dsp.orm import Account, AuditEvent, Document, ImagingInstance, ImagingStudy, Patient, Professional, fold
from bot.dsp.settings import get_settings

HOFFMANN = DEMO_PATIENTS[2]  # demo CT (400 days ago) and MR (150 days ago)
GONCALVES = DEMO_PATIENTS[3]  # terms not accepted; demo abdominal MR
KAYSER = DEMO_PATIENTS[5]  # designated assistant of Marie Hoffmann; demo US (palette, RGB, multi-frame)

#: Seconds one file may take to be read, indexed and rendered (measured: tens of milliseconds).
TIME_BOUND = 5.0
#: Largest Python allocation peak allowed while reading a malformed file, in bytes.
MEMORY_BOUND = 20 * 1024 * 1024

_SAMPLE_ROOT = Path(get_testdata_file("CT_small.dcm")).parent
pytestmark = pytest.mark.filterwarnings("ignore:Expected explicit VR:UserWarning")  # SC_rgb_jpeg.dcm

SAMPLES = sorted(
    (Path(p) for p in get_testdata_files() if Path(p).is_file()), key=lambda p: p.relative_to(_SAMPLE_ROOT).as_posix()
)

#: What the store does with each pydicom sample that it does not render: a refusal code,
#: "not_renderable" (indexed, shown only in a full viewer) or "indexed" (a structured report).
#: Every other sample is accepted and rendered to PNG.
NOT_RENDERED = {
    "ExplVR_BigEndNoMeta.dcm": "dicom_invalid",  # no file meta (raw data set)
    "ExplVR_LitEndNoMeta.dcm": "dicom_invalid",
    "JPEG-lossy.dcm": "not_renderable",  # no plugin decodes this 12-bit JPEG
    "JPEG2000-embedded-sequence-delimiter.dcm": "not_renderable",
    "JPEGLSNearLossless_08.dcm": "dicom_invalid",  # no Study / Series Instance UID
    "JPEGLSNearLossless_16.dcm": "dicom_invalid",
    "MR_truncated.dcm": "dicom_truncated",  # pixel data shorter than rows x columns x bits
    "README.txt": "dicom_invalid",
    "SC_rgb_jls_lossy_line.dcm": "dicom_invalid",  # no Study / Series Instance UID
    "SC_rgb_jls_lossy_sample.dcm": "dicom_invalid",
    "UN_sequence.dcm": "dicom_no_pixels",
    "badVR.dcm": "dicom_invalid",  # Number of Frames "1A"
    "crayons.icc": "dicom_invalid",
    "dicomdirtests/README.txt": "dicom_invalid",
    "dicomdirtests/TINY_ALPHA/README": "dicom_invalid",
    "empty_charset_LEI.dcm": "dicom_no_pixels",
    "meta_missing_tsyntax.dcm": "dicom_invalid",
    "nested_priv_SQ.dcm": "dicom_invalid",
    "no_meta.dcm": "dicom_invalid",
    "no_meta_group_length.dcm": "dicom_no_pixels",
    "priv_SQ.dcm": "dicom_no_pixels",
    "reportsi.dcm": "indexed",
    "reportsi_with_empty_number_tags.dcm": "indexed",
    "rtplan.dcm": "dicom_no_pixels",
    "rtplan.dump": "dicom_invalid",
    "rtplan_truncated.dcm": "dicom_truncated",
    "rtstruct.dcm": "dicom_invalid",  # a text dump named .dcm
    "rtstruct.dump": "dicom_invalid",
    "test-SR.dcm": "indexed",
    "test1.json": "dicom_invalid",
    "test_PN.json": "dicom_invalid",
    "waveform_ecg.dcm": "dicom_no_pixels",
    "zipMR.gz": "dicom_invalid",
}


def _expected(name: str) -> str:
    if name.startswith("dicomdirtests/") and (name.split("/")[-1].startswith("DICOMDIR") or "/IM0000" in name):
        return "dicom_no_pixels"  # media directories, and CT headers whose pixel data was removed
    return NOT_RENDERED.get(name, "rendered")


def _name(path: Path) -> str:
    return path.relative_to(_SAMPLE_ROOT).as_posix()


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def holder() -> str:
    """A record holder without the demo data: its matricule."""
    matricule = generate_matricule(date(1980, 5, 17), 900)
    with UnitOfWork() as uow:
        uow.session.add(Patient(matricule=matricule, given_name="Test", family_name="Patient",
                                birth_date=date(1980, 5, 17)))
        uow.commit()
    return matricule


@pytest.fixture
def demo():
    with UnitOfWork() as uow:
        dsp.seed_demo(uow)


def _sample(name: str) -> Path:
    return Path(get_testdata_file(name))


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _copy(name: str, **changes) -> Dataset:
    ds = pydicom.dcmread(_sample(name))
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    if "SOPInstanceUID" in changes:
        ds.file_meta.MediaStorageSOPInstanceUID = changes["SOPInstanceUID"]
    return ds


def _png(rendered: imaging.RenderedImage) -> Image.Image:
    image = Image.open(io.BytesIO(rendered.png))
    assert image.format == "PNG" and image.size == (rendered.width, rendered.height)
    image.load()
    return image


def _code(fn, *args, **kwargs) -> str:
    with pytest.raises(DspError) as info:
        fn(*args, **kwargs)
    return info.value.code


def _import(path: Path, matricule: str, **kwargs) -> imaging.ImportResult:
    with UnitOfWork() as uow:
        return imaging.import_dicom(uow, path, matricule, **kwargs)


def _audit_rows(action: str) -> list[AuditEvent]:
    with UnitOfWork() as uow:
        return list(uow.session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / "in" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _bounded(fn, *args, **kwargs):
    """Run `fn` twice: timed, then traced (tracemalloc slows it down); return (outcome, seconds, peak bytes).

    The outcome is the result or the DspError of the second run; `fn` must give the same both times.
    """

    def run():
        try:
            return fn(*args, **kwargs)
        except DspError as error:
            return error

    start = time.perf_counter()
    first = run()
    elapsed = time.perf_counter() - start
    tracemalloc.start()
    try:
        outcome = run()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert type(first) is type(outcome) and getattr(first, "code", None) == getattr(outcome, "code", None)
    return outcome, elapsed, peak


# --------------------------------------------------------------------------- every pydicom sample


def test_the_samples_are_pydicoms_own_files():
    assert len(SAMPLES) > 150
    names = {_name(p) for p in SAMPLES}
    assert set(NOT_RENDERED) <= names


@pytest.mark.parametrize("path", SAMPLES, ids=_name)
def test_every_pydicom_sample_is_indexed_or_refused_with_a_code(path, holder):
    expected = _expected(_name(path))
    start = time.perf_counter()
    result = _import(path, holder)
    if expected.startswith(("dicom_", "file_")):
        assert (result.studies, result.instances, result.refused) == (0, 0, [(path.name, expected)])
    else:
        assert (result.studies, result.instances, result.refused) == (1, 1, [])
        with UnitOfWork() as uow:
            row = uow.session.scalars(select(ImagingInstance)).one()
            stored = get_settings().imaging_dir / row.storage_name
            assert stored.read_bytes() == path.read_bytes()
            assert row.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
            assert row.renderable == (expected == "rendered")
            assert (row.frames == 0) == (expected == "indexed")
        if expected == "rendered":
            image = _png(imaging.render_dicom(stored, max_size=128))
            assert max(image.size) <= 128 and image.mode in ("L", "RGB")
        elif expected == "not_renderable":
            assert _code(imaging.render_dicom, stored) == "image_not_renderable"
        else:
            assert _code(imaging.render_dicom, stored) == "dicom_no_pixels"
    assert time.perf_counter() - start < TIME_BOUND


def test_compressed_samples_decode_through_the_plugins():
    # JPEG baseline / extended / lossless, JPEG-LS, JPEG 2000 and RLE, decoded by pylibjpeg or GDCM
    for name in ("SC_rgb_jpeg_dcmtk.dcm", "JPGExtended.dcm", "SC_rgb_jpeg_gdcm.dcm", "MR_small_jpeg_ls_lossless.dcm",
                 "MR_small_jp2klossless.dcm", "693_J2KI.dcm", "MR_small_RLE.dcm", "examples_ybr_color.dcm"):
        header = imaging.read_header(_sample(name))
        assert pydicom.uid.UID(header.transfer_syntax).is_compressed, name
        _png(imaging.render_dicom(_sample(name), max_size=64))


# --------------------------------------------------------------------------- rendering


def _grey(rendered: imaging.RenderedImage) -> np.ndarray:
    image = _png(rendered)
    assert image.mode == "L"
    return np.asarray(image, dtype=np.int16)


def test_monochrome1_is_inverted():
    path = next(p for p in SAMPLES if p.name == "6154")  # CR, MONOCHROME1
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    as_mono1 = _grey(imaging.render_dicom(path))
    ds.PhotometricInterpretation = "MONOCHROME2"
    as_mono2 = _grey(imaging.render_dicom(_bytes(ds)))
    assert as_mono1.std() > 5  # a real picture, not a flat one
    assert np.array_equal(as_mono1, 255 - as_mono2)


def test_rescale_and_window_of_the_file_are_applied():
    # CR with slope 0.684, intercept 200, window 1600 / 2800; MONOCHROME1
    path = next(p for p in SAMPLES if p.name == "6154")
    ds = pydicom.dcmread(path)
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (0.684, 200.0)
    centre, width = float(ds.WindowCenter), float(ds.WindowWidth)
    values = ds.pixel_array.astype(np.float64) * 0.684 + 200  # modality LUT
    linear = np.clip((values - (centre - 0.5)) / (width - 1) + 0.5, 0, 1) * 255  # PS3.3 C.11.2.1.2.1
    expected = 255 - np.rint(linear)  # MONOCHROME1
    rendered = _grey(imaging.render_dicom(path))  # 16 x 16: not resized
    assert rendered.shape == expected.shape
    assert np.abs(rendered - expected).max() <= 1


def test_window_without_rescale_and_automatic_window():
    ds = pydicom.dcmread(_sample("MR_small.dcm"))  # window 600 / 1600, no rescale
    centre, width = float(ds.WindowCenter), float(ds.WindowWidth)
    expected = np.rint(np.clip((ds.pixel_array - (centre - 0.5)) / (width - 1) + 0.5, 0, 1) * 255)
    assert np.abs(_grey(imaging.render_dicom(_sample("MR_small.dcm"))) - expected).max() <= 1
    # CT_small has a rescale but no window: an automatic window uses the whole grey range
    ct = _grey(imaging.render_dicom(_sample("CT_small.dcm")))
    assert ct.min() == 0 and ct.max() == 255 and ct.std() > 30


def test_rgb_stays_colour_and_ybr_is_converted():
    image = np.asarray(_png(imaging.render_dicom(_sample("examples_rgb_color.dcm"))).convert("RGB"), dtype=int)
    assert (np.abs(image[..., 0] - image[..., 2]) > 60).mean() > 0.01  # the Doppler colours
    # the same colour bars, stored as RGB and as JPEG YBR_FULL, render alike
    rgb = np.asarray(_png(imaging.render_dicom(_sample("SC_rgb_rle.dcm"))), dtype=int)
    ybr = np.asarray(_png(imaging.render_dicom(_sample("SC_rgb_dcmtk_+eb+cy+n1.dcm"))), dtype=int)
    assert rgb.shape == ybr.shape == (100, 100, 3)
    assert np.abs(rgb - ybr).mean() < 8
    assert tuple(rgb[5, 50]) == (255, 0, 0)  # the first bar is red


def test_palette_colour_is_coloured():
    ds = pydicom.dcmread(_sample("examples_palette.dcm"))
    assert ds.PhotometricInterpretation == "PALETTE COLOR"
    image = np.asarray(_png(imaging.render_dicom(_sample("examples_palette.dcm"), max_size=800)), dtype=int)
    assert image.ndim == 3
    assert (np.abs(image[..., 2] - image[..., 0]) > 40).sum() > 100  # the blue banner


def test_multi_frame_renders_one_frame_the_middle_by_default():
    path = _sample("examples_ybr_color.dcm")
    assert imaging.read_header(path).frames == 30
    middle = imaging.render_dicom(path)
    assert (middle.width, middle.height) == (320, 240)
    assert middle.png == imaging.render_dicom(path, frame=15).png
    assert imaging.render_dicom(path, frame=0).png != imaging.render_dicom(path, frame=29).png
    assert imaging.render_dicom(path, frame=999).png == imaging.render_dicom(path, frame=29).png  # nearest frame


def test_size_bound_keeps_the_aspect():
    rendered = imaging.render_dicom(_sample("examples_overlay.dcm"), max_size=100)  # 484 x 300
    assert (rendered.width, rendered.height) == (100, 62)
    assert max(_png(imaging.render_dicom(_sample("examples_palette.dcm"), max_size=5000)).size) == 800  # never up
    assert max(_png(imaging.render_dicom(_sample("examples_palette.dcm"), max_size=1)).size) == imaging.MIN_RENDER_SIZE


def test_header_representation_shows_no_value():
    header = imaging.read_header(_sample("CT_small.dcm"))
    assert header.modality == "CT" and header.study_date == date(2004, 1, 19) and header.frames == 1
    for value in (header.study_instance_uid, header.sop_instance_uid, header.series_instance_uid, "2004"):
        assert value not in repr(header)


# --------------------------------------------------------------------------- malformed files


def _overflowing_element() -> bytes:
    """CT_small with an element whose 4-byte length says 4 GiB (the file has 39 kB)."""
    ds = pydicom.dcmread(_sample("CT_small.dcm"))
    ds.add_new(0x00111010, "UN", b"ABCDEFGH")
    data = bytearray(_bytes(ds))
    at = data.find(b"\x11\x00\x10\x10UN")
    data[at + 8 : at + 12] = struct.pack("<I", 0xFFFFFFF0)
    return bytes(data)


def _lying_pixel_length() -> bytes:
    data = bytearray(_sample("CT_small.dcm").read_bytes())
    at = data.find(b"\xe0\x7f\x10\x00OW")
    data[at + 8 : at + 12] = struct.pack("<I", 0x7FFFFFF0)
    return bytes(data)


def _deflate_bomb() -> bytes:
    """A deflated data set of 40 kB that would inflate to 8 MiB."""
    original = _sample("image_dfl.dcm").read_bytes()
    with imaging._opened(original) as src:
        _, start = imaging._scan_meta(src, 132)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return original[:start] + packer.compress(b"\x00" * (8 * 1024 * 1024)) + packer.flush()


def _many_tiny_elements() -> bytes:
    """CT_small with 12,000 tiny elements in its header (more than a real header has: refused early)."""
    original = _sample("CT_small.dcm").read_bytes()
    with imaging._opened(original) as src:
        _, start = imaging._scan_meta(src, 132)
    tiny = b"".join(struct.pack("<HH2sH", 0x0009, e, b"LO", 2) + b"ab" for e in range(12_000))
    return original[:start] + tiny + original[start:]


def _without_pixels(name: str) -> Dataset:
    ds = pydicom.dcmread(_sample(name))
    del ds.PixelData
    return ds


MALFORMED = {
    "zero-byte": (lambda: b"", "file_empty"),
    "text-named-dcm": (lambda: b"Compte rendu : pas un fichier DICOM.\n" * 20, "dicom_invalid"),
    "truncated-half": (lambda: _sample("CT_small.dcm").read_bytes()[:19603], "dicom_truncated"),
    "truncated-header": (lambda: _sample("CT_small.dcm").read_bytes()[:600], "dicom_truncated"),
    "overflowing-length": (_overflowing_element, "dicom_truncated"),
    "lying-pixel-length": (_lying_pixel_length, "dicom_truncated"),
    "lying-rows-columns": (lambda: _bytes(_copy("CT_small.dcm", Rows=60000, Columns=60000)), "dicom_truncated"),
    "garbage-after-preamble": (lambda: b"\x00" * 128 + b"DICM" + bytes((i * 37) % 251 for i in range(4096)),
                               "dicom_invalid"),
    "structured-report": (lambda: _sample("test-SR.dcm").read_bytes(), "indexed"),
    "no-preamble": (lambda: _sample("CT_small.dcm").read_bytes()[132:], "rendered"),
    "lying-codestream": (
        lambda: _bytes(_copy("MR_small_jp2klossless.dcm", Rows=8, Columns=8)), "not_renderable"),
    "image-without-pixels": (lambda: _bytes(_without_pixels("CT_small.dcm")), "dicom_no_pixels"),
    "many-tiny-elements": (_many_tiny_elements, "dicom_invalid"),
    "preamble-only": (lambda: b"\x00" * 128 + b"DICM", "dicom_invalid"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_files_are_refused_or_degraded_within_bounds(case, tmp_path, holder):
    make, expected = MALFORMED[case]
    path = _write(tmp_path, f"{case}.dcm", make())
    outcome, elapsed, peak = _bounded(imaging.render_dicom, path)
    assert elapsed < TIME_BOUND and peak < MEMORY_BOUND, (elapsed, peak)
    if expected == "rendered":
        assert isinstance(outcome, imaging.RenderedImage)
    else:
        wanted = {"indexed": "dicom_no_pixels", "not_renderable": "image_not_renderable"}.get(expected, expected)
        assert isinstance(outcome, ImagingError) and outcome.code == wanted
    start = time.perf_counter()
    outcome = _import(path, holder)  # the same reading, then the database and the store
    assert time.perf_counter() - start < TIME_BOUND
    if expected in ("rendered", "indexed", "not_renderable"):
        assert (outcome.instances, outcome.refused) == (1, [])
    else:
        assert (outcome.instances, outcome.refused) == (0, [(path.name, expected)])
    # the process goes on: a good file still renders
    _png(imaging.render_dicom(_sample("MR_small.dcm")))


def test_no_preamble_renders_like_the_original():
    original = _sample("CT_small.dcm").read_bytes()
    assert imaging.render_dicom(original[132:]).png == imaging.render_dicom(original).png


def test_overflowing_length_read_from_disk_allocates_nothing_large(tmp_path):
    # a plain buffered read of the declared length would allocate 4 GiB before reading
    path = _write(tmp_path, "overflow.dcm", _overflowing_element())
    outcome, _, peak = _bounded(imaging.read_header, path)
    assert isinstance(outcome, ImagingError) and outcome.code == "dicom_truncated"
    assert peak < 2 * 1024 * 1024


def test_deflate_bomb_is_refused(tmp_path, monkeypatch):
    assert imaging.read_header(_sample("image_dfl.dcm")).transfer_syntax == "1.2.840.10008.1.2.1.99"
    monkeypatch.setenv("DSP_DICOM_MAX_MB", "2")
    get_settings.cache_clear()
    outcome, elapsed, peak = _bounded(imaging.read_header, _deflate_bomb())
    assert isinstance(outcome, ImagingError) and (outcome.code, outcome.params) == ("file_too_large", {"limit_mb": 2})
    assert elapsed < TIME_BOUND and peak < 8 * 1024 * 1024


def test_size_limit_and_non_files(tmp_path, monkeypatch, holder):
    monkeypatch.setenv("DSP_DICOM_MAX_MB", "1")
    get_settings.cache_clear()
    big = _write(tmp_path, "big.dcm", b"\x00" * (1024 * 1024 + 1))
    error = pytest.raises(ImagingError, imaging.read_header, big).value
    assert (error.code, error.params) == ("file_too_large", {"limit_mb": 1})
    assert _code(imaging.read_header, tmp_path) == "dicom_invalid"  # a folder
    assert _code(imaging.read_header, tmp_path / "missing.dcm") == "dicom_invalid"
    fifo = tmp_path / "pipe.dcm"
    os.mkfifo(fifo)
    assert _code(imaging.read_header, fifo) == "dicom_invalid"  # never opened: it would block


def test_third_party_log_messages_are_withheld(caplog):
    imaging.read_header(_sample("CT_small.dcm"))
    caplog.set_level(logging.DEBUG)
    logging.getLogger("pydicom").warning("Invalid value for VR PN: %s", "Doe^John")
    logging.getLogger("pydicom").debug("Reading file '%s'", "/secret/Doe_John/IM1.dcm")
    assert "Doe" not in caplog.text
    assert [r.getMessage() for r in caplog.records] == ["pydicom: warning withheld (it may quote DICOM header values)"]


# --------------------------------------------------------------------------- import, key images, reports


def _series(count: int, **common) -> list[Dataset]:
    """`count` CT instances of one series (copies of CT_small with their own SOP Instance UIDs)."""
    series_uid = generate_uid()
    return [_copy("CT_small.dcm", SOPInstanceUID=generate_uid(), SeriesInstanceUID=series_uid, InstanceNumber=i + 1,
                  **common) for i in range(count)]


def _kos(images: list[Dataset], keys: list[int]) -> Dataset:
    """A Key Object Selection document flagging `images[k]` for k in `keys`."""
    first = images[0]
    ds = Dataset()
    ds.SOPClassUID = imaging.KOS_SOP_CLASS
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = first.StudyInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "KO"
    ds.PatientName, ds.PatientID = first.PatientName, first.PatientID
    references = []
    for k in keys:
        ref = Dataset()
        ref.ReferencedSOPClassUID = images[k].SOPClassUID
        ref.ReferencedSOPInstanceUID = images[k].SOPInstanceUID
        references.append(ref)
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ReferencedSOPSequence = references
    evidence = Dataset()
    evidence.StudyInstanceUID = first.StudyInstanceUID
    evidence.ReferencedSeriesSequence = [series]
    ds.CurrentRequestedProcedureEvidenceSequence = [evidence]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _folder(tmp_path: Path, files: dict[str, bytes], name: str = "study") -> Path:
    folder = tmp_path / name
    for relative, data in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(data)
    return folder


def _activate(matricule: str) -> dsp.demo.DemoPatient:
    """Give the `holder` fixture's patient an activated account (terms accepted); return it for `log_in`."""
    email = "test.patient@example.lu"
    with UnitOfWork() as uow:
        patient = uow.session.scalars(select(Patient).where(Patient.matricule == matricule)).one()
        patient.email = email
        uow.session.add(Account(patient_id=patient.id, state="activated", activation_code_hash="-",
                                password_hash=dsp.hash_password(dsp.DEMO_PASSWORD), contact_channel="email",
                                terms_accepted_at=clock.now(), activated_at=clock.now()))
        uow.commit()
    person = dsp.demo.DemoPatient("Test", "Patient", date(1980, 5, 17), 900, "activated", "-", email=email,
                                  channel="email")
    assert person.matricule == matricule
    return person


def _instances() -> list[ImagingInstance]:
    with UnitOfWork() as uow:
        return list(uow.session.scalars(select(ImagingInstance).order_by(ImagingInstance.instance_number)))


def test_folder_import_through_the_cli(tmp_path, holder, capsys):
    study_uid = generate_uid()
    images = _series(3, StudyInstanceUID=study_uid)
    folder = _folder(tmp_path, {
        "a/IM1": _bytes(images[0]), "a/IM2": _bytes(images[1]), "b/IM3": _bytes(images[2]),
        "notes.txt": b"pas une image\n", "empty.dcm": b"", "report.dcm": _sample("test-SR.dcm").read_bytes(),
    })  # fmt: skip
    assert cli_main(["import-dicom", str(folder), "--matricule", holder]) == 0
    printed = json.loads(capsys.readouterr().out)
    # test-SR.dcm is another patient's: the whole folder is refused
    assert printed["instances"] == 0 and {code for _, code in printed["refused"]} == {
        "dicom_patient_mismatch", "dicom_invalid", "file_empty"}
    (folder / "report.dcm").unlink()
    assert cli_main(["import-dicom", str(folder), "--matricule", holder]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"studies": 1, "instances": 3, "refused": [["empty.dcm", "file_empty"],
                                                                   ["notes.txt", "dicom_invalid"]]}
    rows = _instances()
    assert [row.is_key for row in rows] == [False, True, False]  # no KOS: the middle of the series
    directory = get_settings().imaging_dir
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert all(stat.S_IMODE((directory / row.storage_name).stat().st_mode) == 0o600 for row in rows)
    # the same files again: duplicates, nothing added
    assert cli_main(["import-dicom", str(folder / "a"), "--matricule", holder]) == 0
    assert json.loads(capsys.readouterr().out)["refused"] == [["IM1", "dicom_duplicate"], ["IM2", "dicom_duplicate"]]
    assert len(_instances()) == 3
    # admin errors
    assert cli_main(["import-dicom", str(folder), "--matricule", "1980051790099"]) == 2
    assert cli_main(["import-dicom", str(tmp_path / "none"), "--matricule", holder]) == 2
    assert cli_main(["import-dicom", str(folder), "--matricule", holder, "--report", str(folder / "notes.txt"),
                     "--report-author", "999"]) == 2  # no such professional
    # several paths at once
    assert cli_main(["import-dicom", str(_sample("MR_small.dcm")), str(folder / "b"), "--matricule", holder]) == 0
    assert json.loads(capsys.readouterr().out)["refused"] == [["MR_small.dcm", "dicom_patient_mismatch"],
                                                             ["IM3", "dicom_patient_mismatch"]]
    rows = _audit_rows("imaging.import")
    assert all(row.actor == "cli" and row.patient_id is not None for row in rows)
    assert [json.loads(row.detail) for row in rows if row.outcome == "ok"] == [{"instances": 3}]


def test_key_object_selection_names_the_key_images(tmp_path, holder):
    images = _series(4)
    folder = _folder(tmp_path, {f"IM{i}": _bytes(ds) for i, ds in enumerate(images)})
    assert _import(folder, holder).instances == 4
    assert [row.is_key for row in _instances()] == [False, True, False, False]
    # the KOS arrives later: it replaces the default choice
    _write(tmp_path, "kos.dcm", _bytes(_kos(images, [0, 3])))
    result = _import(tmp_path / "in" / "kos.dcm", holder)
    assert (result.studies, result.instances) == (1, 1)
    rows = _instances()
    assert [(row.instance_number, row.is_key) for row in rows if row.frames] == [(1, True), (2, False), (3, False),
                                                                                 (4, True)]
    kos = next(row for row in rows if row.frames == 0)
    assert (kos.is_key, kos.renderable, kos.sop_class_uid) == (False, False, imaging.KOS_SOP_CLASS)


def test_report_is_a_document_of_the_record(tmp_path, holder):
    with UnitOfWork() as uow:
        uow.session.add(Professional(family_name="Lefèvre", given_name="Sophie", profession="médecin",
                                     specialty="radiologie", city="Luxembourg",
                                     search_key=fold("Lefèvre Sophie médecin radiologie Luxembourg")))
        uow.commit()
        author = uow.session.scalars(select(Professional.id)).one()
    report = _write(tmp_path, "CR scanner.txt", b"Compte rendu : examen normal.\n")
    result = _import(_sample("CT_small.dcm"), holder, report=report, report_author_id=author)
    assert (result.studies, result.instances, result.refused) == (1, 1, [])
    with UnitOfWork() as uow:
        study = uow.session.scalars(select(ImagingStudy)).one()
        document = uow.session.get(Document, study.report_document_id)
        assert (document.doc_type, document.title, document.format) == ("imaging_report", "CR scanner", "text")
        assert document.author_professional_id == author and document.patient_id == study.patient_id
    assert [(r.actor, r.object, r.outcome) for r in _audit_rows("imaging.report")] == [
        ("cli", f"document:{document.id}", "ok")]
    # a report for two studies at once is not attached; a wrong format is refused
    two = _folder(tmp_path, {"mr": _sample("MR_small.dcm").read_bytes(), "mr2": _bytes(_copy(
        "MR_small.dcm", StudyInstanceUID=generate_uid(), SOPInstanceUID=generate_uid()))})
    assert _import(two, holder, report=report, report_author_id=author).refused == [("CR scanner.txt",
                                                                                     "report_not_attached")]
    exe = _write(tmp_path, "r.bin", b"MZ\x90\x00" + b"\x00" * 100)
    result = _import(_bytes_file(tmp_path, _copy("MR_small.dcm", StudyInstanceUID=generate_uid(),
                                                  SOPInstanceUID=generate_uid())), holder,
                     report=exe, report_author_id=author)
    assert result.refused == [("r.bin", "file_type_refused")]
    with pytest.raises(LookupError):
        _import(_sample("CT_small.dcm"), holder, report=report, report_author_id=999)
    # without an author given: the reading physician the header names, if the directory has them
    named = _copy("MR_small.dcm", StudyInstanceUID=generate_uid(), SOPInstanceUID=generate_uid(),
                  NameOfPhysiciansReadingStudy="LEFEVRE^Sophie")
    other = _write(tmp_path, "autre.txt", b"Compte rendu : IRM normale.\n")
    assert _import(_bytes_file(tmp_path, named), holder, report=other).refused == []
    unnamed = _copy("MR_small.dcm", StudyInstanceUID=generate_uid(), SOPInstanceUID=generate_uid())
    third = _write(tmp_path, "troisieme.txt", b"Compte rendu : sans auteur connu.\n")
    assert _import(_bytes_file(tmp_path, unnamed), holder, report=third).refused == []
    with UnitOfWork() as uow:
        authors = {d.title: d.author_professional_id for d in uow.session.scalars(select(Document))}
    assert authors == {"CR scanner": author, "autre": author, "troisieme": None}


def _bytes_file(tmp_path: Path, ds: Dataset) -> Path:
    return _write(tmp_path, f"{ds.SOPInstanceUID}.dcm", _bytes(ds))


def test_study_date_and_undated_studies(tmp_path, holder):
    undated = _copy("MR_small.dcm", StudyInstanceUID=generate_uid(), SOPInstanceUID=generate_uid())
    del undated.StudyDate
    _import(_bytes_file(tmp_path, undated), holder)
    _import(_sample("CT_small.dcm"), holder)  # 19/01/2004
    _import(_sample("MR_small.dcm"), holder, study_date=date(2026, 2, 1))  # date given on import
    with UnitOfWork() as uow:
        dates = [row.study_date for row in uow.session.scalars(select(ImagingStudy).order_by(ImagingStudy.id))]
    assert dates == [None, date(2004, 1, 19), date(2026, 2, 1)]


# --------------------------------------------------------------------------- record services


def test_demo_studies_newest_first_with_reports_and_key_images(client, demo):
    marie = log_in(client, HOFFMANN)
    studies = client.call(imaging.list_studies)
    assert [s.modalities for s in studies] == [("MR",), ("CT",)]  # 150 then 400 days ago
    assert studies[0].study_date > studies[1].study_date
    assert all(s.has_report and s.key_image_count == 1 and (s.series_count, s.instance_count) == (1, 1)
               for s in studies)
    row = _audit_rows("imaging.list")[-1]
    assert (row.actor_patient_id, row.patient_id, row.on_behalf_of, row.outcome) == (marie, marie, None, "ok")
    assert json.loads(row.detail) == {"count": 2}
    detail = client.call(imaging.open_study, studies[1].id)
    assert detail.study == studies[1] and len(detail.series) == 1 and detail.series[0].modality == "CT"
    assert detail.key_images == detail.series[0].instances and detail.key_images[0].renderable
    documents = {d.id: d for d in client.call(dsp.list_documents)}
    report = documents[detail.report_document_id]
    assert (report.doc_type, report.author_name, report.title) == ("imaging_report", "Dr Sophie Lefèvre",
                                                                   "Compte rendu de scanner")
    image = _png(client.call(imaging.render_instance, detail.key_images[0].id, max_size=64))
    assert image.size == (64, 64)
    assert [r.object for r in _audit_rows("imaging.render")] == [f"instance:{detail.key_images[0].id}"]
    assert _audit_rows("imaging.open")[-1].object == f"study:{studies[1].id}"


def test_demo_patients_have_us_rgb_and_multi_frame_studies(client, demo):
    log_in(client, KAYSER)
    studies = client.call(imaging.list_studies)
    assert [s.modalities for s in studies] == [("US",)] * 3
    frames = []
    for study in studies:
        detail = client.call(imaging.open_study, study.id)
        key = detail.key_images[0]
        frames.append(key.frames)
        assert _png(client.call(imaging.render_instance, key.id, max_size=200)).mode == "RGB"
    assert sorted(frames) == [1, 1, 30]
    assert {d.sample for d in DEMO_STUDIES if d.holder == KAYSER} == {
        "examples_palette.dcm", "examples_rgb_color.dcm", "examples_ybr_color.dcm"}


def test_demo_seeding_is_idempotent_and_restores_a_lost_file(client, demo):
    log_in(client, HOFFMANN)
    before = client.call(imaging.list_studies)
    with UnitOfWork() as uow:
        row = uow.session.scalars(select(ImagingInstance).order_by(ImagingInstance.id)).first()
        (get_settings().imaging_dir / row.storage_name).unlink()
        dsp.seed_demo(uow)
    assert client.call(imaging.list_studies) == before
    assert (get_settings().imaging_dir / row.storage_name).exists()


def test_another_patient_never_reaches_a_study_or_an_image(client, demo):
    log_in(client, HOFFMANN)
    other = Client("conv-goncalves")
    goncalves = log_in(other, GONCALVES)
    study = other.call(imaging.list_studies)[0]
    image = other.call(imaging.open_study, study.id).key_images[0]
    for study_id in (study.id, 999_999, -1, True, "1"):
        error = pytest.raises(AccessDenied, client.call, imaging.open_study, study_id).value
        assert error.code == "study_not_found"
    for instance_id in (image.id, 999_999, None):
        error = pytest.raises(AccessDenied, client.call, imaging.render_instance, instance_id).value
        assert error.code == "image_not_found"
    assert client.call(imaging.describe_studies, [study.id, 999_999]) == []
    refused = _audit_rows("imaging.open")[-5]
    assert (refused.outcome, refused.object, refused.patient_id) == ("study_not_found", f"study:{study.id}",
                                                                     patient_id(HOFFMANN))
    assert _audit_rows("imaging.render")[-3].outcome == "image_not_found"
    assert other.call(imaging.describe_studies, [study.id, study.id]) == [study]
    assert goncalves != patient_id(HOFFMANN)


def test_an_assistant_acting_for_the_holder_reaches_the_studies_and_both_are_audited(client, demo):
    marie = patient_id(HOFFMANN)
    nora = log_in(client, KAYSER)
    own = client.call(imaging.list_studies)
    client.call(dsp.act_for, marie)
    studies = client.call(imaging.list_studies)
    assert [s.modalities for s in studies] == [("MR",), ("CT",)] and {s.id for s in studies}.isdisjoint(
        {s.id for s in own})
    key = client.call(imaging.open_study, studies[0].id).key_images[0]
    _png(client.call(imaging.render_instance, key.id))
    for action in ("imaging.list", "imaging.open", "imaging.render"):
        row = _audit_rows(action)[-1]
        assert (row.actor_patient_id, row.patient_id, row.on_behalf_of, row.outcome) == (
            nora, marie, f"patient:{marie}", "ok"), action
    # once the designation is revoked, the next read is refused
    with UnitOfWork() as uow:
        dsp.revoke_assistant(uow, holder_matricule=HOFFMANN.matricule, assistant_matricule=KAYSER.matricule)
    assert pytest.raises(AccessDenied, client.call, imaging.open_study, studies[0].id).value.code == \
        "assistant_revoked"


def test_login_and_terms_are_required(client, demo):
    for fn, args in ((imaging.list_studies, ()), (imaging.open_study, (1,)), (imaging.render_instance, (1,)),
                     (imaging.describe_studies, ([1],))):
        assert pytest.raises(AuthError, client.call, fn, *args).value.code == "not_logged_in"
    log_in(client, GONCALVES, accept_terms=False)
    assert pytest.raises(AuthError, client.call, imaging.list_studies).value.code == "terms_pending"
    assert _audit_rows("imaging.list")[-1].outcome == "terms_pending"


def test_not_renderable_and_altered_images(client, holder, tmp_path):
    # a structured report and an undecodable JPEG are listed but not rendered; an altered file is "not found"
    _import(_sample("test-SR.dcm"), holder)
    _import(_sample("JPEG-lossy.dcm"), holder)
    _import(_sample("MR_small.dcm"), holder)
    log_in(client, _activate(holder))
    studies = client.call(imaging.list_studies)
    by_modality = {s.modalities: s for s in studies}
    assert set(by_modality) == {("SR",), ("NM",), ("MR",)}
    sr = client.call(imaging.open_study, by_modality[("SR",)].id)
    assert sr.key_images == [] and sr.series[0].instances[0].frames == 0
    nm = client.call(imaging.open_study, by_modality[("NM",)].id).key_images[0]
    assert not nm.renderable
    for instance in (sr.series[0].instances[0], nm):
        error = pytest.raises(ImagingError, client.call, imaging.render_instance, instance.id).value
        assert error.code == "image_not_renderable"
    mr = client.call(imaging.open_study, by_modality[("MR",)].id).key_images[0]
    with UnitOfWork() as uow:
        row = uow.session.get(ImagingInstance, mr.id)
        (get_settings().imaging_dir / row.storage_name).write_bytes(b"altered")
    assert pytest.raises(AccessDenied, client.call, imaging.render_instance, mr.id).value.code == "image_not_found"
    assert _audit_rows("imaging.render")[-1].outcome == "storage_error"


# --------------------------------------------------------------------------- privacy


def _header_values(*paths: Path) -> set[str]:
    keywords = ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "SeriesInstanceUID",
                "SOPInstanceUID", "StudyDescription", "SeriesDescription", "AccessionNumber", "InstitutionName",
                "ReferringPhysicianName", "StudyID", "StudyDate")
    values = set()
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in keywords:
            value = str(ds.get(keyword) or "").strip()
            if len(value) >= 4:
                values.add(value)
                values.update(part for part in value.replace("^", " ").split() if len(part) >= 5)
    return values


def test_no_header_value_reaches_the_logs_the_audit_or_the_cli(client, holder, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    files = [_sample("examples_overlay.dcm"), _sample("CT_small.dcm"), _sample("test-SR.dcm"),
             _sample("MR_truncated.dcm"), _sample("JPEG-lossy.dcm")]
    secrets = _header_values(*files)
    assert {"021234567", "Sssssss^Jsssss", "abdomen^liver"} <= secrets
    for path in files:
        assert cli_main(["import-dicom", str(path), "--matricule", holder]) == 0
    log_in(client, _activate(holder))
    for study in client.call(imaging.list_studies):
        for image in client.call(imaging.open_study, study.id).key_images:
            try:
                client.call(imaging.render_instance, image.id)
            except DspError:
                pass
    printed = capsys.readouterr()
    logged = caplog.text + "\n".join(record.getMessage() for record in caplog.records)
    with UnitOfWork() as uow:
        audited = "\n".join(f"{r.actor} {r.action} {r.object} {r.outcome} {r.detail}"
                            for r in uow.session.scalars(select(AuditEvent)))
    assert "dicom refused: dicom_truncated" in logged and "imaging.render" in audited
    for value in secrets:
        assert value not in logged, value
        assert value not in audited, value
        assert value not in printed.out + printed.err, value
