import pytest

from bot.dsp import DspError, check_password_policy, hash_password, verify_password
from bot.dsp.passwords import common_passwords


def _code(password: str, matricule: str | None = None) -> DspError:
    with pytest.raises(DspError) as info:
        check_password_policy(password, matricule)
    return info.value


def test_too_short():
    error = _code("a7#kQ2x")
    assert error.code == "password_too_short" and error.params == {"min_length": 8}


@pytest.mark.parametrize(
    "password",
    ["password", "PASSWORD1", "motdepasse", "Passwort", "azerty123", "soleil", "Soleil2024!", "qwertz123"],
)
def test_common_refused(password):
    if len(password) < 8:
        assert _code(password).code == "password_too_short"
    else:
        assert _code(password).code == "password_common"


def test_list_is_big_enough():
    words = common_passwords()
    assert len(words) >= 1000
    assert {"motdepasse", "passwort", "azerty123", "soleil"} <= words


def test_long_passwords_accepted_up_to_128():
    check_password_policy("correct horse battery staple " * 2 + "x" * 6)  # 64
    check_password_policy(("Lëtzebuerg-gesond " * 8)[:128])
    error = _code("x" + "Lëtzebuerg-gesond " * 8)
    assert error.code == "password_too_long" and error.params == {"max_length": 128}


def test_no_composition_rules():
    check_password_policy("la vie en rose a luxembourg")


def test_contains_matricule():
    matricule = "1985031210143"
    assert _code(f"moi{matricule}!", matricule).code == "password_common"
    assert _code("1985 0312 1014 3", matricule).code == "password_common"


def test_repeated_character():
    assert _code("zzzzzzzzzz").code == "password_common"


def test_hash_is_argon2id():
    h = hash_password("Une phrase de passe sûre")
    assert h.startswith("$argon2id$") and "phrase" not in h
    assert verify_password(h, "Une phrase de passe sûre")
    assert not verify_password(h, "autre chose")
    assert not verify_password(None, "autre chose")
