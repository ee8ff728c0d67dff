"""Alembic, run from code: every service migrates its own database on start."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

log = logging.getLogger(__name__)

MIGRATION_LOCK = 0x6D696772  # any constant: serialises replicas migrating one database


def alembic_config(script_location: Path, database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


def upgrade(script_location: Path, database_url: str, revision: str = "head") -> None:
    """Bring the database to `revision`; safe to call from several replicas at once."""
    command.upgrade(alembic_config(script_location, database_url), revision)


def run_env(metadata: MetaData) -> None:
    """Body of every service's migrations/env.py."""
    url = context.config.get_main_option("sqlalchemy.url")
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    asyncio.run(_run_online(url, metadata))


class WrongEncoding(RuntimeError):
    """The PostgreSQL database does not store text as UTF-8."""


def check_encoding(connection: Connection) -> None:
    """Refuse a PostgreSQL database that is not UTF8: in SQL_ASCII, varchar(n) counts
    bytes, so a valid 100-character name of "é" failed as too long (a 500), and other
    encodings cannot hold every character the API accepts."""
    if connection.dialect.name != "postgresql":
        return
    encoding = connection.execute(text("SHOW server_encoding")).scalar()
    if str(encoding).upper() not in ("UTF8", "UTF-8"):
        database = connection.execute(text("SELECT current_database()")).scalar()
        raise WrongEncoding(
            f"PostgreSQL database {database!r} has server encoding {encoding}, not UTF8: "
            f"create it with ENCODING 'UTF8' (e.g. CREATE DATABASE {database} ENCODING "
            "'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0), or initialise the "
            "cluster with initdb --encoding=UTF8"
        )


def _migrate(connection: Connection, metadata: MetaData) -> None:
    check_encoding(connection)
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
        connection.commit()
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite ALTERs need batch mode
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_online(url: str, metadata: MetaData) -> None:
    connect_args = {"timeout": 30} if url.startswith("sqlite") else {}
    engine = create_async_engine(url, poolclass=pool.NullPool, connect_args=connect_args)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_migrate, metadata)
            await conn.commit()
    finally:
        await engine.dispose()


def create_outbox_table() -> None:
    """The `outbox` table of `OutboxMixin`, for a service's first migration."""
    import sqlalchemy as sa
    from alembic import op

    from .db import UTCDateTime
    from .tables import Id

    op.create_table(
        "outbox",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("stream", sa.String(length=100), nullable=False),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("published_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("stream_id", sa.String(length=40), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_index("ix_outbox_unpublished", "outbox", ["published_at", "id"], unique=False)


def drop_outbox_table() -> None:
    from alembic import op

    op.drop_index("ix_outbox_unpublished", table_name="outbox")
    op.drop_table("outbox")


def create_idempotency_table() -> None:
    """The `idempotency_keys` table of `IdempotencyMixin` (the same in every service)."""
    import sqlalchemy as sa
    from alembic import op

    from .db import UTCDateTime
    from .tables import Id

    op.create_table(
        "idempotency_keys",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("scope", sa.String(length=80), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("scope", "key", name="uq_idempotency_keys_scope_key"),
    )
    op.create_index(
        "ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"], unique=False
    )


def drop_idempotency_table() -> None:
    from alembic import op

    op.drop_index("ix_idempotency_keys_created_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")


def add_outbox_txid() -> None:
    """`outbox.txid`: the writing transaction's id (PostgreSQL), the relay's order there."""
    import sqlalchemy as sa
    from alembic import op

    op.add_column("outbox", sa.Column("txid", sa.BigInteger(), nullable=True))
    op.create_index(
        "ix_outbox_unpublished_txid", "outbox", ["published_at", "txid", "id"], unique=False
    )


def drop_outbox_txid() -> None:
    from alembic import op

    op.drop_index("ix_outbox_unpublished_txid", table_name="outbox")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("txid")


def create_mail_outbox_table() -> None:
    """The `mail_outbox` table of `mail.MailOutboxMixin` (the same in every service)."""
    import sqlalchemy as sa
    from alembic import op

    from .db import UTCDateTime
    from .tables import Id

    op.create_table(
        "mail_outbox",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(length=255), nullable=False),
        sa.Column("to_address", sa.String(length=320), nullable=False),
        sa.Column("subject", sa.String(length=300), nullable=False),
        sa.Column("text_body", sa.Text(), nullable=True),
        sa.Column("html_body", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("claimed_until", UTCDateTime(timezone=True), nullable=True),
        sa.Column("sent_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("failed_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("message_id"),
    )
    op.create_index(
        "ix_mail_outbox_due",
        "mail_outbox",
        ["sent_at", "failed_at", "next_attempt_at"],
        unique=False,
    )


def drop_mail_outbox_table() -> None:
    from alembic import op

    op.drop_index("ix_mail_outbox_due", table_name="mail_outbox")
    op.drop_table("mail_outbox")
