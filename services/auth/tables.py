"""Tables owned by the auth service."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.copies import ConnectionCopyMixin
from services.common.db import UTCDateTime, utcnow
from services.common.idempotency import IdempotencyMixin
from services.common.outbox import OutboxMixin
from services.common.tables import Id


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str] = mapped_column(String(320), unique=True)  # stored lower-case
    role: Mapped[str] = mapped_column(String(20))
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_users_role_id", "role", "id"),)


class RefreshToken(Base):
    """One opaque refresh token (stored hashed); a login starts a family, each use rotates."""

    __tablename__ = "refresh_tokens"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    family_id: Mapped[str] = mapped_column(String(32), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    rotated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The access token issued with this refresh token, so a revoked family revokes it too.
    access_jti: Mapped[str] = mapped_column(String(32))
    access_expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class ClientLink(ConnectionCopyMixin, Base):
    """Local copy of connections (from connection events): who may see which client."""

    __tablename__ = "client_links"

    __table_args__ = (
        Index("ix_client_links_professional", "professional_id", "status", "client_id"),
    )


class OutboxEvent(OutboxMixin, Base):
    pass


class IdempotencyKey(IdempotencyMixin, Base):
    pass
