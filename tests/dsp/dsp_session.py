"""Log a demo patient in through the real services (tests of the record services)."""

from __future__ import annotations

from dsp_helpers import Client, code_in, last_message
from sqlalchemy import select

import bot.dsp as dsp
from bot.dsp import DEMO_PASSWORD, UnitOfWork
from bot.dsp.demo import DemoPatient
from bot.dsp.orm import Patient


def log_in(client: Client, patient: DemoPatient, *, accept_terms: bool = True) -> int:
    """Log `patient` in on `client`'s conversation (password + one-time code); return its internal id."""
    client.call(
        dsp.begin_login,
        matricule_ref=client.ref("matricule", patient.matricule),
        password_ref=client.ref("password", DEMO_PASSWORD),
        language="en",
    )
    address = patient.email if patient.channel == "email" else patient.phone
    assert address is not None
    result = client.call(
        dsp.complete_login,
        matricule_ref=client.ref("matricule", patient.matricule),
        otp_ref=client.ref("otp", code_in(last_message(address).body)),
    )
    if result.needs_terms and accept_terms:
        client.call(dsp.accept_terms)
    return patient_id(patient)


def patient_id(patient: DemoPatient) -> int:
    with UnitOfWork() as uow:
        return uow.session.scalars(select(Patient.id).where(Patient.matricule == patient.matricule)).one()
