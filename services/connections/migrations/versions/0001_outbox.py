"""outbox

Revision ID: 0001
Revises:
Create Date: 2026-11-24 07:21:33.909384
"""

from collections.abc import Sequence

from services.common.migrations import create_outbox_table, drop_outbox_table

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_outbox_table()


def downgrade() -> None:
    drop_outbox_table()
