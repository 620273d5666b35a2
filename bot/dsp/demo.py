"""Deterministic demo data: a directory of health professionals and patients in every state.

Demo patients (matricules are deterministic, see :data:`DEMO_PATIENTS`):

* two with a letter only (state ``issued``), activation codes in :data:`DEMO_PATIENTS`;
* two activated with the password :data:`DEMO_PASSWORD`, one using e-mail, one SMS;
* one permanently locked (login answers ``account_locked``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

from sqlalchemy import select

from bot.dsp import audit, clock
from bot.dsp.accounts import _hash_activation_code
from bot.dsp.matricule import generate_matricule
from bot.dsp.orm import Account, Patient, Professional, fold
from bot.dsp.passwords import hash_password

if TYPE_CHECKING:
    from bot.dsp.uow import UnitOfWork

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
)  # fmt: skip

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
)


def seed_demo(uow: UnitOfWork) -> None:
    """Insert the demo professionals and patients if they are missing (idempotent, committed)."""
    session = uow.session
    existing = {
        (p.family_name, p.given_name, p.profession) for p in session.scalars(select(Professional)).all()
    }
    for family, given, profession, specialty, city in _PROFESSIONALS:
        if (family, given, profession) in existing:
            continue
        key = fold(" ".join(filter(None, (family, given, profession, specialty, city))))
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
    uow.commit()
