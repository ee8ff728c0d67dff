"""outbox txid: relay order by writing transaction on PostgreSQL

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 23:45:00.000000
"""

from collections.abc import Sequence

from services.common.migrations import add_outbox_txid, drop_outbox_txid

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    add_outbox_txid()


def downgrade() -> None:
    drop_outbox_txid()
