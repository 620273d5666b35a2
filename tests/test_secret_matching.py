"""The secret scan's matching rule (tests/support.py Secrets.leaks): found as a whole token only."""

from __future__ import annotations

from tests.support import Secrets


def test_a_code_said_in_a_message_is_a_leak_but_the_same_digits_inside_a_timestamp_are_not():
    secrets = Secrets()
    secrets.add("421234", "Web-Page-Passphrase-ab12")
    tracker = '(7, \'c1\', \'user\', 1796421234.557861, \'{"text": "ok", "message_id": "9f421234ab"}\')'
    assert secrets.leaks({"tracker store": tracker}) == []
    assert secrets.leaks({"tracker store": tracker + '\n{"text": "421234"}'}) == [("tracker store", "42…")]
    assert secrets.leaks({"log": "password=Web-Page-Passphrase-ab12"}) == [("log", "We…")]


def test_short_and_repeated_values_are_not_scanned_for():
    secrets = Secrets()
    secrets.add("12345", "000000")
    assert secrets.leaks({"log": "12345 000000"}) == []
