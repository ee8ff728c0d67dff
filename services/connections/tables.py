"""Tables owned by the connections service."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, Index, String, false, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.db import UTCDateTime, utcnow
from services.common.idempotency import IdempotencyMixin
from services.common.mail import MailOutboxMixin
from services.common.outbox import OutboxMixin
from services.common.tables import Id

OPEN = ("pending", "accepted")  # at most one open connection per pair


class Base(DeclarativeBase):
    pass


class UserCopy(Base):
    """Local copy of auth's users, from `user.registered` and `user.email_verified`."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str] = mapped_column(String(320), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    # An email invitation binds to this account only once the address is verified.
    email_verified: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Connection(Base):
    __tablename__ = "connections"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    professional_id: Mapped[int] = mapped_column(Id)
    # Null while an email invitation waits for its addressee to sign up.
    client_id: Mapped[int | None] = mapped_column(Id, nullable=True)
    client_email: Mapped[str] = mapped_column(String(320))
    status: Mapped[str] = mapped_column(String(20))
    initiated_by: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # When the client accepted (null before): until then a professional who invited sees
    # the client only as the address typed (no lookup oracle, API.md version 3).
    accepted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        # The database itself refuses a second open connection between a pair, so two
        # concurrent requests cannot both succeed.
        Index(
            "uq_connections_open_pair",
            "professional_id",
            "client_email",
            unique=True,
            sqlite_where=text("status IN ('pending', 'accepted')"),
            postgresql_where=text("status IN ('pending', 'accepted')"),
        ),
        Index("ix_connections_professional", "professional_id", "status", "id"),
        Index("ix_connections_client", "client_id", "status", "id"),
        Index("ix_connections_unbound_email", "client_email", "client_id"),
    )


class OutboxEvent(OutboxMixin, Base):
    pass


class IdempotencyKey(IdempotencyMixin, Base):
    pass


class MailOutbox(MailOutboxMixin, Base):
    """Invitation mail to addresses with no account yet."""
