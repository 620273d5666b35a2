from sqlalchemy import select

import bot.dsp as dsp
from bot.dsp import UnitOfWork, get_notifier, mask_address
from bot.dsp.messages import otp_message, reset_message
from bot.dsp.notify import OutboxNotifier, SmtpNotifier
from bot.dsp.orm import OutboxMessage


def test_mask_address():
    assert mask_address("email", "maria@example.org") == "m•••@e•••.org"
    assert mask_address("sms", "+352621123456") == "+352 ••• ••• 456"


def test_messages_first_six_digit_group_is_the_code():
    import re

    for lang in ("fr", "de", "en", "xx"):
        for channel in ("email", "sms"):
            subject, body = otp_message(channel, lang, "042917", 10)
            assert not re.search(r"\d", subject)
            assert re.search(r"\d{6,}", body).group(0) == "042917"
        subject, body = reset_message(lang, "http://x/reset-password?token=abc", "abc", 60)
        assert not re.search(r"\d", subject)


def test_outbox_by_default():
    with UnitOfWork() as uow:
        assert isinstance(get_notifier(uow), OutboxNotifier)


def test_smtp_for_email_outbox_for_sms(monkeypatch):
    sent = []

    class FakeSMTP:
        def __init__(self, host, port, timeout):
            sent.append(("connect", host, port))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def starttls(self, context):
            sent.append(("starttls",))

        def login(self, user, password):
            sent.append(("login", user))

        def send_message(self, message):
            sent.append(("send", message["To"], message["Subject"]))

    monkeypatch.setenv("SMTP_HOST", "smtp.example.org")
    monkeypatch.setenv("SMTP_USER", "bot")
    monkeypatch.setattr("bot.dsp.notify.smtplib.SMTP", FakeSMTP)
    dsp.get_settings.cache_clear()
    with UnitOfWork() as uow:
        notifier = get_notifier(uow)
        assert isinstance(notifier, SmtpNotifier)
        notifier.send("email", "a@example.org", "Sujet", "Corps 123456")
        notifier.send("sms", "+352621123456", "Sujet", "Code 123456")
        uow.commit()
    assert sent == [
        ("connect", "smtp.example.org", 587),
        ("starttls",),
        ("login", "bot"),
        ("send", "a@example.org", "Sujet"),
    ]
    with UnitOfWork() as uow:
        rows = list(uow.session.scalars(select(OutboxMessage)))
    assert [(r.channel, r.to_address) for r in rows] == [("sms", "+352621123456")]
