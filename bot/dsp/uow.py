"""Unit of work (cosmicpython style): one session, rolled back unless committed."""

from __future__ import annotations

from types import TracebackType

from sqlalchemy.orm import Session, sessionmaker

from bot.dsp.db import get_sessionmaker, reset_engine

__all__ = ["UnitOfWork", "reset_engine"]


class UnitOfWork:
    """Context manager around one SQLAlchemy session.

    Usage::

        with UnitOfWork() as uow:
            accounts.begin_login(uow, ...)
            uow.commit()

    Domain services commit their own work (including failure counters and audit rows before
    they raise), so a caller's extra ``commit()`` is harmless. Anything not committed is rolled
    back when the block exits.

    Args:
        session_factory: Optional sessionmaker (defaults to :func:`bot.dsp.db.get_sessionmaker`).
    """

    session: Session

    def __init__(self, session_factory: sessionmaker[Session] | None = None) -> None:
        self._factory = session_factory

    def __enter__(self) -> UnitOfWork:
        factory = self._factory or get_sessionmaker()
        self.session = factory()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # close() rolls back whatever was not committed and detaches the loaded objects
        # without expiring them, so results stay readable after the block.
        self.session.close()

    def commit(self) -> None:
        """Commit the pending changes."""
        self.session.commit()

    def rollback(self) -> None:
        """Roll back the pending changes."""
        self.session.rollback()
