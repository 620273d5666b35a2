"""Luxembourg national identification number (matricule), 13 digits.

Structure per the OECD TIN sheet for Luxembourg: ``YYYYMMDD`` birth date, 3 serial digits,
a Luhn check digit over the first 11 digits, then a Verhoeff check digit over the same
first 11 digits. The 11-digit number used before 2014 is refused with its own code.
"""

from __future__ import annotations

import re
from datetime import date

from stdnum import luhn, verhoeff

from bot.dsp.errors import MatriculeInvalid

_SEPARATORS = re.compile(r"[\s.\-/]+")


def normalize_matricule(raw: str) -> str:
    """Validate a matricule and return it as 13 digits.

    Spaces, dots, dashes and slashes are ignored.

    Args:
        raw: The matricule as typed.

    Returns:
        The 13-digit matricule.

    Raises:
        MatriculeInvalid: ``matricule_old_format`` (exactly 11 digits, the number replaced in
            2014), ``matricule_format`` (not 13 digits), ``matricule_date`` (first 8 digits are
            not a valid ``YYYYMMDD`` date) or ``matricule_checksum`` (Luhn digit 12 or Verhoeff
            digit 13 wrong).
    """
    digits = _SEPARATORS.sub("", raw or "")
    if not digits.isascii() or not digits.isdigit():
        raise MatriculeInvalid("matricule_format")
    if len(digits) == 11:
        raise MatriculeInvalid("matricule_old_format")
    if len(digits) != 13:
        raise MatriculeInvalid("matricule_format")
    try:
        date(int(digits[0:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        raise MatriculeInvalid("matricule_date") from None
    body = digits[:11]
    if luhn.calc_check_digit(body) != digits[11] or verhoeff.calc_check_digit(body) != digits[12]:
        raise MatriculeInvalid("matricule_checksum")
    return digits


def generate_matricule(birth_date: date, serial: int) -> str:
    """Build a valid matricule from a birth date and a serial number.

    Args:
        birth_date: Date of birth (digits 1-8).
        serial: Serial number, 0 to 999 (digits 9-11).

    Returns:
        The 13-digit matricule with its Luhn and Verhoeff check digits.

    Raises:
        ValueError: If ``serial`` is outside 0..999.
    """
    if not 0 <= serial <= 999:
        raise ValueError("serial must be within 0..999")
    body = f"{birth_date:%Y%m%d}{serial:03d}"
    return body + luhn.calc_check_digit(body) + verhoeff.calc_check_digit(body)
