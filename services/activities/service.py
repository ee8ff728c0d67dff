"""Activities use cases: create, invite, respond, list, delete, and the connection cascade.
No HTTP here."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy.exc
from sqlalchemy import bindparam, case, func, insert, select, update
from sqlalchemy.orm import Session

from services.common.consumer import CatchUp, CopyBehind
from services.common.copies import apply_connections
from services.common.db import Database, utcnow
from services.common.events import (
    ActivityCancelled,
    ActivityCreated,
    ActivityData,
    ActivityInviteAccepted,
    ActivityInviteCancelled,
    ActivityInvited,
    ActivityInviteDeclined,
    ActivityPayload,
    ActivitySummary,
    ConnectionData,
    ConnectionEvent,
    ConnectionRemovalApplied,
    ConnectionRemoved,
    Event,
    InviteCounts,
    InviteData,
    InvitePayload,
    RemovalAppliedData,
    RemovalAppliedPayload,
    format_timestamp,
)
from services.common.outbox import stage
from services.common.tokens import Identity

from .tables import OPEN, Activity, ConnectionCopy, Invite


class ActivitiesError(Exception):
    """Base of the activities service's domain errors."""


class ActivityNotFound(ActivitiesError):
    pass


class NotConnected(ActivitiesError):
    pass


class AlreadyInvited(ActivitiesError):
    pass


class InviteNotFound(ActivitiesError):
    pass


class InviteNotPending(ActivitiesError):
    pass


class ActivityFull(ActivitiesError):
    pass


@dataclass(slots=True)
class ActivitiesContext:
    db: Database
    # Waits until the connections copy has applied every event already published.
    catch_up: CatchUp


INSERT_ACTIVITY = insert(Activity.__table__).returning(Activity.__table__.c.id)


def summary(activity: Activity) -> ActivitySummary:
    return ActivitySummary(
        id=activity.id,
        professional_id=activity.professional_id,
        title=activity.title,
        description=activity.description,
        starts_at=activity.starts_at,
        capacity=activity.capacity,
        created_at=activity.created_at,
    )


def activity_view(activity: Activity, counts: InviteCounts) -> ActivityData:
    return ActivityData(**summary(activity).model_dump(), invites=counts)


def invite_view(invite: Invite, activity: Activity) -> InviteData:
    return InviteData(
        id=invite.id,
        status=invite.status,
        client_id=invite.client_id,
        activity=summary(activity),
        created_at=invite.created_at,
        updated_at=invite.updated_at,
    )


def _counts(session: Session, activity_ids: Sequence[int]) -> dict[int, InviteCounts]:
    """Invite counts of many activities in one grouped query (no N+1)."""
    if not activity_ids:
        return {}
    rows = session.execute(
        select(Invite.activity_id, Invite.status, func.count())
        .where(
            Invite.activity_id.in_(activity_ids),
            Invite.status.in_(("pending", "accepted", "declined")),
        )
        .group_by(Invite.activity_id, Invite.status)
    )
    found: dict[int, dict[str, int]] = {}
    for activity_id, status, count in rows:
        found.setdefault(activity_id, {})[status] = count
    return {a: InviteCounts(**found.get(a, {})) for a in activity_ids}


async def create_activity(
    ctx: ActivitiesContext,
    *,
    identity: Identity,
    title: str,
    description: str,
    starts_at: dt.datetime | None,
    capacity: int | None,
) -> ActivityData:

    values = {
        "professional_id": identity.user_id,
        "title": title,
        "description": description,
        "starts_at": starts_at,
        "capacity": capacity,
        "created_at": utcnow(),
    }

    def create(session: Session) -> ActivityData:
        # A Core insert: creation is the hot write, and an ORM flush costs ~3x as much.
        activity_id = session.scalar(INSERT_ACTIVITY, values)
        data = ActivityData(id=activity_id, **values, invites=InviteCounts())
        stage(session, ActivityCreated(data=ActivityPayload(activity=data)))
        return data

    return await ctx.db.write(create)


def _pair(professional_id: int, client_id: int) -> Callable[[Event], bool]:
    """Connection events of one pair: all an invite between them depends on."""

    def about(event: Event) -> bool:
        if not isinstance(event, ConnectionEvent):
            return False
        connection = event.data.connection
        return connection.professional.id == professional_id and connection.client.id == client_id

    return about


def _party(side: str, user_id: int) -> Callable[[Event], bool]:
    """Connection events with `user_id` on `side` (what cascades onto their invites)."""

    def about(event: Event) -> bool:
        if not isinstance(event, ConnectionEvent):
            return False
        party = getattr(event.data.connection, side)
        return party.id == user_id

    return about


def _owned_activity(
    session: Session, identity: Identity, activity_id: int, *, lock: bool = False
) -> Activity:
    query = select(Activity).where(
        Activity.id == activity_id,
        Activity.professional_id == identity.user_id,
        Activity.deleted_at.is_(None),
    )
    if lock:
        query = query.with_for_update()
    activity = session.scalar(query)
    if activity is None:
        raise ActivityNotFound(activity_id)
    return activity


def _connected(
    session: Session, professional_id: int, client_id: int, *, other_than: int | None = None
) -> bool:
    """Whether the pair has an accepted connection (in the copy), besides `other_than`.

    Locks what it reads (PostgreSQL), so an invite and the removal that would cancel it
    are applied one after the other, never interleaved; SQLite has one writer anyway.
    """
    query = select(ConnectionCopy.connection_id).where(
        ConnectionCopy.professional_id == professional_id,
        ConnectionCopy.client_id == client_id,
        ConnectionCopy.status == "accepted",
    )
    if other_than is not None:
        query = query.where(ConnectionCopy.connection_id != other_than)
    return session.scalar(query.limit(1).with_for_update()) is not None


async def invite(
    ctx: ActivitiesContext, *, identity: Identity, activity_id: int, client_id: int
) -> InviteData:
    # A connection accepted or removed a moment ago, by anyone, must be in the copy: on
    # a stale one an accept on its way would be refused, and an invite allowed by a
    # connection already removed would be cancelled as soon as the removal lands. When
    # that cannot be established (Redis down), "try again shortly" is the true answer.
    if not await ctx.catch_up(about=_pair(identity.user_id, client_id)):
        raise CopyBehind(client_id)

    def add(session: Session) -> InviteData:
        activity = _owned_activity(session, identity, activity_id)
        # Checked in the transaction that adds the invite: a removal applied meanwhile
        # either comes first (no invite) or after (and cancels it).
        if not _connected(session, identity.user_id, client_id):
            raise NotConnected(client_id)
        existing = session.scalar(
            select(Invite.id).where(
                Invite.activity_id == activity_id,
                Invite.client_id == client_id,
                Invite.status.in_(OPEN),
            )
        )
        if existing:
            raise AlreadyInvited(existing)
        now = utcnow()
        row = Invite(
            activity_id=activity.id,
            professional_id=identity.user_id,
            client_id=client_id,
            status="pending",
            created_at=now,
            updated_at=now,
        )
        session.add(row)
        session.flush()
        data = invite_view(row, activity)
        stage(session, ActivityInvited(data=InvitePayload(invite=data), recipient_ids=[client_id]))
        return data

    try:
        return await ctx.db.write(add)
    except sqlalchemy.exc.IntegrityError as exc:  # a concurrent invite won the race
        raise AlreadyInvited(activity_id) from exc


async def respond(
    ctx: ActivitiesContext, *, identity: Identity, invite_id: int, accept: bool
) -> InviteData:
    # An invite cancelled by a connection removal a moment ago stays so.
    if not await ctx.catch_up(about=_party("client", identity.user_id)):
        raise CopyBehind(invite_id)

    def answer(session: Session) -> InviteData:
        row = session.scalar(
            select(Invite)
            .where(Invite.id == invite_id, Invite.client_id == identity.user_id)
            .with_for_update()
        )
        if row is None:
            raise InviteNotFound(invite_id)
        if row.status != "pending":
            raise InviteNotPending(invite_id)
        # Lock the activity: accepts of one activity queue here, so the capacity check
        # and the update below cannot interleave (SQLite: one writer at a time anyway).
        activity = session.scalar(
            select(Activity).where(Activity.id == row.activity_id).with_for_update()
        )
        assert activity is not None
        if accept and activity.capacity is not None:
            accepted = session.scalar(
                select(func.count()).where(
                    Invite.activity_id == activity.id, Invite.status == "accepted"
                )
            )
            if accepted >= activity.capacity:
                raise ActivityFull(activity.id)
        row.status = "accepted" if accept else "declined"
        row.updated_at = utcnow()
        data = invite_view(row, activity)
        event_cls = ActivityInviteAccepted if accept else ActivityInviteDeclined
        stage(
            session,
            event_cls(data=InvitePayload(invite=data), recipient_ids=[row.professional_id]),
        )
        return data

    return await ctx.db.write(answer)


def _count(status: str) -> Any:
    return func.coalesce(func.sum(case((Invite.status == status, 1), else_=0)), 0).label(status)


_ACTIVITY_COLUMNS = (
    Activity.id,
    Activity.professional_id,
    Activity.title,
    Activity.description,
    Activity.starts_at,
    Activity.capacity,
    Activity.created_at,
)
_PAGE = (
    select(Activity.id)
    .where(Activity.professional_id == bindparam("uid"), Activity.deleted_at.is_(None))
    .order_by(Activity.id.desc())
    .limit(bindparam("limit"))
    .offset(bindparam("offset"))
    .subquery()
)
# The lists are the hottest reads: built once, read without the ORM (see Database.fetch).
# A professional's page of activities and their invite counts come in one grouped query.
LIST_ACTIVITIES = (
    select(*_ACTIVITY_COLUMNS, _count("pending"), _count("accepted"), _count("declined"))
    .join(_PAGE, _PAGE.c.id == Activity.id)
    .outerjoin(Invite, Invite.activity_id == Activity.id)
    .group_by(Activity.id)
    .order_by(Activity.id.desc())
)
LIST_INVITES = (
    select(
        Invite.id.label("invite_id"),
        Invite.status,
        Invite.client_id,
        Invite.created_at.label("invite_created_at"),
        Invite.updated_at,
        *_ACTIVITY_COLUMNS,
    )
    .join(Activity, Activity.id == Invite.activity_id)
    .where(Invite.client_id == bindparam("uid"))
    .order_by(Invite.id.desc())
    .limit(bindparam("limit"))
    .offset(bindparam("offset"))
)


def _summary_json(row: Mapping[str, Any]) -> dict[str, Any]:
    starts_at = row["starts_at"]
    return {
        "id": row["id"],
        "professional_id": row["professional_id"],
        "title": row["title"],
        "description": row["description"],
        "starts_at": format_timestamp(starts_at) if starts_at is not None else None,
        "capacity": row["capacity"],
        "created_at": format_timestamp(row["created_at"]),
    }


def activity_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """The Activity object of API.md from one list row (same shape as `activity_view`)."""
    counts = {k: int(row[k]) for k in ("pending", "accepted", "declined")}
    return {**_summary_json(row), "invites": counts}


def invite_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """The Invite object of API.md from one list row (same shape as `invite_view`)."""
    return {
        "id": row["invite_id"],
        "status": row["status"],
        "client_id": row["client_id"],
        "activity": _summary_json(row),
        "created_at": format_timestamp(row["invite_created_at"]),
        "updated_at": format_timestamp(row["updated_at"]),
    }


async def list_activities(
    ctx: ActivitiesContext, *, identity: Identity, limit: int, offset: int
) -> list[dict[str, Any]]:
    # Counts show invites cancelled by a connection removal a moment ago.
    if not await ctx.catch_up(about=_party("professional", identity.user_id)):
        raise CopyBehind(identity.user_id)
    rows = await ctx.db.fetch(LIST_ACTIVITIES, uid=identity.user_id, limit=limit, offset=offset)
    return [activity_json(row) for row in rows]


async def list_invites(
    ctx: ActivitiesContext, *, identity: Identity, limit: int, offset: int
) -> list[dict[str, Any]]:
    # Invites cancelled by a connection removal a moment ago show so.
    if not await ctx.catch_up(about=_party("client", identity.user_id)):
        raise CopyBehind(identity.user_id)
    rows = await ctx.db.fetch(LIST_INVITES, uid=identity.user_id, limit=limit, offset=offset)
    return [invite_json(row) for row in rows]


async def delete_activity(ctx: ActivitiesContext, *, identity: Identity, activity_id: int) -> None:

    def cancel(session: Session) -> None:
        activity = _owned_activity(session, identity, activity_id, lock=True)
        counts = _counts(session, [activity.id])[activity.id]
        notified = session.scalars(
            select(Invite.client_id).where(
                Invite.activity_id == activity.id, Invite.status.in_(OPEN)
            )
        ).all()
        now = utcnow()
        # Every invite of it ends cancelled, a declined one too (API.md, version 3); only
        # the clients still expecting it (pending or accepted) are told.
        session.execute(
            update(Invite)
            .where(Invite.activity_id == activity.id, Invite.status != "cancelled")
            .values(status="cancelled", updated_at=now)
        )
        activity.deleted_at = now
        stage(
            session,
            ActivityCancelled(
                data=ActivityPayload(activity=activity_view(activity, counts)),
                recipient_ids=sorted(set(notified)),
            ),
        )

    await ctx.db.write(cancel)


def on_connection_changed(event: ConnectionEvent) -> Callable[[Session], None]:
    """The unit of work of one connection event (see `on_connections_changed`)."""
    return on_connections_changed([event])


def on_connections_changed(events: Sequence[ConnectionEvent]) -> Callable[[Session], None]:
    """Keep the copy of connections; a removal cancels the pending invites of the pair.

    An event older than the stored state, or carrying that same state again, is ignored,
    so redelivery and reordering leave the newest state, and a cancellation happens once.
    The copy is keyed by the connection's id, so a late removal of an older connection
    never cancels what a newer connection of the same pair allows. A batch is applied in
    one statement, then the removals it brought cascade. Every removal, cascaded or not,
    ends with `activity.connection_removal_applied` after what it caused (the notifier
    keeps the client's later notifications behind them). Returns the unit of work.
    """

    def apply(session: Session) -> None:
        changed = apply_connections(session, ConnectionCopy, [e.data.connection for e in events])
        cascaded: set[int] = set()
        for event in events:
            if not isinstance(event, ConnectionRemoved):
                continue
            connection = event.data.connection
            cancelled: list[int] = []
            if (
                connection.id in changed
                and connection.id not in cascaded
                and connection.client.id is not None
            ):
                cascaded.add(connection.id)
                cancelled = _cascade_removal(session, connection, cause=event.event_id)
            stage(
                session,
                ConnectionRemovalApplied(
                    data=RemovalAppliedPayload(
                        removal=RemovalAppliedData(
                            connection_id=connection.id, invite_ids=cancelled
                        )
                    ),
                    caused_by=event.event_id,
                ),
            )

    return apply


def _cascade_removal(
    session: Session, connection: ConnectionData, *, cause: uuid.UUID
) -> list[int]:
    """Cancel the pair's invites that the removal leaves without a connection; returns
    their ids.

    When the pair is connected again (a newer connection, already in the copy: a removal
    applied late, or in one batch with the pair's next connection), only the invites made
    before the removal are cancelled; those made after it were made under the newer
    connection. (Sparing every invite whenever the pair was connected again missed the
    cancellation of the invites made under the removed connection.) Otherwise every
    pending invite of the pair goes, including one that raced the removal.
    """
    assert connection.client.id is not None
    pro_id, client_id = connection.professional.id or 0, connection.client.id
    query = (
        select(Invite, Activity)
        .join(Activity, Activity.id == Invite.activity_id)
        .where(
            Invite.professional_id == pro_id,
            Invite.client_id == client_id,
            Invite.status == "pending",
        )
        .with_for_update(of=Invite)
    )
    if _connected(session, pro_id, client_id, other_than=connection.id):
        query = query.where(Invite.created_at <= connection.updated_at)
    rows = session.execute(query).all()
    now = utcnow()
    for row, activity in rows:
        row.status = "cancelled"
        row.updated_at = now
        stage(
            session,
            ActivityInviteCancelled(
                data=InvitePayload(invite=invite_view(row, activity)),
                recipient_ids=[row.client_id],
                caused_by=cause,
            ),
        )
    return [row.id for row, _ in rows]
