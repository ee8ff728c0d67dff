"""Tables owned by the activities service."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.copies import ConnectionCopyMixin
from services.common.db import UTCDateTime, utcnow
from services.common.idempotency import IdempotencyMixin
from services.common.outbox import OutboxMixin
from services.common.tables import Id

# At most one open invite per activity and client (a withdrawn or declined client may be
# invited again).
OPEN = ("pending", "accepted", "waitlisted")
OPEN_SQL = "status IN ('pending', 'accepted', 'waitlisted')"


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
    duration_minutes: Mapped[int] = mapped_column(Integer, default=60, server_default="60")
    waitlist: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    # Invites accepted now, kept with the row that every accept, withdrawal and promotion
    # locks: places_left costs no count, and the count is read under that lock.
    accepted: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Raised on every change (the calendar's SEQUENCE); updated_at is its LAST-MODIFIED.
    sequence: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

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
    # When it joined the waitlist: the oldest waitlisted invite gets the next place.
    waitlisted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The status it had before the last change (a cancelled invite that was accepted stays
    # in the client's calendar as cancelled).
    previous_status: Mapped[str | None] = mapped_column(String(20), nullable=True)

    __table_args__ = (
        Index(
            "uq_invites_open",
            "activity_id",
            "client_id",
            unique=True,
            sqlite_where=text(OPEN_SQL),
            postgresql_where=text(OPEN_SQL),
        ),
        Index("ix_invites_client", "client_id", "id"),
        Index("ix_invites_activity_status", "activity_id", "status"),
        Index("ix_invites_pair", "professional_id", "client_id", "status"),
    )


class Reminder(Base):
    """The reminder still to send for an activity with a start: written in the transaction
    that creates, moves or cancels the activity, deleted in the one that sends it."""

    __tablename__ = "reminders"

    activity_id: Mapped[int] = mapped_column(
        ForeignKey("activities.id"), primary_key=True, autoincrement=False
    )
    # The activity's start; it is due REMINDER_MINUTES before (read when it is sent, so a
    # changed setting applies to every reminder not yet sent).
    starts_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_reminders_starts_at", "starts_at"),)


class ProfessionalCopy(Base):
    """Professionals' names and emails, from the `connection.*` events (calendar ORGANIZER)."""

    __tablename__ = "professionals"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=False)
    name: Mapped[str | None] = mapped_column(String(100), nullable=True)
    email: Mapped[str] = mapped_column(String(320))


class CalendarFeed(Base):
    """A user's secret calendar feed URL, as a hash: the URL itself is shown once."""

    __tablename__ = "calendar_feeds"

    user_id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=False)
    role: Mapped[str] = mapped_column(String(20))
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class OutboxEvent(OutboxMixin, Base):
    pass


class IdempotencyKey(IdempotencyMixin, Base):
    pass
