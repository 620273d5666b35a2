"""Benchmark of the imaging store: render time per key image, listing time for 1,000 studies.

Run with ``.venv/bin/python benchmarks/imaging_bench.py [--repeat N]``. Everything happens in a
temporary state directory (SQLite file and imaging store), removed at the end. Printed:

* the machine's figures (CPU model, cores, Python and library versions);
* for each demo sample (``bot.dsp.demo.DEMO_STUDIES``, real files of ``pydicom.data``): the median
  time to render its key image as a chat PNG (``render_dicom``, 1024 px) and through the record
  service (``render_instance``: session, audit row, SHA-256 check), beside a baseline measured in
  the same run — a plain ``pydicom.dcmread`` of the whole file, pixel data undecoded — so that
  rendering reads as a ratio of it;
* the median time of ``list_studies`` over 1,000 synthetic studies of one record (3,000 instances),
  and of ``describe_studies`` for the 20 ids a chat view shows.

No time is asserted: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import date, timedelta
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm up (imports, caches)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _machine() -> list[tuple[str, str]]:
    return [
        ("CPU", _cpu_model()),
        ("cores", str(os.cpu_count())),
        ("system", f"{platform.system()} {platform.release()} {platform.machine()}"),
        ("Python", platform.python_version()),
        ("pydicom", _version("pydicom")),
        ("numpy", _version("numpy")),
        ("Pillow", _version("pillow")),
        ("SQLAlchemy", _version("SQLAlchemy")),
        ("pylibjpeg", f"{_version('pylibjpeg')} (libjpeg {_version('pylibjpeg-libjpeg')}, "
                      f"openjpeg {_version('pylibjpeg-openjpeg')}, rle {_version('pylibjpeg-rle')})"),
        ("python-gdcm", _version("python-gdcm")),
    ]  # fmt: skip


def _session(uow, patient_id: int, conversation_id: str) -> None:  # noqa: ANN001
    from bot.dsp import clock
    from bot.dsp.orm import LoginSession

    now = clock.now()
    uow.session.add(LoginSession(conversation_id=conversation_id, patient_id=patient_id, created_at=now,
                                 last_seen_at=now))
    uow.commit()


def bench_rendering(repeat: int) -> list[tuple[str, str, str, float, float, float, float]]:
    """Render the key image of each demo study; return rows of the table."""
    import pydicom
    from sqlalchemy import select

    from bot.dsp import UnitOfWork, imaging, seed_demo
    from bot.dsp.demo import DEMO_STUDIES, _demo_patient_id, _sample_path
    from bot.dsp.orm import ImagingInstance, ImagingSeries, ImagingStudy

    with UnitOfWork() as uow:
        seed_demo(uow)
    rows = []
    for number, demo in enumerate(DEMO_STUDIES):
        path = _sample_path(demo.sample)
        if path is None:
            continue
        header = imaging.read_header(path)
        with UnitOfWork() as uow:
            holder = _demo_patient_id(uow, demo.holder)
            instance_id = uow.session.scalars(
                select(ImagingInstance.id)
                .join(ImagingSeries, ImagingSeries.id == ImagingInstance.series_id)
                .join(ImagingStudy, ImagingStudy.id == ImagingSeries.study_id)
                .where(ImagingStudy.patient_id == holder, ImagingStudy.study_instance_uid == header.study_instance_uid,
                       ImagingInstance.is_key.is_(True))
            ).first()
            conversation = f"bench-render-{number}"
            _session(uow, holder, conversation)

        def service(instance_id: int = instance_id, conversation: str = conversation) -> None:
            with UnitOfWork() as uow:
                imaging.render_instance(uow, conversation, instance_id, max_size=1024)

        baseline = _median_ms(lambda path=path: pydicom.dcmread(path), repeat)
        pure = _median_ms(lambda path=path: imaging.render_dicom(path, max_size=1024), repeat)
        served = _median_ms(service, repeat)
        size = f"{header.columns}x{header.rows}" + (f"x{header.frames}f" if header.frames > 1 else "")
        syntax = pydicom.uid.UID(header.transfer_syntax).name.replace("Explicit VR Little Endian", "native")
        rows.append((demo.sample, f"{header.modality} {header.photometric}", f"{size}, {syntax}", baseline, pure,
                     served, pure / baseline))
    return rows


def bench_listing(count: int, repeat: int) -> tuple[float, float, float]:
    """Insert `count` studies (1 series, 3 instances each) for one record; time listing and describing."""
    from bot.dsp import UnitOfWork, imaging
    from bot.dsp.matricule import generate_matricule
    from bot.dsp.orm import ImagingInstance, ImagingSeries, ImagingStudy, Patient

    with UnitOfWork() as uow:
        born = date(1970, 1, 1)
        patient = Patient(matricule=generate_matricule(born, 900), given_name="B", family_name="M", birth_date=born)
        uow.session.add(patient)
        uow.session.flush()
        start = time.perf_counter()
        first = date(2000, 1, 1)
        studies = [
            ImagingStudy(patient_id=patient.id, study_instance_uid=f"2.25.{i}", study_date=first + timedelta(7 * i),
                         modalities="CT MR US CR".split()[i % 4], description=f"Étude {i}", body_part="CHEST")
            for i in range(count)
        ]  # fmt: skip
        uow.session.add_all(studies)
        uow.session.flush()
        series = [ImagingSeries(study_id=s.id, series_instance_uid=f"{s.study_instance_uid}.1", series_number=1,
                                modality=s.modalities, description="") for s in studies]  # fmt: skip
        uow.session.add_all(series)
        uow.session.flush()
        uow.session.add_all(
            ImagingInstance(series_id=s.id, sop_instance_uid=f"{s.series_instance_uid}.{k}", instance_number=k,
                            frames=1, is_key=k == 2, renderable=True, storage_name=uuid.uuid4().hex, sha256="0" * 64,
                            size_bytes=1, transfer_syntax="1.2.840.10008.1.2.1")
            for s in series for k in (1, 2, 3)
        )  # fmt: skip
        uow.commit()
        insert_ms = (time.perf_counter() - start) * 1000
        _session(uow, patient.id, "bench-list")

    def listing() -> None:
        with UnitOfWork() as uow:
            assert len(imaging.list_studies(uow, "bench-list")) == count

    with UnitOfWork() as uow:
        ids = [info.id for info in imaging.list_studies(uow, "bench-list")[:20]]

    def describing() -> None:
        with UnitOfWork() as uow:
            assert len(imaging.describe_studies(uow, "bench-list", ids)) == len(ids)

    return insert_ms, _median_ms(listing, repeat), _median_ms(describing, repeat)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=21, help="runs per measure (the median is shown)")
    parser.add_argument("--studies", type=int, default=1000, help="studies in the listed record")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="imaging-bench-") as state:
        os.environ["DSP_STATE_DIR"] = state
        os.environ["DSP_DATABASE_URL"] = f"sqlite:///{Path(state) / 'dsp.sqlite3'}"
        os.environ["DSP_SESSION_IDLE_SECONDS"] = "86400"
        from bot.dsp.db import reset_engine
        from bot.dsp.settings import get_settings

        get_settings.cache_clear()
        reset_engine()
        print("Imaging store benchmark")
        print()
        for name, value in _machine():
            print(f"  {name:<11} {value}")
        print()
        print(f"Render time per key image (median of {args.repeat}; PNG at most 1024 px; baseline = pydicom.dcmread "
              "of the whole file, pixels undecoded)")
        header = ("sample", "image", "size, transfer syntax", "dcmread ms", "render ms", "service ms", "render/read")
        print(f"  {header[0]:<23} {header[1]:<17} {header[2]:<40} {header[3]:>10} {header[4]:>9} {header[5]:>10} "
              f"{header[6]:>11}")
        for sample, image, size, baseline, pure, served, ratio in bench_rendering(args.repeat):
            print(f"  {sample:<23} {image:<17} {size:<40} {baseline:>10.2f} {pure:>9.2f} {served:>10.2f} "
                  f"{ratio:>10.1f}x")
        print("  (service = render_instance: session check, SHA-256 of the stored file, render, audit row, commit)")
        print()
        insert_ms, list_ms, describe_ms = bench_listing(args.studies, args.repeat)
        print(f"Listing {args.studies} studies of one record (SQLite file, {args.studies * 3} instances; median of "
              f"{args.repeat})")
        print(f"  insert (setup, once)       {insert_ms:>9.1f} ms")
        print(f"  list_studies               {list_ms:>9.1f} ms   ({list_ms * 1000 / args.studies:.1f} µs per study; "
              "session check and audit row included)")
        print(f"  describe_studies (20 ids)  {describe_ms:>9.1f} ms")
        reset_engine()
    return 0


if __name__ == "__main__":
    sys.exit(main())
