"""scheduling: duration, waitlist, places, sequence; waitlisted/withdrawn invites; reminders,
calendar feeds, a copy of professionals

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 03:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import services.common.db

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC = services.common.db.UTCDateTime(timezone=True)
OLD_OPEN = "status IN ('pending', 'accepted')"
NEW_OPEN = "status IN ('pending', 'accepted', 'waitlisted')"


def _open_index(batch_op, where: str, *, create: bool) -> None:
    if create:
        batch_op.create_index(
            "uq_invites_open",
            ["activity_id", "client_id"],
            unique=True,
            sqlite_where=sa.text(where),
            postgresql_where=sa.text(where),
        )
    else:
        batch_op.drop_index(
            "uq_invites_open", sqlite_where=sa.text(where), postgresql_where=sa.text(where)
        )


def upgrade() -> None:
    with op.batch_alter_table("activities", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("duration_minutes", sa.Integer(), server_default="60", nullable=False)
        )
        batch_op.add_column(
            sa.Column("waitlist", sa.Boolean(), server_default=sa.text("false"), nullable=False)
        )
        batch_op.add_column(sa.Column("accepted", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("sequence", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("updated_at", UTC, nullable=True))
    # The accepted count of the activities of before.
    op.execute(
        "UPDATE activities SET accepted = (SELECT count(*) FROM invites "
        "WHERE invites.activity_id = activities.id AND invites.status = 'accepted')"
    )
    with op.batch_alter_table("invites", schema=None) as batch_op:
        batch_op.add_column(sa.Column("waitlisted_at", UTC, nullable=True))
        batch_op.add_column(sa.Column("previous_status", sa.String(length=20), nullable=True))
        _open_index(batch_op, OLD_OPEN, create=False)
        _open_index(batch_op, NEW_OPEN, create=True)

    op.create_table(
        "reminders",
        sa.Column("activity_id", ID, autoincrement=False, nullable=False),
        sa.Column("starts_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(["activity_id"], ["activities.id"]),
        sa.PrimaryKeyConstraint("activity_id"),
    )
    with op.batch_alter_table("reminders", schema=None) as batch_op:
        batch_op.create_index("ix_reminders_starts_at", ["starts_at"], unique=False)
    # Activities of before that have not started get their reminder too.
    op.execute(
        "INSERT INTO reminders (activity_id, starts_at) SELECT id, starts_at FROM activities "
        "WHERE starts_at IS NOT NULL AND deleted_at IS NULL AND starts_at > CURRENT_TIMESTAMP"
        if op.get_bind().dialect.name == "postgresql"
        else "INSERT INTO reminders (activity_id, starts_at) SELECT id, starts_at FROM activities "
        "WHERE starts_at IS NOT NULL AND deleted_at IS NULL AND starts_at > "
        "strftime('%Y-%m-%d %H:%M:%f', 'now')"
    )

    op.create_table(
        "professionals",
        sa.Column("id", ID, autoincrement=False, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "calendar_feeds",
        sa.Column("user_id", ID, autoincrement=False, nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("user_id"),
        sa.UniqueConstraint("secret_hash"),
    )


def downgrade() -> None:
    op.drop_table("calendar_feeds")
    op.drop_table("professionals")
    with op.batch_alter_table("reminders", schema=None) as batch_op:
        batch_op.drop_index("ix_reminders_starts_at")
    op.drop_table("reminders")
    # Invites of the new states have no place in the old schema's open index.
    op.execute("UPDATE invites SET status = 'cancelled' WHERE status = 'waitlisted'")
    with op.batch_alter_table("invites", schema=None) as batch_op:
        _open_index(batch_op, NEW_OPEN, create=False)
        _open_index(batch_op, OLD_OPEN, create=True)
        batch_op.drop_column("previous_status")
        batch_op.drop_column("waitlisted_at")
    with op.batch_alter_table("activities", schema=None) as batch_op:
        batch_op.drop_column("updated_at")
        batch_op.drop_column("sequence")
        batch_op.drop_column("accepted")
        batch_op.drop_column("waitlist")
        batch_op.drop_column("duration_minutes")
