"""Scheduling use cases in-process on SQLite: the invite state machine as a table, waitlists
and promotions, changes, and reminders on a clock the test controls."""

from __future__ import annotations

import datetime as dt
import itertools
import json

import pytest
from sqlalchemy import func, select

from services.activities import service
from services.activities.service import (
    TRANSITIONS,
    ActivitiesContext,
    ActivityFull,
    ActivityIsCancelled,
    CapacityBelowAccepted,
    InvalidTransition,
    InviteNotAccepted,
    InviteNotPending,
    StartsInPast,
    next_status,
)
from services.activities.tables import Activity, ConnectionCopy, Invite, OutboxEvent, Reminder
from services.common.db import Database
from services.common.tokens import Identity

PRO = 1
T0 = dt.datetime(2030, 6, 1, 9, 0, tzinfo=dt.UTC)

STATUSES = ["pending", "accepted", "declined", "cancelled", "waitlisted", "withdrawn"]
ACTIONS = ["accept", "join_waitlist", "decline", "withdraw", "promote", "disconnect", "cancel"]
# Written out here, apart from the code's table: (status, action) -> new status, or None
# where the machine refuses.
EXPECTED: dict[tuple[str, str], str | None] = {
    ("pending", "accept"): "accepted",
    ("pending", "join_waitlist"): "waitlisted",
    ("pending", "decline"): "declined",
    ("pending", "disconnect"): "cancelled",
    ("pending", "cancel"): "cancelled",
    ("accepted", "withdraw"): "withdrawn",
    ("accepted", "cancel"): "cancelled",
    ("waitlisted", "withdraw"): "withdrawn",
    ("waitlisted", "promote"): "accepted",
    ("waitlisted", "cancel"): "cancelled",
    ("declined", "cancel"): "cancelled",
    ("withdrawn", "cancel"): "cancelled",
}


@pytest.mark.parametrize(("status", "action"), list(itertools.product(STATUSES, ACTIONS)))
def test_the_invite_state_machine(status: str, action: str) -> None:
    expected = EXPECTED.get((status, action))
    if expected is None:
        with pytest.raises(InvalidTransition):
            next_status(status, action)
    else:
        assert next_status(status, action) == expected
    assert TRANSITIONS.get((status, action)) == expected
    assert set(TRANSITIONS) <= set(itertools.product(STATUSES, ACTIONS))


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock(T0 - dt.timedelta(days=1))


@pytest.fixture
def ctx(db: Database, clock: Clock) -> ActivitiesContext:
    async def catch_up(about: object = None) -> bool:
        return True

    return ActivitiesContext(db=db, catch_up=catch_up, reminder_minutes=60, clock=clock)


def pro() -> Identity:
    return Identity(user_id=PRO, role="professional", jti="j", sid="s", expires_at=0)


def client(n: int) -> Identity:
    return Identity(user_id=100 + n, role="client", jti="j", sid="s", expires_at=0)


async def connect(db: Database, *clients: Identity) -> None:
    def add(session):  # the copy as connections' accepted events leave it
        for c in clients:
            session.merge(
                ConnectionCopy(
                    connection_id=c.user_id,
                    professional_id=PRO,
                    client_id=c.user_id,
                    status="accepted",
                    updated_at=T0,
                )
            )

    await db.write(add)


async def activity(ctx: ActivitiesContext, **fields) -> int:
    fields.setdefault("starts_at", T0)
    fields.setdefault("capacity", None)
    made = await service.create_activity(
        ctx, identity=pro(), title="Group", description="", **fields
    )
    return made.id


async def invited(ctx: ActivitiesContext, activity_id: int, *clients: Identity) -> list[int]:
    await connect(ctx.db, *clients)
    made = []
    for c in clients:
        data = await service.invite(
            ctx, identity=pro(), activity_id=activity_id, client_id=c.user_id
        )
        made.append(data.id)
    return made


async def act(ctx: ActivitiesContext, who: Identity, invite_id: int, action: str):
    return await service.respond(ctx, identity=who, invite_id=invite_id, action=action)


async def statuses(db: Database, activity_id: int) -> dict[int, str]:
    rows = await db.query(
        lambda s: s.execute(
            select(Invite.client_id, Invite.status).where(Invite.activity_id == activity_id)
        ).all()
    )
    return {client_id - 100: status for client_id, status in rows}


async def events(db: Database, kind: str) -> list[dict]:
    rows = await db.query(
        lambda s: s.scalars(
            select(OutboxEvent.payload).where(OutboxEvent.type == kind).order_by(OutboxEvent.id)
        ).all()
    )
    return [json.loads(r) for r in rows]


async def assert_counter_true(db: Database) -> None:
    """The accepted count kept on each activity equals its accepted invites."""

    def check(session):
        for a in session.scalars(select(Activity)):
            real = session.scalar(
                select(func.count()).where(Invite.activity_id == a.id, Invite.status == "accepted")
            )
            assert a.accepted == real, (a.id, a.accepted, real)
            if a.capacity is not None:
                assert a.accepted <= a.capacity

    await db.query(check)


async def test_a_full_activity_with_a_waitlist_waitlists_in_order_and_promotes_the_oldest(
    ctx: ActivitiesContext,
) -> None:
    a = await activity(ctx, capacity=2, waitlist=True)
    clients = [client(n) for n in range(5)]
    ids = await invited(ctx, a, *clients)
    answers = [await act(ctx, c, i, "accept") for c, i in zip(clients, ids, strict=True)]
    assert [x.status for x in answers] == [
        "accepted",
        "accepted",
        "waitlisted",
        "waitlisted",
        "waitlisted",
    ]
    assert [x.waitlist_position for x in answers] == [None, None, 1, 2, 3]
    assert answers[1].activity.places_left == 0
    # The professional hears of each accept, waitlisted ones too.
    told = await events(ctx.db, "activity.invite_accepted")
    assert [e["data"]["invite"]["status"] for e in told] == [
        "accepted", "accepted", "waitlisted", "waitlisted", "waitlisted"
    ]  # fmt: skip

    # A waitlisted client leaving frees no place; an accepted one frees the oldest's.
    await act(ctx, clients[3], ids[3], "withdraw")
    assert await events(ctx.db, "activity.invite_promoted") == []
    gone = await act(ctx, clients[0], ids[0], "withdraw")
    assert gone.status == "withdrawn"
    assert await statuses(ctx.db, a) == {
        0: "withdrawn", 1: "accepted", 2: "accepted", 3: "withdrawn", 4: "waitlisted"
    }  # fmt: skip
    [promoted] = await events(ctx.db, "activity.invite_promoted")
    assert promoted["data"]["invite"]["client_id"] == clients[2].user_id
    assert promoted["data"]["invite"]["status"] == "accepted"
    assert sorted(promoted["recipient_ids"]) == sorted([PRO, clients[2].user_id])
    [withdrawn, _] = (await events(ctx.db, "activity.invite_withdrawn"))[::-1]
    assert withdrawn["recipient_ids"] == [PRO]
    await assert_counter_true(ctx.db)

    # The only one still waiting is first in line now.
    listed = await service.list_invites(ctx, identity=clients[4], limit=50, offset=0)
    assert listed[0]["waitlist_position"] == 1
    assert listed[0]["activity"]["places_left"] == 0


async def test_answers_that_the_machine_refuses(ctx: ActivitiesContext) -> None:
    a = await activity(ctx, capacity=1)
    first, second = client(1), client(2)
    i1, i2 = await invited(ctx, a, first, second)
    with pytest.raises(InviteNotAccepted):
        await act(ctx, first, i1, "withdraw")  # pending
    await act(ctx, first, i1, "accept")
    with pytest.raises(ActivityFull):  # no waitlist
        await act(ctx, second, i2, "accept")
    with pytest.raises(InviteNotPending):
        await act(ctx, first, i1, "decline")
    await act(ctx, first, i1, "withdraw")
    with pytest.raises(InviteNotAccepted):
        await act(ctx, first, i1, "withdraw")
    with pytest.raises(InviteNotPending):
        await act(ctx, first, i1, "accept")
    # Withdrawn is not open: the professional may invite them again.
    [again] = await invited(ctx, a, first)
    assert (await act(ctx, first, again, "accept")).status == "accepted"


async def test_changing_an_activity(ctx: ActivitiesContext, clock: Clock) -> None:
    a = await activity(ctx, capacity=1, waitlist=True)
    c1, c2, c3 = client(1), client(2), client(3)
    i1, i2, i3 = await invited(ctx, a, c1, c2, c3)
    await act(ctx, c1, i1, "accept")
    await act(ctx, c2, i2, "accept")  # waitlisted
    await act(ctx, c3, i3, "decline")

    unchanged = await service.update_activity(ctx, identity=pro(), activity_id=a, changes={})
    same = await service.update_activity(
        ctx, identity=pro(), activity_id=a, changes={"title": "Group", "capacity": 1}
    )
    assert unchanged == same
    assert await events(ctx.db, "activity.updated") == []

    with pytest.raises(CapacityBelowAccepted):
        await service.update_activity(ctx, identity=pro(), activity_id=a, changes={"capacity": 0})
    with pytest.raises(StartsInPast):
        await service.update_activity(
            ctx, identity=pro(), activity_id=a, changes={"starts_at": clock.now}
        )
    changed = await service.update_activity(
        ctx,
        identity=pro(),
        activity_id=a,
        changes={"capacity": 3, "title": "Moved", "duration_minutes": 90},
    )
    assert (changed.title, changed.capacity, changed.duration_minutes) == ("Moved", 3, 90)
    assert changed.places_left == 1 and changed.invites.accepted == 2
    [updated] = await events(ctx.db, "activity.updated")
    # Pending, accepted and waitlisted clients (c2 was promoted by the same change).
    assert updated["recipient_ids"] == sorted([c1.user_id, c2.user_id])
    [promoted] = await events(ctx.db, "activity.invite_promoted")
    assert promoted["data"]["invite"]["client_id"] == c2.user_id
    sequence = await ctx.db.query(lambda s: s.scalar(select(Activity.sequence)))
    assert sequence == 1
    await assert_counter_true(ctx.db)

    # Without a capacity, every waitlisted invite gets a place.
    b = await activity(ctx, capacity=1, waitlist=True)
    j1, j2, j3 = await invited(ctx, b, c1, c2, c3)
    for who, i in ((c1, j1), (c2, j2), (c3, j3)):
        await act(ctx, who, i, "accept")
    await service.update_activity(ctx, identity=pro(), activity_id=b, changes={"capacity": None})
    assert await statuses(ctx.db, b) == {1: "accepted", 2: "accepted", 3: "accepted"}

    await service.delete_activity(ctx, identity=pro(), activity_id=b)
    with pytest.raises(ActivityIsCancelled):
        await service.update_activity(ctx, identity=pro(), activity_id=b, changes={"title": "x"})
    await assert_counter_true(ctx.db)


async def test_deleting_tells_waitlisted_clients_too(ctx: ActivitiesContext) -> None:
    a = await activity(ctx, capacity=1, waitlist=True)
    c1, c2, c3, c4 = client(1), client(2), client(3), client(4)
    i1, i2, i3, _ = await invited(ctx, a, c1, c2, c3, c4)
    await act(ctx, c1, i1, "accept")
    await act(ctx, c2, i2, "accept")  # waitlisted
    await act(ctx, c3, i3, "decline")
    await service.delete_activity(ctx, identity=pro(), activity_id=a)
    [cancelled] = await events(ctx.db, "activity.cancelled")
    assert cancelled["recipient_ids"] == sorted([c1.user_id, c2.user_id, c4.user_id])
    assert cancelled["data"]["activity"]["status"] == "cancelled"
    assert set((await statuses(ctx.db, a)).values()) == {"cancelled"}


# --- reminders ---------------------------------------------------------------------------


async def due(ctx: ActivitiesContext) -> int:
    return await service.send_due_reminders(ctx)


async def test_a_reminder_goes_once_at_its_time_to_the_professional_and_accepted_clients(
    ctx: ActivitiesContext, clock: Clock
) -> None:
    a = await activity(ctx, capacity=5, waitlist=True)
    c1, c2, c3, c4 = client(1), client(2), client(3), client(4)
    i1, i2, i3, _ = await invited(ctx, a, c1, c2, c3, c4)
    await act(ctx, c1, i1, "accept")
    await act(ctx, c2, i2, "accept")
    await act(ctx, c3, i3, "accept")
    await act(ctx, c2, i2, "withdraw")  # withdrew: gets none

    clock.now = T0 - dt.timedelta(minutes=60, seconds=1)
    assert await due(ctx) == 0
    assert await service.seconds_to_next_reminder(ctx) == pytest.approx(1.0)
    clock.advance(seconds=1)
    assert await due(ctx) == 1
    assert await due(ctx) == 0  # once
    [reminder] = await events(ctx.db, "activity.reminder")
    assert reminder["recipient_ids"] == sorted([PRO, c1.user_id, c3.user_id])
    assert reminder["data"]["activity"]["id"] == a
    assert reminder["data"]["activity"]["starts_at"] == "2030-06-01T09:00:00.000Z"
    clock.advance(minutes=30)
    assert await due(ctx) == 0
    assert await service.seconds_to_next_reminder(ctx) is None


async def test_moving_moves_the_reminder_and_cancelling_drops_it(
    ctx: ActivitiesContext, clock: Clock
) -> None:
    moved = await activity(ctx)
    cancelled = await activity(ctx)
    later = T0 + dt.timedelta(hours=3)
    await service.update_activity(
        ctx, identity=pro(), activity_id=moved, changes={"starts_at": later}
    )
    await service.delete_activity(ctx, identity=pro(), activity_id=cancelled)
    clock.now = T0 - dt.timedelta(minutes=59)  # the old reminder time of both
    assert await due(ctx) == 0
    clock.now = later - dt.timedelta(minutes=60)
    assert await due(ctx) == 1
    [reminder] = await events(ctx.db, "activity.reminder")
    assert reminder["data"]["activity"]["starts_at"] == "2030-06-01T12:00:00.000Z"
    # Cleared start: no reminder at all; a new start brings one back.
    cleared = await activity(ctx, starts_at=later + dt.timedelta(days=1))
    await service.update_activity(
        ctx, identity=pro(), activity_id=cleared, changes={"starts_at": None}
    )
    assert await ctx.db.query(lambda s: s.scalar(select(func.count()).select_from(Reminder))) == 0


async def test_missed_reminders_go_out_on_restart_only_before_the_start(
    ctx: ActivitiesContext, clock: Clock
) -> None:
    soon = await activity(ctx, starts_at=T0)
    started = await activity(ctx, starts_at=T0 - dt.timedelta(minutes=30))
    # Everything was down from before both reminders until between the two starts.
    clock.now = T0 - dt.timedelta(minutes=10)
    assert await due(ctx) == 2  # both rows taken ...
    [reminder] = await events(ctx.db, "activity.reminder")  # ... one sent
    assert reminder["data"]["activity"]["id"] == soon
    assert started != soon


async def test_a_changed_setting_applies_to_reminders_already_scheduled(
    ctx: ActivitiesContext, clock: Clock
) -> None:
    await activity(ctx)
    ctx.reminder_minutes = 0.5
    clock.now = T0 - dt.timedelta(minutes=1)
    assert await due(ctx) == 0
    clock.now = T0 - dt.timedelta(seconds=30)
    assert await due(ctx) == 1


async def test_many_due_at_once_go_in_batches_each_once(
    ctx: ActivitiesContext, clock: Clock
) -> None:
    for n in range(service.BATCH + 50):
        await activity(ctx, starts_at=T0 + dt.timedelta(seconds=n % 60))
    clock.now = T0 - dt.timedelta(minutes=59)
    assert await due(ctx) == service.BATCH
    assert await due(ctx) == 50
    assert await due(ctx) == 0
    sent = await events(ctx.db, "activity.reminder")
    ids = [e["data"]["activity"]["id"] for e in sent]
    assert len(ids) == len(set(ids))


async def test_a_start_in_the_past_is_refused_and_changes_nothing(
    ctx: ActivitiesContext, clock: Clock
) -> None:
    with pytest.raises(StartsInPast):
        await activity(ctx, starts_at=clock.now)
    assert await events(ctx.db, "activity.created") == []
