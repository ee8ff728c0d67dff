"""verified addresses in the users copy, accepted_at, and the mail outbox

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.common.db import UTCDateTime
from services.common.migrations import create_mail_outbox_table, drop_mail_outbox_table

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("email_verified", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("connections") as batch:
        batch.add_column(sa.Column("accepted_at", UTCDateTime(timezone=True), nullable=True))
    # An accepted connection was accepted at its last change at the latest; a removed one
    # may have been accepted before, which nothing recorded: it stays masked, which hides
    # only what the professional already saw.
    op.execute("UPDATE connections SET accepted_at = updated_at WHERE status = 'accepted'")
    create_mail_outbox_table()


def downgrade() -> None:
    drop_mail_outbox_table()
    with op.batch_alter_table("connections") as batch:
        batch.drop_column("accepted_at")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("email_verified")
