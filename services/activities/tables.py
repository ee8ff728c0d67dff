"""Tables owned by the activities service."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Index, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.copies import ConnectionCopyMixin
from services.common.db import UTCDateTime, utcnow
from services.common.idempotency import IdempotencyMixin
from services.common.outbox import OutboxMixin
from services.common.tables import Id

OPEN = ("pending", "accepted")  # at most one open invite per activity and client


class Base(DeclarativeBase):
    pass


class ConnectionCopy(ConnectionCopyMixin, Base):
    """Local copy of connections (from `connection.*`): who may invite whom."""

    __tablename__ = "connections"

    __table_args__ = (Index("ix_connections_pair", "professional_id", "client_id", "status"),)


class Activity(Base):
    __tablename__ = "activities"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    professional_id: Mapped[int] = mapped_column(Id)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    starts_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    capacity: Mapped[int | None] = mapped_column(nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Deleted activities stay: their clients keep seeing the cancelled invites.
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (Index("ix_activities_owner", "professional_id", "deleted_at", "id"),)


class Invite(Base):
    __tablename__ = "invites"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    activity_id: Mapped[int] = mapped_column(ForeignKey("activities.id"))
    professional_id: Mapped[int] = mapped_column(Id)
    client_id: Mapped[int] = mapped_column(Id)
    status: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        Index(
            "uq_invites_open",
            "activity_id",
            "client_id",
            unique=True,
            sqlite_where=text("status IN ('pending', 'accepted')"),
            postgresql_where=text("status IN ('pending', 'accepted')"),
        ),
        Index("ix_invites_client", "client_id", "id"),
        Index("ix_invites_activity_status", "activity_id", "status"),
        Index("ix_invites_pair", "professional_id", "client_id", "status"),
    )


class OutboxEvent(OutboxMixin, Base):
    pass


class IdempotencyKey(IdempotencyMixin, Base):
    pass
