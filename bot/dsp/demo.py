"""Deterministic demo data: a directory of health professionals and patients in every state.

Demo patients (matricules are deterministic, see :data:`DEMO_PATIENTS`):

* two with a letter only (state ``issued``), activation codes in :data:`DEMO_PATIENTS`;
* three activated with the password :data:`DEMO_PASSWORD`: Marie Hoffmann (e-mail), Paulo
  Gonçalves (SMS, terms of use not accepted yet) and Nora Kayser (e-mail);
* one permanently locked (login answers ``account_locked``).

Records (seeded once per database, later changes are kept, see :data:`DEMO_ACCESS` and
:data:`DEMO_ASSISTANTS`): Marie Hoffmann has granted access to Dr Anne Müller and Dr Claudine
Weber and blocked Dr Gilles Klein; Nora Kayser is the designated assistant of Marie Hoffmann.
Documents written by professionals (:data:`DEMO_DOCUMENTS`, a text and a PDF each; files under
``<DSP_STATE_DIR>/documents/``) fill "Mes documents" of the activated demo patients.
Imaging studies (:data:`DEMO_STUDIES`) are real DICOM files that ship with pydicom
(``pydicom.data``, files under ``<DSP_STATE_DIR>/imaging/``), each with a date and a report by a
radiologist of the directory (a text document, also in "Mes documents"): Marie Hoffmann has a CT
and an MR; Nora Kayser an ultrasound with a palette, a colour (RGB) Doppler ultrasound and a
multi-frame echocardiography loop; Paulo Gonçalves an abdominal MR.

The directory has accented names (Müller, Lefèvre, Weiß, Gonçalves...), two Müller (general
practice, cardiology) and many "médecin", so that a search for "medecin" has too many matches.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from bot.dsp import audit, clock
from bot.dsp.accounts import _hash_activation_code
from bot.dsp.matricule import generate_matricule
from bot.dsp.orm import (
    AccessGrant,
    Account,
    AssistantDesignation,
    AuditEvent,
    Document,
    ImagingInstance,
    ImagingSeries,
    ImagingStudy,
    Patient,
    Professional,
    fold,
)
from bot.dsp.passwords import hash_password
from bot.dsp.settings import get_settings

if TYPE_CHECKING:
    from bot.dsp.uow import UnitOfWork

log = logging.getLogger(__name__)

#: Password of the activated demo accounts (documented, demo only).
DEMO_PASSWORD = "Demo-Mot-de-Passe-2026"


@dataclass(frozen=True)
class DemoPatient:
    """One demo patient and the state of its account."""

    given_name: str
    family_name: str
    birth_date: date
    serial: int
    state: str  # issued | activated | locked
    activation_code: str
    email: str | None = None
    phone: str | None = None
    channel: str | None = None

    @property
    def matricule(self) -> str:
        """The deterministic matricule."""
        return generate_matricule(self.birth_date, self.serial)


DEMO_PATIENTS: tuple[DemoPatient, ...] = (
    DemoPatient("Léa", "Schmit", date(1985, 3, 12), 101, "issued", "DEMQ7K2P", email="lea.schmit@example.lu"),
    DemoPatient("Jean", "Weber", date(1952, 11, 4), 102, "issued", "DEMR4X9T"),
    DemoPatient(
        "Marie", "Hoffmann", date(1978, 6, 23), 103, "activated", "DEMS8N3W",
        email="marie.hoffmann@example.lu", channel="email",
    ),
    DemoPatient(
        "Paulo", "Gonçalves", date(1990, 1, 30), 104, "activated", "DEMT2H6Y",
        phone="+352621123456", channel="sms",
    ),
    DemoPatient(
        "Claude", "Muller", date(1966, 9, 8), 105, "locked", "DEMU5J8Z",
        email="claude.muller@example.lu", channel="email",
    ),
    DemoPatient(
        "Nora", "Kayser", date(1981, 4, 17), 106, "activated", "DEMV3L7Q",
        email="nora.kayser@example.lu", channel="email",
    ),
)  # fmt: skip

#: Access decisions seeded on a demo record: holder -> (granted, blocked), professionals as
#: (family name, given name).
DEMO_ACCESS: dict[DemoPatient, tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]] = {
    DEMO_PATIENTS[2]: ((("Müller", "Anne"), ("Weber", "Claudine")), (("Klein", "Gilles"),)),
}

#: Designated assistants: (holder, assistant). Nora Kayser assists Marie Hoffmann.
DEMO_ASSISTANTS: tuple[tuple[DemoPatient, DemoPatient], ...] = ((DEMO_PATIENTS[2], DEMO_PATIENTS[5]),)

_PROFESSIONALS: tuple[tuple[str, str, str, str | None, str], ...] = (
    ("Müller", "Anne", "médecin", "médecine générale", "Luxembourg"),
    ("Schmit", "Marc", "médecin", "médecine générale", "Esch-sur-Alzette"),
    ("Weber", "Claudine", "médecin", "cardiologie", "Luxembourg"),
    ("Hoffmann", "Paul", "médecin", "pédiatrie", "Differdange"),
    ("Lefèvre", "Sophie", "médecin", "radiologie", "Luxembourg"),
    ("Gonçalves", "Ana", "infirmier", "soins à domicile", "Dudelange"),
    ("Wagner", "Luc", "kinésithérapeute", None, "Ettelbruck"),
    ("Thill", "Martine", "pharmacien", None, "Mersch"),
    ("Kieffer", "Jean", "dentiste", "médecine dentaire", "Diekirch"),
    ("Reuter", "Nathalie", "médecin", "gynécologie", "Luxembourg"),
    ("Schroeder", "Tom", "médecin", "médecine générale", "Mamer"),
    ("Faber", "Isabelle", "médecin", "dermatologie", "Strassen"),
    ("Kremer", "Yves", "médecin", "ophtalmologie", "Luxembourg"),
    ("Da Silva", "João", "infirmier", None, "Esch-sur-Alzette"),
    ("Ferreira", "Mariana", "kinésithérapeute", None, "Bettembourg"),
    ("Klein", "Gilles", "médecin", "cardiologie", "Esch-sur-Alzette"),
    ("Meyer", "Carole", "pharmacien", None, "Luxembourg"),
    ("Becker", "Pierre", "médecin", "neurologie", "Luxembourg"),
    ("Schmitz", "Laura", "médecin", "pédiatrie", "Luxembourg"),
    ("Hansen", "Michel", "dentiste", "orthodontie", "Bertrange"),
    ("Welter", "Sandra", "sage-femme", None, "Luxembourg"),
    ("Lentz", "Patrick", "médecin", "radiologie", "Esch-sur-Alzette"),
    ("Braun", "Christiane", "psychologue", None, "Ettelbruck"),
    ("Pereira", "Rui", "médecin", "médecine générale", "Wiltz"),
    ("Dupont", "Émilie", "médecin", "endocrinologie", "Luxembourg"),
    ("Bernard", "François", "médecin", "pneumologie", "Luxembourg"),
    ("Nilles", "Georges", "pharmacien", None, "Remich"),
    ("Majerus", "Anouk", "orthophoniste", None, "Junglinster"),
    ("Zimmer", "Raphaël", "médecin", "orthopédie", "Luxembourg"),
    ("Steichen", "Josée", "infirmier", "soins palliatifs", "Clervaux"),
    ("Koch", "Daniel", "médecin", "gastro-entérologie", "Luxembourg"),
    ("Wirtz", "Monique", "diététicien", None, "Grevenmacher"),
    ("Bour", "Nicolas", "médecin", "urologie", "Esch-sur-Alzette"),
    ("Mathieu", "Hélène", "médecin", "psychiatrie", "Luxembourg"),
    ("Eischen", "Serge", "kinésithérapeute", None, "Luxembourg"),
    ("Rodrigues", "Sofia", "dentiste", "médecine dentaire", "Pétange"),
    ("Pinto", "Carlos", "pharmacien", None, "Differdange"),
    ("Lambert", "Céline", "médecin", "oncologie", "Luxembourg"),
    ("Gérard", "Étienne", "médecin", "rhumatologie", "Luxembourg"),
    ("Schaack", "Françoise", "médecin", "médecine générale", "Echternach"),
    ("Feltgen", "Luc", "médecin", "oto-rhino-laryngologie", "Luxembourg"),
    ("Hoffmann", "Sarah", "infirmier", None, "Luxembourg"),
    ("Müller", "Thomas", "médecin", "cardiologie", "Luxembourg"),
    ("Weiß", "Stefan", "kinésithérapeute", None, "Remich"),
)


def seed_demo(uow: UnitOfWork) -> None:
    """Insert the demo professionals and patients if they are missing (idempotent, committed)."""
    session = uow.session
    existing = {
        (p.family_name, p.given_name, p.profession): p for p in session.scalars(select(Professional)).all()
    }
    for family, given, profession, specialty, city in _PROFESSIONALS:
        key = fold(" ".join(filter(None, (family, given, profession, specialty, city))))
        known = existing.get((family, given, profession))
        if known is not None:
            known.search_key = key  # keeps keys in step with fold()
            continue
        session.add(
            Professional(
                family_name=family,
                given_name=given,
                profession=profession,
                specialty=specialty,
                city=city,
                search_key=key,
            )
        )
    password_hash: str | None = None
    now = clock.now()
    for demo in DEMO_PATIENTS:
        if session.scalars(select(Patient.id).where(Patient.matricule == demo.matricule)).first() is not None:
            continue
        patient = Patient(
            matricule=demo.matricule,
            given_name=demo.given_name,
            family_name=demo.family_name,
            birth_date=demo.birth_date,
            email=demo.email,
            phone=demo.phone,
        )
        session.add(patient)
        session.flush()
        account = Account(
            patient_id=patient.id,
            state="issued",
            activation_code_hash=_hash_activation_code(demo.activation_code),
        )
        if demo.state in ("activated", "locked"):
            password_hash = password_hash or hash_password(DEMO_PASSWORD)
            account.state = "activated"
            account.password_hash = password_hash
            account.contact_channel = demo.channel
            account.activated_at = now
            account.terms_accepted_at = now if demo.channel == "email" else None
        if demo.state == "locked":
            account.permanently_locked = True
            account.failed_logins = 10
        session.add(account)
        session.flush()
        audit.record(uow, actor="system", action="demo.seed_patient", outcome="ok", patient_id=patient.id)
    session.flush()
    _seed_access(uow)
    _seed_assistants(uow)
    _seed_documents(uow)
    _seed_imaging(uow)
    uow.commit()


def _demo_patient_id(uow: UnitOfWork, demo: DemoPatient) -> int | None:
    return uow.session.scalars(select(Patient.id).where(Patient.matricule == demo.matricule)).first()


def _seed_access(uow: UnitOfWork) -> None:
    """Seed the access decisions of :data:`DEMO_ACCESS` once per record (marked by an audit row)."""
    session = uow.session
    for demo, (granted, blocked) in DEMO_ACCESS.items():
        patient_id = _demo_patient_id(uow, demo)
        seeded = session.scalars(
            select(AuditEvent.id).where(AuditEvent.action == "demo.seed_access", AuditEvent.patient_id == patient_id)
        ).first()
        if patient_id is None or seeded is not None:
            continue
        for status, names in (("granted", granted), ("blocked", blocked)):
            for family, given in names:
                pro_id = session.scalars(
                    select(Professional.id).where(Professional.family_name == family, Professional.given_name == given)
                ).first()
                if pro_id is None:
                    continue
                taken = session.scalars(
                    select(AccessGrant.id).where(
                        AccessGrant.patient_id == patient_id, AccessGrant.professional_id == pro_id
                    )
                ).first()
                if taken is None:
                    session.add(AccessGrant(patient_id=patient_id, professional_id=pro_id, status=status))
        audit.record(uow, actor="system", action="demo.seed_access", outcome="ok", patient_id=patient_id)


def _seed_assistants(uow: UnitOfWork) -> None:
    """Seed :data:`DEMO_ASSISTANTS` unless the pair ever had a designation (a revocation is kept)."""
    session = uow.session
    for holder, assistant in DEMO_ASSISTANTS:
        holder_id, assistant_id = _demo_patient_id(uow, holder), _demo_patient_id(uow, assistant)
        if holder_id is None or assistant_id is None:
            continue
        known = session.scalars(
            select(AssistantDesignation.id).where(
                AssistantDesignation.holder_patient_id == holder_id,
                AssistantDesignation.assistant_patient_id == assistant_id,
            )
        ).first()
        if known is None:
            session.add(AssistantDesignation(holder_patient_id=holder_id, assistant_patient_id=assistant_id))
            audit.record(
                uow,
                actor="system",
                action="assistant.designate",
                outcome="ok",
                patient_id=holder_id,
                object_ref=f"patient:{assistant_id}",
            )


@dataclass(frozen=True)
class DemoDocument:
    """A document on a demo record, written by a professional of the directory.

    Attributes:
        holder: Whose record holds it.
        author: The professional, as (family name, given name).
        doc_type: One of :data:`bot.dsp.documents.DOCUMENT_TYPES`.
        title: Title shown in "Mes documents".
        format: ``text`` or ``pdf`` (a one-page PDF with the lines as text).
        lines: The content, line by line.
        age_days: How many days before the seeding it was filed.
    """

    holder: DemoPatient
    author: tuple[str, str]
    doc_type: str
    title: str
    format: str
    lines: tuple[str, ...]
    age_days: int

    def content(self) -> bytes:
        """The file's bytes (deterministic, so that seeding twice finds the same SHA-256)."""
        if self.format == "pdf":
            return _demo_pdf(self.lines)
        return ("\n".join(self.lines) + "\n").encode("utf-8")


DEMO_DOCUMENTS: tuple[DemoDocument, ...] = (
    DemoDocument(
        DEMO_PATIENTS[2], ("Müller", "Anne"), "vaccination", "Compte rendu de consultation", "text",
        ("Compte rendu de consultation (document de démonstration, fictif)",
         "Patiente : Marie Hoffmann, née le 23/06/1978",
         "Motif : rappel vaccinal diphtérie-tétanos-coqueluche (dTca).",
         "Examen : bon état général, pas de contre-indication.",
         "Conduite : rappel dTca administré ce jour ; prochain rappel dans 10 ans.",
         "Dr Anne Müller, médecine générale, Luxembourg"),
        40,
    ),
    DemoDocument(
        DEMO_PATIENTS[2], ("Gonçalves", "Ana"), "vaccination", "Certificat de vaccination", "pdf",
        ("Certificat de vaccination (document de démonstration, fictif)",
         "Titulaire : Marie Hoffmann, née le 23/06/1978",
         "Vaccin : grippe saisonnière, une dose, voie intramusculaire.",
         "Administré par : Ana Gonçalves, infirmière, Dudelange"),
        12,
    ),
    DemoDocument(
        DEMO_PATIENTS[3], ("Schmit", "Marc"), "vaccination", "Certificat de vaccination", "pdf",
        ("Certificat de vaccination (document de démonstration, fictif)",
         "Titulaire : Paulo Gonçalves, né le 30/01/1990",
         "Vaccin : hépatite B, 3e dose.",
         "Dr Marc Schmit, médecine générale, Esch-sur-Alzette"),
        90,
    ),
    DemoDocument(
        DEMO_PATIENTS[5], ("Schroeder", "Tom"), "vaccination", "Compte rendu de consultation", "text",
        ("Compte rendu de consultation (document de démonstration, fictif)",
         "Patiente : Nora Kayser, née le 17/04/1981",
         "Motif : rattrapage rougeole-oreillons-rubéole (ROR).",
         "Conduite : 1re dose administrée ce jour ; 2e dose dans un mois.",
         "Dr Tom Schroeder, médecine générale, Mamer"),
        25,
    ),
)  # fmt: skip


def _demo_pdf(lines: tuple[str, ...]) -> bytes:
    """A one-page A4 PDF showing `lines` in Helvetica (built with pypdf, byte-for-byte deterministic)."""
    import io

    from pypdf import PdfWriter
    from pypdf.generic import ContentStream, DictionaryObject, NameObject

    writer = PdfWriter()
    page = writer.add_blank_page(595, 842)
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
            NameObject("/Encoding"): NameObject("/WinAnsiEncoding"),
        }
    )
    page[NameObject("/Resources")] = DictionaryObject(
        {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
    )
    operators = ["BT", "/F1 12 Tf", "16 TL", "72 790 Td"]
    for line in lines:
        escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        operators.append(f"({escaped}) '")
    operators.append("ET")
    stream = ContentStream(None, writer)
    stream.set_data("\n".join(operators).encode("cp1252"))
    page.replace_contents(stream)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def _seed_documents(uow: UnitOfWork) -> None:
    """Seed :data:`DEMO_DOCUMENTS` that a record lacks (same SHA-256); rewrite a missing file."""
    from bot.dsp.documents import ACCEPTED_FORMATS, store_file  # late: documents imports the services

    session = uow.session
    now = clock.now()
    documents_dir = get_settings().documents_dir
    for demo in DEMO_DOCUMENTS:
        patient_id = _demo_patient_id(uow, demo.holder)
        family, given = demo.author
        pro_id = session.scalars(
            select(Professional.id).where(Professional.family_name == family, Professional.given_name == given)
        ).first()
        if patient_id is None or pro_id is None:
            continue
        data = demo.content()
        digest = hashlib.sha256(data).hexdigest()
        known = session.scalars(
            select(Document).where(Document.patient_id == patient_id, Document.sha256 == digest)
        ).first()
        if known is not None:
            if not (documents_dir / known.storage_name).exists():
                store_file(data, known.storage_name)
            continue
        document = Document(
            patient_id=patient_id,
            doc_type=demo.doc_type,
            title=demo.title,
            format=demo.format,
            mime_type=ACCEPTED_FORMATS[demo.format],
            size_bytes=len(data),
            sha256=digest,
            storage_name=store_file(data),
            created_at=now - timedelta(days=demo.age_days),
            author_professional_id=pro_id,
        )
        session.add(document)
        session.flush()
        audit.record(
            uow,
            actor="system",
            action="demo.seed_document",
            outcome="ok",
            patient_id=patient_id,
            object_ref=f"document:{document.id}",
        )


@dataclass(frozen=True)
class DemoStudy:
    """An imaging study on a demo record: one DICOM file of pydicom's test data, a date and a report.

    Attributes:
        sample: Name of a file that ships with pydicom (``pydicom.data``; never downloaded).
        age_days: How many days before the seeding the study (and its report) took place.
        report: Its report, a text document of the record written by a radiologist of the directory.
    """

    sample: str
    age_days: int
    report: DemoDocument

    @property
    def holder(self) -> DemoPatient:
        """Whose record holds it."""
        return self.report.holder


def _report(holder: DemoPatient, author: tuple[str, str], title: str, lines: tuple[str, ...], age: int) -> DemoDocument:
    return DemoDocument(holder, author, "imaging_report", title, "text", lines, age)


DEMO_STUDIES: tuple[DemoStudy, ...] = (
    DemoStudy("CT_small.dcm", 400, _report(
        DEMO_PATIENTS[2], ("Lefèvre", "Sophie"), "Compte rendu de scanner",
        ("Compte rendu de scanner (document de démonstration, fictif)",
         "Patiente : Marie Hoffmann, née le 23/06/1978",
         "Examen : scanner (tomodensitométrie), coupe axiale sans injection.",
         "Résultat : structures osseuses et parties molles sans anomalie sur la coupe examinée.",
         "Conclusion : examen normal.",
         "Dr Sophie Lefèvre, radiologie, Luxembourg"), 400)),
    DemoStudy("MR_small.dcm", 150, _report(
        DEMO_PATIENTS[2], ("Lentz", "Patrick"), "Compte rendu d'IRM",
        ("Compte rendu d'IRM (document de démonstration, fictif)",
         "Patiente : Marie Hoffmann, née le 23/06/1978",
         "Examen : IRM, séquence pondérée T1, une coupe.",
         "Résultat : signal normal, pas de lésion décelable.",
         "Conclusion : IRM sans particularité.",
         "Dr Patrick Lentz, radiologie, Esch-sur-Alzette"), 150)),
    DemoStudy("examples_palette.dcm", 300, _report(
        DEMO_PATIENTS[5], ("Lentz", "Patrick"), "Compte rendu d'échographie",
        ("Compte rendu d'échographie (document de démonstration, fictif)",
         "Patiente : Nora Kayser, née le 17/04/1981",
         "Examen : échographie pelvienne par voie abdominale.",
         "Résultat : utérus et ovaires de taille et d'aspect normaux.",
         "Conclusion : échographie normale.",
         "Dr Patrick Lentz, radiologie, Esch-sur-Alzette"), 300)),
    DemoStudy("examples_rgb_color.dcm", 200, _report(
        DEMO_PATIENTS[5], ("Lefèvre", "Sophie"), "Compte rendu d'échographie Doppler",
        ("Compte rendu d'échographie Doppler (document de démonstration, fictif)",
         "Patiente : Nora Kayser, née le 17/04/1981",
         "Examen : échographie Doppler couleur d'un ganglion cervical.",
         "Résultat : ganglion ovalaire de 12 mm, hile conservé, vascularisation hilaire normale.",
         "Conclusion : aspect réactif, rassurant ; contrôle clinique par le médecin traitant.",
         "Dr Sophie Lefèvre, radiologie, Luxembourg"), 200)),
    DemoStudy("examples_ybr_color.dcm", 60, _report(
        DEMO_PATIENTS[5], ("Lefèvre", "Sophie"), "Compte rendu d'échocardiographie",
        ("Compte rendu d'échocardiographie (document de démonstration, fictif)",
         "Patiente : Nora Kayser, née le 17/04/1981",
         "Examen : échocardiographie transthoracique, boucle parasternale grand axe (30 images).",
         "Résultat : ventricule gauche de taille et de fonction normales, valves fines.",
         "Conclusion : échocardiographie normale.",
         "Dr Sophie Lefèvre, radiologie, Luxembourg"), 60)),
    DemoStudy("examples_overlay.dcm", 90, _report(
        DEMO_PATIENTS[3], ("Lentz", "Patrick"), "Compte rendu d'IRM abdominale",
        ("Compte rendu d'IRM abdominale (document de démonstration, fictif)",
         "Patient : Paulo Gonçalves, né le 30/01/1990",
         "Examen : IRM abdominale, coupe axiale pondérée T1 après injection.",
         "Résultat : lésion hépatique de 2 cm, bien limitée, d'allure bénigne (kyste probable).",
         "Conclusion : contrôle par IRM dans 6 mois conseillé.",
         "Dr Patrick Lentz, radiologie, Esch-sur-Alzette"), 90)),
)  # fmt: skip

# The reports are documents of their records too ("Mes documents"), seeded with the others.
DEMO_DOCUMENTS += tuple(study.report for study in DEMO_STUDIES)


def _sample_path(name: str) -> Path | None:
    """A DICOM file that ships with pydicom, or None (never downloaded: no network is needed)."""
    from pydicom.data import get_testdata_file

    try:
        found = get_testdata_file(name, download=False)
    except Exception:  # an older pydicom without the argument, or no such file
        return None
    return Path(str(found)) if found and Path(str(found)).is_file() else None


def _seed_imaging(uow: UnitOfWork) -> None:
    """Seed :data:`DEMO_STUDIES` that a record lacks (same Study Instance UID); rewrite a missing file.

    Runs after :func:`_seed_documents`, which files the reports; each study is linked to its report.
    """
    from bot.dsp import imaging  # late: imaging imports the record services
    from bot.dsp.errors import ImagingError

    session = uow.session
    today = clock.now().date()
    for demo in DEMO_STUDIES:
        patient_id = _demo_patient_id(uow, demo.holder)
        path = _sample_path(demo.sample)
        if patient_id is None or path is None:
            continue
        try:
            header = imaging.read_header(path)
        except ImagingError as error:
            log.warning("demo study %s unreadable: %s", demo.sample, error.code)
            continue
        report_id = session.scalars(
            select(Document.id).where(
                Document.patient_id == patient_id,
                Document.sha256 == hashlib.sha256(demo.report.content()).hexdigest(),
            )
        ).first()
        study = session.scalars(
            select(ImagingStudy).where(
                ImagingStudy.patient_id == patient_id, ImagingStudy.study_instance_uid == header.study_instance_uid
            )
        ).first()
        if study is None:
            imaging._ingest(
                uow, patient_id, [(demo.sample, path)], actor="system",
                study_date=today - timedelta(days=demo.age_days), report_document_id=report_id,
            )  # fmt: skip
            continue
        if study.report_document_id is None and report_id is not None:
            study.report_document_id = report_id
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        rows = session.scalars(
            select(ImagingInstance)
            .join(ImagingSeries, ImagingSeries.id == ImagingInstance.series_id)
            .where(ImagingSeries.study_id == study.id, ImagingInstance.sha256 == digest)
        )
        for row in rows:
            if not (get_settings().imaging_dir / row.storage_name).exists():
                imaging._store(path, row.storage_name)
