"""Helpers of the DSP domain-layer tests (unique module name: tests/dsp has no __init__.py)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from sqlalchemy import select

from bot.dsp import vault
from bot.dsp.orm import OutboxMessage
from bot.dsp.uow import UnitOfWork


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 9, 0, 0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Client:
    """Plays the gateway: stores protected inputs and calls one service per unit of work."""

    def __init__(self, conversation_id: str = "conv-1") -> None:
        self.cid = conversation_id

    def ref(self, kind: str, value: str) -> str:
        with UnitOfWork() as uow:
            return vault.put(uow, self.cid, kind, value)

    def call(self, fn, *args, **kwargs):
        with UnitOfWork() as uow:
            result = fn(uow, self.cid, *args, **kwargs)
            uow.commit()
            return result


def last_message(address: str) -> OutboxMessage:
    with UnitOfWork() as uow:
        row = uow.session.scalars(
            select(OutboxMessage).where(OutboxMessage.to_address == address).order_by(OutboxMessage.id.desc())
        ).first()
        assert row is not None, "no message"
        uow.session.expunge(row)
        return row


def message_count(address: str) -> int:
    with UnitOfWork() as uow:
        return len(
            list(uow.session.scalars(select(OutboxMessage).where(OutboxMessage.to_address == address)))
        )


def code_in(body: str) -> str:
    match = re.search(r"\d{6,}", body)
    assert match
    return match.group(0)
