"""The one clock of the domain layer (tests monkeypatch :func:`now`)."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    """Return the current time as a naive UTC datetime (what SQLite stores)."""
    return datetime.now(UTC).replace(tzinfo=None)
