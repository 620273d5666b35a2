"""Access of professionals: directory search, grant / block / unblock, the professional's check."""

import pytest
from dsp_helpers import Client
from dsp_session import log_in, patient_id
from sqlalchemy import select

import bot.dsp as dsp
from bot.dsp import DEMO_PATIENTS, UnitOfWork
from bot.dsp.demo import _PROFESSIONALS
from bot.dsp.errors import AccessDenied, AuthError, DspError, SearchRefused
from bot.dsp.orm import AccessGrant, AuditEvent, Professional

HOFFMANN = DEMO_PATIENTS[2]  # seeded: grants Anne Müller + Claudine Weber, blocks Gilles Klein
GONCALVES = DEMO_PATIENTS[3]  # terms not accepted
KAYSER = DEMO_PATIENTS[5]  # no decision on her own record


@pytest.fixture(autouse=True)
def demo():
    with UnitOfWork() as uow:
        dsp.seed_demo(uow)


def _err(fn, *args, **kwargs) -> DspError:
    with pytest.raises(DspError) as info:
        fn(*args, **kwargs)
    return info.value


def _pro(family: str, given: str) -> int:
    with UnitOfWork() as uow:
        return uow.session.scalars(
            select(Professional.id).where(Professional.family_name == family, Professional.given_name == given)
        ).one()


def _names(found) -> list[str]:
    return [p.display_name for p in found]


def _search(client: Client, query: str, **kwargs):
    return client.call(dsp.search_professionals, query, **kwargs)


def _audit_rows(action: str) -> list[AuditEvent]:
    with UnitOfWork() as uow:
        return list(uow.session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


# --------------------------------------------------------------------------- search


def test_fold_handles_umlauts_sharp_s_and_ligatures():
    assert dsp.orm.fold("  Müller ") == "muller"
    assert dsp.orm.fold("Weiß") == "weiss"
    assert dsp.orm.fold("LEFÈVRE") == "lefevre"
    assert dsp.orm.fold("Œuvray") == "oeuvray"


def test_search_needs_three_letters(client):
    log_in(client, KAYSER)
    for query in ("mü", "", "  ", "a-b", "12345", "Dr M", "dr. mu"):
        error = _err(_search, client, query)
        assert isinstance(error, SearchRefused)
        assert (error.code, error.params) == ("search_too_short", {"min_letters": 3})
    # three letters in total are enough, even spread over words
    assert _names(_search(client, "kin")) == _names(_search(client, "KINE"))


def test_search_ignores_accents_and_case(client):
    log_in(client, KAYSER)
    assert _names(_search(client, "muller")) == ["Dr Anne Müller", "Dr Thomas Müller"]
    assert _names(_search(client, "MÜLLER")) == ["Dr Anne Müller", "Dr Thomas Müller"]
    assert _names(_search(client, "lefevre")) == ["Dr Sophie Lefèvre"]
    assert _names(_search(client, "Lefèv")) == ["Dr Sophie Lefèvre"]
    assert _names(_search(client, "weiss")) == ["Stefan Weiß"]
    kine = _search(client, "kine")
    assert [p.display_name for p in kine] == ["Serge Eischen", "Mariana Ferreira", "Luc Wagner", "Stefan Weiß"]
    assert {p.profession for p in kine} == {"kinésithérapeute"}
    anne = _search(client, "anne")[0]
    assert (anne.profession, anne.specialty, anne.city, anne.status) == (
        "médecin", "médecine générale", "Luxembourg", None,
    )


def test_every_word_must_start_a_word_so_more_words_narrow(client):
    log_in(client, KAYSER)
    assert _names(_search(client, "cardio")) == ["Dr Gilles Klein", "Dr Thomas Müller", "Dr Claudine Weber"]
    assert _names(_search(client, "muller cardio")) == ["Dr Thomas Müller"]
    assert _names(_search(client, "Dr Müller médecine générale")) == ["Dr Anne Müller"]
    assert _names(_search(client, "rhino")) == ["Dr Luc Feltgen"]  # parts of hyphenated words count
    # inside a word is not a prefix, and the city is not searched
    assert _err(_search, client, "ller").code == "search_no_match"
    assert _err(_search, client, "muller pediatrie").code == "search_no_match"
    assert _err(_search, client, "Diekirch").code == "search_no_match"


def test_no_match_and_too_many(client):
    log_in(client, KAYSER)
    assert _err(_search, client, "xyzzy").code == "search_no_match"
    # "medecin" starts "médecin" and "médecine" (dentists: "médecine dentaire")
    doctors = sum(1 for p in _PROFESSIONALS if p[2] == "médecin" or (p[3] or "").startswith("médecin"))
    error = _err(_search, client, "medecin")
    assert isinstance(error, SearchRefused)
    assert (error.code, error.params) == ("search_too_many", {"count": doctors, "max": dsp.MAX_MATCHES})
    assert doctors > dsp.MAX_MATCHES
    assert _err(_search, client, "med").code == "search_too_many"  # médecin + médecine dentaire


def test_search_shows_the_status_and_filters_blocked(client):
    log_in(client, HOFFMANN)
    statuses = {p.display_name: p.status for p in _search(client, "muller")}
    assert statuses == {"Dr Anne Müller": "granted", "Dr Thomas Müller": None}
    assert _names(_search(client, "klein", status="blocked")) == ["Dr Gilles Klein"]
    assert _names(_search(client, "cardio", status="blocked")) == ["Dr Gilles Klein"]
    assert _names(_search(client, "cardio", status="granted")) == ["Dr Claudine Weber"]
    assert _err(_search, client, "muller", status="blocked").code == "search_no_match"
    with pytest.raises(ValueError):
        _search(client, "muller", status="maybe")


def test_search_needs_a_login_and_the_terms(client):
    error = _err(_search, client, "muller")
    assert isinstance(error, AuthError) and error.code == "not_logged_in"
    log_in(client, GONCALVES, accept_terms=False)
    assert _err(_search, client, "muller").code == "terms_pending"


# --------------------------------------------------------------------------- decisions


def test_grant_block_unblock_transitions(client):
    kayser = log_in(client, KAYSER)
    thomas = _pro("Müller", "Thomas")
    check = lambda: client.call(lambda uow, _cid: dsp.check_access(uow, thomas, kayser))  # noqa: E731

    assert check() is False
    change = client.call(dsp.grant_access, thomas)
    assert change.changed and change.professional.status == "granted"
    assert change.professional.display_name == "Dr Thomas Müller"
    assert client.call(dsp.grant_access, thomas).changed is False
    assert check() is True

    # blocking someone who had access removes the access at the next check
    change = client.call(dsp.block_access, thomas)
    assert change.changed and change.professional.status == "blocked"
    assert check() is False
    assert client.call(dsp.block_access, thomas).changed is False
    with UnitOfWork() as uow:
        rows = list(uow.session.scalars(select(AccessGrant).where(AccessGrant.patient_id == kayser)))
    assert [(r.professional_id, r.status, r.changed_by_patient_id) for r in rows] == [(thomas, "blocked", kayser)]

    # a blocked professional cannot be granted: unblock first
    error = _err(client.call, dsp.grant_access, thomas)
    assert isinstance(error, AccessDenied) and error.code == "professional_blocked"
    assert check() is False
    assert client.call(dsp.describe_professional, thomas).status == "blocked"

    change = client.call(dsp.unblock_access, thomas)
    assert change.changed and change.professional.status is None
    assert check() is False  # unblocking does not restore the grant
    assert client.call(dsp.unblock_access, thomas).changed is False
    assert client.call(dsp.grant_access, thomas).changed is True
    assert check() is True
    unchanged = client.call(dsp.unblock_access, thomas)  # not blocked: the grant stays
    assert (unchanged.changed, unchanged.professional.status) == (False, "granted")
    assert check() is True


def test_block_without_earlier_decision(client):
    kayser = log_in(client, KAYSER)
    lentz = _pro("Lentz", "Patrick")
    assert client.call(dsp.block_access, lentz).changed is True
    with UnitOfWork() as uow:
        assert dsp.check_access(uow, lentz, kayser) is False
    overview = client.call(dsp.list_access)
    assert overview.granted == [] and _names(overview.blocked) == ["Dr Patrick Lentz"]


def test_list_access_of_the_seeded_record(client):
    log_in(client, HOFFMANN)
    overview = client.call(dsp.list_access)
    assert _names(overview.granted) == ["Dr Anne Müller", "Dr Claudine Weber"]
    assert _names(overview.blocked) == ["Dr Gilles Klein"]
    assert {p.status for p in overview.granted} == {"granted"}
    assert {p.status for p in overview.blocked} == {"blocked"}


def test_unknown_professional(client):
    log_in(client, KAYSER)
    for service in (dsp.grant_access, dsp.block_access, dsp.unblock_access, dsp.describe_professional):
        error = _err(client.call, service, 999_999)
        assert isinstance(error, AccessDenied) and error.code == "professional_unknown"
    rows = _audit_rows("access.grant")
    assert rows[-1].outcome == "professional_unknown" and rows[-1].object == "professional:999999"


def test_services_are_audited_with_the_professional(client):
    kayser = log_in(client, KAYSER)
    anne = _pro("Müller", "Anne")
    client.call(dsp.grant_access, anne)
    client.call(dsp.grant_access, anne)
    client.call(dsp.block_access, anne)
    _err(client.call, dsp.grant_access, anne)
    client.call(dsp.unblock_access, anne)
    client.call(dsp.list_access)
    grants = _audit_rows("access.grant")
    assert [(r.outcome, r.detail) for r in grants] == [
        ("ok", '{"changed": 1}'), ("ok", '{"changed": 0}'), ("professional_blocked", None),
    ]
    for row in grants + _audit_rows("access.block") + _audit_rows("access.unblock"):
        assert row.object == f"professional:{anne}"
        assert (row.actor_patient_id, row.patient_id, row.on_behalf_of) == (kayser, kayser, None)
        assert row.actor.startswith("conv:") and "Müller" not in (row.detail or "")
    listed = _audit_rows("access.list")[-1]
    assert (listed.outcome, listed.patient_id, listed.detail) == ("ok", kayser, '{"blocked": 0, "granted": 0}')


def test_every_check_is_audited_from_the_professional_side():
    hoffmann = patient_id(HOFFMANN)
    anne, klein, thomas = _pro("Müller", "Anne"), _pro("Klein", "Gilles"), _pro("Müller", "Thomas")
    with UnitOfWork() as uow:
        assert dsp.check_access(uow, anne, hoffmann) is True
        assert dsp.check_access(uow, klein, hoffmann) is False
        assert dsp.check_access(uow, thomas, hoffmann) is False
    rows = _audit_rows("access.check")
    assert [(r.actor, r.patient_id, r.outcome) for r in rows] == [
        (f"professional:{anne}", hoffmann, "ok"),
        (f"professional:{klein}", hoffmann, "blocked"),
        (f"professional:{thomas}", hoffmann, "no_grant"),
    ]


def test_idle_session_ends(client, fake_clock):
    log_in(client, KAYSER)
    fake_clock.advance(29 * 60)
    assert _search(client, "muller")
    fake_clock.advance(30 * 60 + 1)
    assert _err(_search, client, "muller").code == "not_logged_in"
    assert _err(client.call, dsp.list_access).code == "not_logged_in"
