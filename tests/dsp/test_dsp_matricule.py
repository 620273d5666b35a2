from datetime import date

import pytest

from bot.dsp import DspError, generate_matricule, normalize_matricule


def _code(raw: str) -> str:
    with pytest.raises(DspError) as info:
        normalize_matricule(raw)
    assert str(info.value) == info.value.code
    return info.value.code


def test_generated_matricule_is_valid():
    m = generate_matricule(date(1985, 3, 12), 101)
    assert len(m) == 13 and m.startswith("19850312101")
    assert normalize_matricule(m) == m


def test_separators_are_ignored():
    m = generate_matricule(date(2001, 12, 31), 7)
    spaced = f"{m[:4]} {m[4:6]}.{m[6:8]}-{m[8:11]} {m[11:]}"
    assert normalize_matricule(spaced) == m


def test_old_eleven_digit_number():
    assert _code("1985031210 1") == "matricule_old_format"


@pytest.mark.parametrize("raw", ["", "12345", "19850312101234", "1985031210a12"])
def test_format(raw):
    assert _code(raw) == "matricule_format"


def test_bad_date():
    body = "19850230101"  # 30 February
    from stdnum import luhn, verhoeff

    assert _code(body + luhn.calc_check_digit(body) + verhoeff.calc_check_digit(body)) == "matricule_date"


def test_wrong_luhn_digit():
    m = generate_matricule(date(1985, 3, 12), 101)
    wrong = m[:11] + str((int(m[11]) + 1) % 10) + m[12]
    assert _code(wrong) == "matricule_checksum"


def test_wrong_verhoeff_digit():
    m = generate_matricule(date(1985, 3, 12), 101)
    wrong = m[:12] + str((int(m[12]) + 1) % 10)
    assert _code(wrong) == "matricule_checksum"


def test_serial_range():
    with pytest.raises(ValueError):
        generate_matricule(date(1985, 3, 12), 1000)
