"""sessions and MFA: sessions, TOTP secrets, recovery codes, users.mfa_enabled

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import services.common.db

revision: str = "0005"
down_revision: str | None = "0004"  # after the mail revision (both came in one merge)
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC = services.common.db.UTCDateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("mfa_enabled", sa.Boolean(), server_default=sa.false(), nullable=False)
        )

    op.create_table(
        "sessions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("last_used_at", UTC, nullable=False),
        sa.Column("user_agent", sa.String(length=256), nullable=True),
        sa.Column("ip", sa.String(length=45), nullable=True),
        sa.Column("ended_at", UTC, nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.create_index("ix_sessions_user_created", ["user_id", "created_at"], unique=False)
    # The sessions of before this revision, from their refresh tokens: created at the
    # family's first token, last used at its newest, ended when every token is revoked.
    op.execute(
        """
        INSERT INTO sessions (id, user_id, created_at, last_used_at, ended_at)
        SELECT family_id, MIN(user_id), MIN(created_at), MAX(created_at),
               CASE WHEN SUM(CASE WHEN revoked_at IS NULL THEN 1 ELSE 0 END) > 0
                    THEN NULL ELSE MAX(revoked_at) END
        FROM refresh_tokens GROUP BY family_id
        """
    )

    op.create_table(
        "mfa_totp",
        sa.Column("user_id", Id, autoincrement=False, nullable=False),
        sa.Column("sealed_secret", sa.String(length=200), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("confirmed_at", UTC, nullable=True),
        sa.Column("last_step", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id"),
    )

    op.create_table(
        "mfa_recovery_codes",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("used_at", UTC, nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("mfa_recovery_codes", schema=None) as batch_op:
        batch_op.create_index(
            "ix_mfa_recovery_codes_user_hash", ["user_id", "code_hash"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("mfa_recovery_codes", schema=None) as batch_op:
        batch_op.drop_index("ix_mfa_recovery_codes_user_hash")
    op.drop_table("mfa_recovery_codes")
    op.drop_table("mfa_totp")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_index("ix_sessions_user_created")
    op.drop_table("sessions")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("mfa_enabled")
