"""Activities use cases: create, change, invite, respond (waitlist, withdraw), list, delete,
reminders, calendar feeds, and the connection cascade. No HTTP here."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy.exc
from sqlalchemy import (
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased

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
    ActivityInvitePromoted,
    ActivityInviteWithdrawn,
    ActivityPayload,
    ActivityReminder,
    ActivitySummary,
    ActivityUpdated,
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
from services.common.tasks import ErrorOnce, honour_cancellation
from services.common.tokens import Identity

from .tables import (
    OPEN,
    Activity,
    CalendarFeed,
    ConnectionCopy,
    Invite,
    ProfessionalCopy,
    Reminder,
)

log = logging.getLogger(__name__)

# The invite state machine, in one place: (status, action) -> the status it leads to. Any
# pair not here is refused (the use case says how). `join_waitlist` is an accept of a full
# activity that keeps a waitlist; `promote` gives a freed place to the oldest waitlisted
# invite; `disconnect` is a connection removal (pending invites only: an accepted or
# waitlisted client keeps their place, as they already said yes); `cancel` is the
# activity's deletion (every invite, declined and withdrawn ones too).
TRANSITIONS: dict[tuple[str, str], str] = {
    ("pending", "accept"): "accepted",
    ("pending", "join_waitlist"): "waitlisted",
    ("pending", "decline"): "declined",
    ("accepted", "withdraw"): "withdrawn",
    ("waitlisted", "withdraw"): "withdrawn",
    ("waitlisted", "promote"): "accepted",
    ("pending", "disconnect"): "cancelled",
    **{
        (status, "cancel"): "cancelled"
        for status in ("pending", "accepted", "waitlisted", "declined", "withdrawn")
    },
}
STATUSES = ("pending", "accepted", "declined", "cancelled", "waitlisted", "withdrawn")
BATCH = 200  # reminders sent per transaction
REMINDER_POLL_SECONDS = 1.0  # another replica's change is seen at least this often
REMINDER_RETRY_SECONDS = 0.05  # due rows another replica is sending right now
ACTIVITY_FIELDS = ("title", "description", "starts_at", "duration_minutes", "capacity", "waitlist")


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


class InviteNotAccepted(ActivitiesError):
    """A withdrawal of an invite that is neither accepted nor waitlisted."""


class ActivityIsCancelled(ActivitiesError):
    """A change to an activity its owner has deleted."""


class CapacityBelowAccepted(ActivitiesError):
    pass


class StartsInPast(ActivitiesError):
    """A start that is not in the future: a 400 about the `starts_at` field."""

    errors = [{"field": "starts_at", "message": "must be in the future"}]


class FeedNotFound(ActivitiesError):
    pass


class InvalidTransition(ActivitiesError):
    pass


def next_status(status: str, action: str) -> str:
    """Where `action` takes an invite in `status` (TRANSITIONS), else InvalidTransition."""
    found = TRANSITIONS.get((status, action))
    if found is None:
        raise InvalidTransition(f"{action} of a {status} invite")
    return found


@dataclass(slots=True)
class ActivitiesContext:
    db: Database
    # Waits until the connections copy has applied every event already published.
    catch_up: CatchUp
    # REMINDER_MINUTES: how long before the start the reminder goes out.
    reminder_minutes: float = 60.0
    public_url: str = "http://127.0.0.1:8080"
    # The time now (tests give a clock of their own).
    clock: Callable[[], dt.datetime] = utcnow
    # Set when this process changed a reminder: the scheduler looks again at once.
    reminders_changed: asyncio.Event = field(default_factory=asyncio.Event)


INSERT_ACTIVITY = insert(Activity.__table__).returning(Activity.__table__.c.id)
INSERT_REMINDER = insert(Reminder.__table__)


def places_left(capacity: int | None, accepted: int) -> int | None:
    return None if capacity is None else max(capacity - accepted, 0)


def summary(activity: Activity) -> ActivitySummary:
    return ActivitySummary(
        id=activity.id,
        professional_id=activity.professional_id,
        title=activity.title,
        description=activity.description,
        starts_at=activity.starts_at,
        capacity=activity.capacity,
        created_at=activity.created_at,
        duration_minutes=activity.duration_minutes,
        waitlist=activity.waitlist,
        places_left=places_left(activity.capacity, activity.accepted),
        status="cancelled" if activity.deleted_at is not None else "scheduled",
    )


def activity_view(activity: Activity, counts: InviteCounts) -> ActivityData:
    return ActivityData(**summary(activity).model_dump(), invites=counts)


def invite_view(invite: Invite, activity: Activity, position: int | None = None) -> InviteData:
    return InviteData(
        id=invite.id,
        status=invite.status,
        client_id=invite.client_id,
        activity=summary(activity),
        created_at=invite.created_at,
        updated_at=invite.updated_at,
        waitlist_position=position if invite.status == "waitlisted" else None,
    )


def _ahead(invite: Any) -> Any:
    """Waitlisted invites of the same activity that came before `invite` (or are it)."""
    return and_(
        Invite.activity_id == invite.activity_id,
        Invite.status == "waitlisted",
        or_(
            Invite.waitlisted_at < invite.waitlisted_at,
            and_(Invite.waitlisted_at == invite.waitlisted_at, Invite.id <= invite.id),
        ),
    )


def _position(session: Session, invite: Invite) -> int | None:
    """1 for the waitlisted invite that gets the next place; None when not waitlisted."""
    if invite.status != "waitlisted":
        return None
    return session.scalar(select(func.count()).where(_ahead(invite)))


def _move(invite: Invite, action: str, now: dt.datetime) -> None:
    """Take `invite` through the state machine (TRANSITIONS)."""
    status = next_status(invite.status, action)
    invite.previous_status, invite.status = invite.status, status
    invite.updated_at = now
    invite.waitlisted_at = now if status == "waitlisted" else None


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


def _check_future(ctx: ActivitiesContext, starts_at: dt.datetime | None) -> None:
    if starts_at is not None and starts_at <= ctx.clock():
        raise StartsInPast(starts_at)


def _schedule_reminder(session: Session, activity_id: int, starts_at: dt.datetime | None) -> None:
    """The activity's reminder follows its start: moved, or dropped without one."""
    session.execute(delete(Reminder).where(Reminder.activity_id == activity_id))
    if starts_at is not None:
        session.execute(INSERT_REMINDER, {"activity_id": activity_id, "starts_at": starts_at})


async def create_activity(
    ctx: ActivitiesContext,
    *,
    identity: Identity,
    title: str,
    description: str,
    starts_at: dt.datetime | None,
    capacity: int | None,
    duration_minutes: int = 60,
    waitlist: bool = False,
) -> ActivityData:
    _check_future(ctx, starts_at)
    now = utcnow()
    values = {
        "professional_id": identity.user_id,
        "title": title,
        "description": description,
        "starts_at": starts_at,
        "capacity": capacity,
        "created_at": now,
        "duration_minutes": duration_minutes,
        "waitlist": waitlist,
        "accepted": 0,
        "sequence": 0,
        "updated_at": now,
    }

    def create(session: Session) -> ActivityData:
        # A Core insert: creation is the hot write, and an ORM flush costs ~3x as much.
        activity_id = session.scalar(INSERT_ACTIVITY, values)
        if starts_at is not None:
            session.execute(INSERT_REMINDER, {"activity_id": activity_id, "starts_at": starts_at})
        data = ActivityData(
            id=activity_id,
            professional_id=identity.user_id,
            title=title,
            description=description,
            starts_at=starts_at,
            capacity=capacity,
            created_at=now,
            duration_minutes=duration_minutes,
            waitlist=waitlist,
            places_left=capacity,
            status="scheduled",
            invites=InviteCounts(),
        )
        stage(session, ActivityCreated(data=ActivityPayload(activity=data)))
        return data

    data = await ctx.db.write(create)
    if starts_at is not None:
        ctx.reminders_changed.set()
    return data


def _promote(session: Session, activity: Activity, now: dt.datetime) -> list[Invite]:
    """Give every free place to the oldest waitlisted invites (the activity row is locked
    by the caller, so no other transaction frees or takes a place meanwhile)."""
    free = None if activity.capacity is None else activity.capacity - activity.accepted
    if free is not None and free <= 0:
        return []
    query = (
        select(Invite)
        .where(Invite.activity_id == activity.id, Invite.status == "waitlisted")
        .order_by(Invite.waitlisted_at, Invite.id)
        .with_for_update()
    )
    if free is not None:
        query = query.limit(free)
    promoted = list(session.scalars(query))
    for row in promoted:
        _move(row, "promote", now)
        activity.accepted += 1
    return promoted


def _stage_promotions(session: Session, activity: Activity, promoted: Sequence[Invite]) -> None:
    for row in promoted:
        stage(
            session,
            ActivityInvitePromoted(
                data=InvitePayload(invite=invite_view(row, activity)),
                recipient_ids=sorted({row.client_id, activity.professional_id}),
            ),
        )


async def update_activity(
    ctx: ActivitiesContext, *, identity: Identity, activity_id: int, changes: Mapping[str, Any]
) -> ActivityData:
    """The owner changes any of ACTIVITY_FIELDS. Nothing that differs: 200, nothing sent."""
    if "starts_at" in changes:
        _check_future(ctx, changes["starts_at"])

    def change(session: Session) -> ActivityData:
        activity = session.scalar(
            select(Activity)
            .where(Activity.id == activity_id, Activity.professional_id == identity.user_id)
            .with_for_update()
        )
        if activity is None:
            raise ActivityNotFound(activity_id)
        if activity.deleted_at is not None:
            raise ActivityIsCancelled(activity_id)
        capacity = changes.get("capacity", activity.capacity)
        if capacity is not None and capacity < activity.accepted:
            raise CapacityBelowAccepted(activity_id)
        changed = {k: v for k, v in changes.items() if getattr(activity, k) != v}
        if not changed:
            return activity_view(activity, _counts(session, [activity.id])[activity.id])
        now = utcnow()
        for name, value in changed.items():
            setattr(activity, name, value)
        activity.sequence += 1
        activity.updated_at = now
        if "starts_at" in changed:
            _schedule_reminder(session, activity.id, activity.starts_at)
        promoted = _promote(session, activity, now) if "capacity" in changed else []
        session.flush()
        view = activity_view(activity, _counts(session, [activity.id])[activity.id])
        told = session.scalars(
            select(Invite.client_id).where(
                Invite.activity_id == activity.id, Invite.status.in_(OPEN)
            )
        ).all()
        stage(
            session,
            ActivityUpdated(data=ActivityPayload(activity=view), recipient_ids=sorted(set(told))),
        )
        _stage_promotions(session, activity, promoted)
        moved.append("starts_at" in changed)
        return view

    moved: list[bool] = []  # whether the committed change moved the reminder
    data = await ctx.db.write(change)
    if any(moved):
        ctx.reminders_changed.set()
    return data


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
    ctx: ActivitiesContext, *, identity: Identity, invite_id: int, action: str
) -> InviteData:
    """The invitee accepts (waitlisted when full with a waitlist), declines or withdraws."""
    # An invite cancelled by a connection removal a moment ago stays so.
    if not await ctx.catch_up(about=_party("client", identity.user_id)):
        raise CopyBehind(invite_id)

    def answer(session: Session) -> InviteData:
        activity_id = session.scalar(
            select(Invite.activity_id).where(
                Invite.id == invite_id, Invite.client_id == identity.user_id
            )
        )
        if activity_id is None:
            raise InviteNotFound(invite_id)
        # The activity row first, then the invite (every writer of places locks in this
        # order, so none waits on another in a cycle): accepts, withdrawals, promotions and
        # capacity changes of one activity queue here, and each one reads the places (and
        # the invite) as the one before it left them, also under READ COMMITTED. SQLite
        # has one writer at a time anyway.
        activity = session.scalar(
            select(Activity).where(Activity.id == activity_id).with_for_update()
        )
        row = session.scalar(select(Invite).where(Invite.id == invite_id).with_for_update())
        assert activity is not None and row is not None
        now = utcnow()
        promoted: list[Invite] = []
        if action == "withdraw":
            if (row.status, action) not in TRANSITIONS:
                raise InviteNotAccepted(invite_id)
            if row.status == "accepted":
                activity.accepted -= 1
            _move(row, "withdraw", now)
            promoted = _promote(session, activity, now)
            event_cls: type[Any] = ActivityInviteWithdrawn
        else:
            if row.status != "pending":
                raise InviteNotPending(invite_id)
            if action == "decline":
                _move(row, "decline", now)
                event_cls = ActivityInviteDeclined
            else:
                full = activity.capacity is not None and activity.accepted >= activity.capacity
                if full and not activity.waitlist:
                    raise ActivityFull(activity.id)
                _move(row, "join_waitlist" if full else "accept", now)
                if not full:
                    activity.accepted += 1
                # A client who joins the waitlist accepted too: the professional sees it
                # as an accept whose invite is waitlisted.
                event_cls = ActivityInviteAccepted
        session.flush()
        data = invite_view(row, activity, _position(session, row))
        stage(
            session,
            event_cls(data=InvitePayload(invite=data), recipient_ids=[row.professional_id]),
        )
        _stage_promotions(session, activity, promoted)
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
    Activity.duration_minutes,
    Activity.waitlist,
    Activity.accepted.label("accepted_now"),
    # Computed by the database: a text column costs the hot lists less than a timestamp
    # they would only test for null.
    case((Activity.deleted_at.is_(None), "scheduled"), else_="cancelled").label("activity_status"),
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
_AHEAD = aliased(Invite)
# Only a waitlisted invite's row counts the ones ahead of it (CASE evaluates it lazily).
_WAITLIST_POSITION = case(
    (
        Invite.status == "waitlisted",
        select(func.count())
        .where(
            _AHEAD.activity_id == Invite.activity_id,
            _AHEAD.status == "waitlisted",
            or_(
                _AHEAD.waitlisted_at < Invite.waitlisted_at,
                and_(_AHEAD.waitlisted_at == Invite.waitlisted_at, _AHEAD.id <= Invite.id),
            ),
        )
        .correlate(Invite)
        .scalar_subquery(),
    ),
    else_=None,
).label("waitlist_position")
LIST_INVITES = (
    select(
        Invite.id.label("invite_id"),
        Invite.status,
        Invite.client_id,
        Invite.created_at.label("invite_created_at"),
        Invite.updated_at,
        _WAITLIST_POSITION,
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
    capacity = row["capacity"]
    return {
        "id": row["id"],
        "professional_id": row["professional_id"],
        "title": row["title"],
        "description": row["description"],
        "starts_at": format_timestamp(starts_at) if starts_at is not None else None,
        "capacity": capacity,
        "created_at": format_timestamp(row["created_at"]),
        "duration_minutes": row["duration_minutes"],
        "waitlist": bool(row["waitlist"]),
        "places_left": places_left(capacity, row["accepted_now"]),
        "status": row["activity_status"],
    }


def activity_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """The Activity object of API.md from one list row (same shape as `activity_view`)."""
    counts = {k: int(row[k]) for k in ("pending", "accepted", "declined")}
    return {**_summary_json(row), "invites": counts}


def invite_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """The Invite object of API.md from one list row (same shape as `invite_view`)."""
    found = {
        "id": row["invite_id"],
        "status": row["status"],
        "client_id": row["client_id"],
        "activity": _summary_json(row),
        "created_at": format_timestamp(row["invite_created_at"]),
        "updated_at": format_timestamp(row["updated_at"]),
    }
    if row["waitlist_position"] is not None:  # only while waitlisted
        found["waitlist_position"] = row["waitlist_position"]
    return found


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
        activity.deleted_at = now
        activity.updated_at = now
        activity.sequence += 1
        view = activity_view(activity, counts)  # as it was, marked cancelled
        # Every invite of it ends cancelled, a declined one too (API.md, version 3); only
        # the clients still expecting it (pending, accepted or waitlisted) are told.
        session.execute(
            update(Invite)
            .where(Invite.activity_id == activity.id, Invite.status != "cancelled")
            .values(status="cancelled", previous_status=Invite.status, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        activity.accepted = 0
        session.execute(delete(Reminder).where(Reminder.activity_id == activity.id))
        stage(
            session,
            ActivityCancelled(
                data=ActivityPayload(activity=view), recipient_ids=sorted(set(notified))
            ),
        )

    await ctx.db.write(cancel)


# --- reminders -----------------------------------------------------------------------------


async def send_due_reminders(ctx: ActivitiesContext, *, limit: int = BATCH) -> int:
    """Turn the reminders due now into `activity.reminder` events; returns how many rows it
    took (sent, or dropped: the activity has started or is gone).

    The rows are deleted in the transaction that stages their events, so a reminder is
    sent once whatever restarts (the outbox carries it on to the stream). Replicas on one
    PostgreSQL database each claim other rows (FOR UPDATE SKIP LOCKED); on SQLite one
    writer at a time does it. The recipients are read now: a client who withdrew since the
    activity was made gets none, one promoted since gets it.
    """
    now = ctx.clock()
    horizon = now + dt.timedelta(minutes=ctx.reminder_minutes)

    def fire(session: Session) -> int:
        claimed = session.execute(
            select(Reminder.activity_id)
            .where(Reminder.starts_at <= horizon)
            .order_by(Reminder.starts_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).scalars()
        ids = list(claimed)
        if not ids:
            return 0
        session.execute(delete(Reminder).where(Reminder.activity_id.in_(ids)))
        activities = session.scalars(
            select(Activity).where(
                Activity.id.in_(ids),
                Activity.deleted_at.is_(None),
                Activity.starts_at > now,  # one whose start passed while all was down: none
            )
        ).all()
        due = {a.id: a for a in activities}
        clients: dict[int, set[int]] = {a: set() for a in due}
        if due:
            accepted = session.execute(
                select(Invite.activity_id, Invite.client_id).where(
                    Invite.activity_id.in_(list(due)), Invite.status == "accepted"
                )
            )
            for activity_id, client_id in accepted:
                clients[activity_id].add(client_id)
        counts = _counts(session, list(due))
        for activity in sorted(due.values(), key=lambda a: (a.starts_at, a.id)):
            stage(
                session,
                ActivityReminder(
                    data=ActivityPayload(activity=activity_view(activity, counts[activity.id])),
                    recipient_ids=sorted({activity.professional_id, *clients[activity.id]}),
                ),
            )
        return len(ids)

    return await ctx.db.write(fire)


async def seconds_to_next_reminder(ctx: ActivitiesContext) -> float | None:
    """How long until the next reminder is due (negative: overdue), None without one."""
    first = await ctx.db.query(lambda s: s.scalar(select(func.min(Reminder.starts_at))))
    if first is None:
        return None
    due = first - dt.timedelta(minutes=ctx.reminder_minutes)
    return (due - ctx.clock()).total_seconds()


async def run_reminders(ctx: ActivitiesContext) -> None:
    """Send reminders when due, forever: sleeps until the next one is due, wakes when this
    process changed one, and looks again every REMINDER_POLL_SECONDS (a replica's change).
    Only a read while none is due: no write transaction every turn."""
    errors = ErrorOnce(log, "reminders")
    while True:
        ctx.reminders_changed.clear()
        try:
            ahead = await seconds_to_next_reminder(ctx)
            wait = REMINDER_POLL_SECONDS if ahead is None else min(ahead, REMINDER_POLL_SECONDS)
            if ahead is not None and ahead <= 0:
                # Due now (or its start passed: dropped). None taken means another replica
                # holds those rows this moment: look again shortly, not in a busy loop.
                wait = 0.0 if await send_due_reminders(ctx) else REMINDER_RETRY_SECONDS
            honour_cancellation()
            errors.clear()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database down: the rows wait, nothing is lost
            errors.note(exc, expected=isinstance(exc, sqlalchemy.exc.SQLAlchemyError | OSError))
            wait = REMINDER_POLL_SECONDS
        if wait <= 0:
            continue
        # Not asyncio.wait_for (see outbox._pump: it may swallow a cancellation).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await ctx.reminders_changed.wait()


# --- calendar feeds --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CalendarEntry:
    """One activity as a calendar shows it."""

    activity_id: int
    title: str
    description: str
    starts_at: dt.datetime
    duration_minutes: int
    cancelled: bool
    sequence: int
    created_at: dt.datetime
    updated_at: dt.datetime
    professional_id: int
    organizer_name: str | None
    organizer_email: str | None


_CALENDAR_COLUMNS = (
    Activity.id,
    Activity.title,
    Activity.description,
    Activity.starts_at,
    Activity.duration_minutes,
    Activity.deleted_at,
    Activity.sequence,
    Activity.created_at,
    Activity.updated_at,
    Activity.professional_id,
    ProfessionalCopy.name,
    ProfessionalCopy.email,
)
CALENDAR_LIMIT = 2000  # the newest starts; a feed is read whole by calendar apps


def _calendar_rows(session: Session, user_id: int, role: str) -> list[CalendarEntry]:
    query = (
        select(*_CALENDAR_COLUMNS)
        .outerjoin(ProfessionalCopy, ProfessionalCopy.id == Activity.professional_id)
        .where(Activity.starts_at.is_not(None))
    )
    if role == "professional":
        query = query.where(Activity.professional_id == user_id)
    else:
        # Accepted invites; one that was accepted when the activity was deleted stays, as
        # cancelled, so a calendar that had it drops it.
        query = query.join(Invite, Invite.activity_id == Activity.id).where(
            Invite.client_id == user_id,
            or_(
                Invite.status == "accepted",
                and_(
                    Invite.status == "cancelled",
                    Invite.previous_status == "accepted",
                    Activity.deleted_at.is_not(None),
                ),
            ),
        )
    query = query.order_by(Activity.starts_at.desc(), Activity.id.desc()).limit(CALENDAR_LIMIT)
    return [
        CalendarEntry(
            activity_id=row.id,
            title=row.title,
            description=row.description,
            starts_at=row.starts_at,
            duration_minutes=row.duration_minutes,
            cancelled=row.deleted_at is not None,
            sequence=row.sequence,
            created_at=row.created_at,
            updated_at=row.updated_at or row.created_at,
            professional_id=row.professional_id,
            organizer_name=row.name,
            organizer_email=row.email,
        )
        for row in session.execute(query)
    ]


async def calendar_entries(
    ctx: ActivitiesContext, *, user_id: int, role: str
) -> list[CalendarEntry]:
    """The activities with a start in the user's calendar: a professional's own; a client's
    accepted ones (cancelled ones stay, marked so)."""
    return await ctx.db.query(lambda session: _calendar_rows(session, user_id, role))


def _feed_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def rotate_feed(ctx: ActivitiesContext, *, identity: Identity) -> str:
    """A new secret feed URL for the caller; the one before stops working. Only a hash of
    the secret is stored."""
    secret = secrets.token_urlsafe(32)
    row = {
        "user_id": identity.user_id,
        "role": identity.role,
        "secret_hash": _feed_hash(secret),
        "created_at": utcnow(),
    }

    def store(session: Session) -> None:
        dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(CalendarFeed.__table__).values(row)
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=[CalendarFeed.user_id],
                set_={k: stmt.excluded[k] for k in ("role", "secret_hash", "created_at")},
            )
        )

    await ctx.db.write(store)
    return f"{ctx.public_url.rstrip('/')}/api/calendar/{secret}.ics"


async def feed_entries(ctx: ActivitiesContext, *, secret: str) -> list[CalendarEntry]:
    """The calendar behind a secret feed URL, else FeedNotFound (whoever's it is)."""
    digest = _feed_hash(secret)

    def read(session: Session) -> list[CalendarEntry]:
        owner = session.execute(
            select(CalendarFeed.user_id, CalendarFeed.role).where(
                CalendarFeed.secret_hash == digest
            )
        ).first()
        if owner is None:
            raise FeedNotFound()
        return _calendar_rows(session, owner.user_id, owner.role)

    return await ctx.db.query(read)


def _keep_professionals(session: Session, connections: Sequence[ConnectionData]) -> None:
    """Names and emails of the professionals in these connections (calendar ORGANIZER)."""
    found = {
        p.id: {"id": p.id, "name": p.name, "email": p.email}
        for p in (c.professional for c in connections)
        if p.id is not None
    }
    if not found:
        return
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(ProfessionalCopy.__table__)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=[ProfessionalCopy.id],
            set_={"name": stmt.excluded.name, "email": stmt.excluded.email},
        ),
        list(found.values()),
    )


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
        _keep_professionals(session, [e.data.connection for e in events])
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

    Accepted and waitlisted invites stay as they are (API.md: pending -> cancelled): the
    client said yes to that session, and no place frees, so the removal promotes nobody
    and its only consequences are the pair client's `activity.invite_cancelled`.
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
        _move(row, "disconnect", now)
        stage(
            session,
            ActivityInviteCancelled(
                data=InvitePayload(invite=invite_view(row, activity)),
                recipient_ids=[row.client_id],
                caused_by=cause,
            ),
        )
    return [row.id for row, _ in rows]
