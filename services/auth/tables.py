"""Tables owned by the auth service."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, String, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.copies import ConnectionCopyMixin
from services.common.db import UTCDateTime, utcnow
from services.common.idempotency import IdempotencyMixin
from services.common.mail import MailOutboxMixin
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
    # Version 3 (mail): the owner proved the address with a code or link sent to it.
    email_verified: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # MFA (TOTP) confirmed and on; see MfaTotp.
    mfa_enabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

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


# --- sessions and MFA ---------------------------------------------------------------------


class AuthSession(Base):
    """A session: one login's refresh-token family (`id` is its `family_id`, the `sid` of
    its access tokens), with what the user sees of it and when it ended."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)  # login, then each refresh
    user_agent: Mapped[str | None] = mapped_column(String(256), nullable=True)
    ip: Mapped[str | None] = mapped_column(String(45), nullable=True)
    # Logged out, ended by the user, expired at a refresh, or revoked on token reuse.
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (Index("ix_sessions_user_created", "user_id", "created_at"),)


class MfaTotp(Base):
    """A user's TOTP secret: pending until a first code confirms it, then MFA is on."""

    __tablename__ = "mfa_totp"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    # AES-GCM under a key derived from the signing key (services/auth/totp.py): a copy of
    # the database alone does not give the secret away.
    sealed_secret: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    confirmed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The time step of the last code accepted: a code is good once, and never an older one.
    last_step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class RecoveryCode(Base):
    """One single-use recovery code, stored as a keyed hash."""

    __tablename__ = "mfa_recovery_codes"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    code_hash: Mapped[str] = mapped_column(String(64))
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (Index("ix_mfa_recovery_codes_user_hash", "user_id", "code_hash"),)


# --- copies of other services' records, outbox, idempotency ----------------------------


class ClientLink(ConnectionCopyMixin, Base):
    """Local copy of connections (from connection events): who may see which client."""

    __tablename__ = "client_links"

    __table_args__ = (
        Index("ix_client_links_professional", "professional_id", "status", "client_id"),
    )


class OutboxEvent(OutboxMixin, Base):
    pass


# -- version 3: mail (verification, password reset) ---------------------------------------


class EmailToken(Base):
    """A secret sent by mail (stored hashed): `verify` proves the address, `reset` sets a
    new password. Single use. A reset asked for an unknown address is stored too (no user),
    so that every address costs the same work; such a row can never be used."""

    __tablename__ = "email_tokens"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=True
    )
    purpose: Mapped[str] = mapped_column(String(20))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        Index("ix_email_tokens_user", "user_id", "purpose"),
        Index("ix_email_tokens_expires", "expires_at"),
    )


class MailOutbox(MailOutboxMixin, Base):
    pass


class IdempotencyKey(IdempotencyMixin, Base):
    pass
