"""Gateway replies: the stored reply of each request sent with an Idempotency-Key (kept 24 h).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 10:47:47.299304

Runs on SQLite (batch mode: ``op.batch_alter_table`` for ALTERs) and PostgreSQL (see
bot/migrations/README.md). Model: ``bot.gateway.replies.ReplyRow``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``gateway_replies`` (one row per conversation and Idempotency-Key) and its purge index.

    A database adopted from the old ``create_all`` start-up (embedded SQLite) may have the table
    already: then nothing is done.
    """
    if not context.is_offline_mode() and sa.inspect(op.get_bind()).has_table("gateway_replies"):
        return
    op.create_table(
        "gateway_replies",
        sa.Column("conversation_id", sa.String(length=128), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("reply_json", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("conversation_id", "idempotency_key", name=op.f("pk_gateway_replies")),
    )
    with op.batch_alter_table("gateway_replies", schema=None) as batch_op:
        batch_op.create_index("ix_gateway_replies_created_at", ["created_at"], unique=False)


def downgrade() -> None:
    """Drop ``gateway_replies``."""
    with op.batch_alter_table("gateway_replies", schema=None) as batch_op:
        batch_op.drop_index("ix_gateway_replies_created_at")
    op.drop_table("gateway_replies")
