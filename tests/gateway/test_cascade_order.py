"""The notifier's per-user order with cascades: a removal's cancelled invites keep their
place in the client's log however late activities publishes them (CascadeOrder in-process,
then the notifier on a real Redis, entries as the relays write them)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator

import pytest_asyncio
import redis.asyncio as aioredis

from gateway.notifier import CascadeOrder, Notifier, log_key
from services.common.events import (
    ACTIVITIES_STREAM,
    CONNECTIONS_STREAM,
    ActivityInviteCancelled,
    ActivityInvited,
    ActivitySummary,
    ConnectionData,
    ConnectionEvent,
    ConnectionInvited,
    ConnectionPayload,
    ConnectionRemovalApplied,
    ConnectionRemoved,
    Event,
    InviteData,
    InvitePayload,
    Party,
    RemovalAppliedData,
    RemovalAppliedPayload,
)
from services.common.outbox import encode, position_key

from ..api import eventually
from ..infra import RedisServer

PRO, CLIENT, OTHER = 1, 2, 3
T0 = dt.datetime(2026, 12, 4, 9, 0, tzinfo=dt.UTC)


def connection_event(
    cls: type[ConnectionEvent], conn_id: int, *, client: int = CLIENT, to: int = PRO
) -> ConnectionEvent:
    data = ConnectionData(
        id=conn_id,
        status="removed" if cls is ConnectionRemoved else "pending",
        initiated_by="professional",
        professional=Party(id=PRO, name="Dr Ada", email="ada@example.com"),
        client=Party(id=client, name="Bob", email="bob@example.com"),
        created_at=T0,
        updated_at=T0,
    )
    return cls(data=ConnectionPayload(connection=data), recipient_ids=[to])


def invite(invite_id: int, status: str = "pending", client: int = CLIENT) -> InviteData:
    activity = ActivitySummary(
        id=5,
        professional_id=PRO,
        title="Group",
        description="",
        starts_at=None,
        capacity=None,
        created_at=T0,
    )
    return InviteData(
        id=invite_id,
        status=status,
        client_id=client,
        activity=activity,
        created_at=T0,
        updated_at=T0,
    )


def cancelled(invite_id: int, cause: Event) -> ActivityInviteCancelled:
    return ActivityInviteCancelled(
        data=InvitePayload(invite=invite(invite_id, "cancelled")),
        recipient_ids=[CLIENT],
        caused_by=cause.event_id,
    )


def applied(cause: Event, *invites: int) -> ConnectionRemovalApplied:
    removal = RemovalAppliedData(connection_id=7, invite_ids=list(invites))
    return ConnectionRemovalApplied(
        data=RemovalAppliedPayload(removal=removal), caused_by=cause.event_id
    )


def invited(invite_id: int, client: int = CLIENT) -> ActivityInvited:
    return ActivityInvited(
        data=InvitePayload(invite=invite(invite_id, client=client)), recipient_ids=[client]
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def feed(order: CascadeOrder, *events: Event) -> list[Event]:
    out: list[Event] = []
    for event in events:
        ready, _ = order.offer(event)
        out += ready
    return out


def test_without_cascades_everything_goes_at_once_in_order() -> None:
    order = CascadeOrder()
    events = [invited(1), invited(2, client=OTHER), connection_event(ConnectionInvited, 8)]
    assert feed(order, *events) == events
    assert order.waiting() == 0


def test_a_removals_consequences_come_before_the_clients_later_notifications() -> None:
    order = CascadeOrder()
    removal = connection_event(ConnectionRemoved, 7)  # the client removed it: to the pro
    later = connection_event(ConnectionInvited, 8, to=CLIENT)  # the pro invites again
    elsewhere = invited(20, client=OTHER)
    cancel = cancelled(9, removal)
    done = applied(removal, 9)
    assert feed(order, removal) == [removal]  # its own notification goes at once
    assert order.holds(str(removal.event_id))
    assert feed(order, later) == []  # the client's next one waits for the cascade
    assert feed(order, elsewhere) == [elsewhere]  # nobody else waits
    assert feed(order, cancel) == [cancel]  # into its slot: before `later`
    ready, closed = order.offer(done)
    assert ready == [later]
    assert closed == [str(removal.event_id)]
    assert not order.holds(str(removal.event_id))
    assert order.waiting() == 0


def test_an_event_waits_when_any_of_its_recipients_waits() -> None:
    order = CascadeOrder()
    removal = connection_event(ConnectionRemoved, 7)
    to_both = ActivityInvited(data=InvitePayload(invite=invite(30)), recipient_ids=[CLIENT, OTHER])
    then_other = invited(31, client=OTHER)
    feed(order, removal)
    # OTHER's next notification must not overtake the one shared with the waiting client.
    assert feed(order, to_both, then_other) == []
    ready, _ = order.offer(applied(removal))
    assert ready == [to_both, then_other]


def test_a_completion_seen_before_its_cause_holds_nothing() -> None:
    order = CascadeOrder()
    removal = connection_event(ConnectionRemoved, 7)
    later = connection_event(ConnectionInvited, 8, to=CLIENT)
    assert feed(order, applied(removal)) == []
    assert feed(order, removal, later) == [removal, later]
    assert not order.holds(str(removal.event_id))


def test_a_cascade_that_never_comes_holds_its_users_only_so_long() -> None:
    clock = Clock()
    order = CascadeOrder(wait_seconds=30, clock=clock)
    removal = connection_event(ConnectionRemoved, 7)
    later = connection_event(ConnectionInvited, 8, to=CLIENT)
    feed(order, removal, later)
    clock.now = 31
    ready, closed = order.offer(invited(40, client=OTHER))
    assert ready[0] is later
    assert closed == [str(removal.event_id)]


def test_a_second_copy_of_an_event_is_taken_once() -> None:
    order = CascadeOrder()
    removal = connection_event(ConnectionRemoved, 7)
    later = connection_event(ConnectionInvited, 8, to=CLIENT)
    assert feed(order, removal, later, removal, later) == [removal]
    ready, _ = order.offer(applied(removal))
    assert ready == [later]


def test_a_removal_of_an_unbound_invitation_holds_nobody() -> None:
    order = CascadeOrder()
    removal = connection_event(ConnectionRemoved, 7)
    unbound = removal.model_copy(
        update={
            "data": ConnectionPayload(
                connection=removal.data.connection.model_copy(
                    update={"client": Party(id=None, name=None, email="new@example.com")}
                )
            )
        }
    )
    assert feed(order, unbound) == [unbound]
    assert not order.holds(str(unbound.event_id))


# --- the notifier on a real Redis ------------------------------------------------------


@pytest_asyncio.fixture
async def redis_client(own_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(own_redis.url)
    yield client
    await client.aclose()


async def relay(redis: aioredis.Redis, stream: str, event: Event, row: int) -> None:
    """XADD as a relay does: the FastStream frame, the outbox row, the position key."""
    data = await encode(event.to_json(), event_id=str(event.event_id), event_type=event.type)
    await redis.xadd(stream, {"__data__": data, "row": str(row)})
    await redis.set(position_key(stream), row)


async def log_types(redis: aioredis.Redis, user: int) -> list[tuple[str, int]]:
    import orjson

    entries = await redis.xrange(log_key(user))
    out = []
    for _, fields in entries:
        data = orjson.loads(fields[b"data"])
        thing = data.get("invite") or data.get("connection") or {}
        out.append((fields[b"type"].decode(), thing.get("id")))
    return out


async def cascade_then_the_held_one(
    redis: aioredis.Redis, removal: Event, *, first_row: int
) -> None:
    """Activities publishes the removal's cancellation and its completion: the client's log
    then has the cancellation first, then the invitation that waited behind it."""
    await relay(redis, ACTIVITIES_STREAM, cancelled(9, removal), first_row)
    await relay(redis, ACTIVITIES_STREAM, applied(removal, 9), first_row + 1)

    async def both() -> list[tuple[str, int]] | None:
        found = await log_types(redis, CLIENT)
        return found if len(found) == 2 else None

    assert await eventually(both) == [
        ("activity.invite_cancelled", 9),
        ("connection.invited", 8),
    ]


async def test_the_notifier_puts_a_late_cascade_in_its_place(
    redis_client: aioredis.Redis,
) -> None:
    notifier = Notifier(redis_client, instance="t", claim_idle_ms=200)
    task = asyncio.create_task(notifier.consumer.run())
    try:
        removal = connection_event(ConnectionRemoved, 7)
        await relay(redis_client, CONNECTIONS_STREAM, removal, 1)
        await eventually(lambda: log_types(redis_client, PRO))
        # The pro invites the client again before activities got to the removal.
        again = connection_event(ConnectionInvited, 8, to=CLIENT)
        await relay(redis_client, CONNECTIONS_STREAM, again, 2)
        await relay(redis_client, ACTIVITIES_STREAM, invited(50, client=OTHER), 1)
        await eventually(lambda: log_types(redis_client, OTHER))
        assert await log_types(redis_client, CLIENT) == []  # held behind the cascade
        await asyncio.sleep(0.5)  # past claim_idle_ms: a reclaim must not hand it over
        assert await log_types(redis_client, CLIENT) == []
        await cascade_then_the_held_one(redis_client, removal, first_row=2)

        async def settled() -> bool:
            groups = {
                s: await redis_client.xpending(s, "notifier")
                for s in (CONNECTIONS_STREAM, ACTIVITIES_STREAM)
            }
            return all(g["pending"] == 0 for g in groups.values())

        await eventually(settled)  # everything acknowledged once its turn came
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_restarted_notifier_rebuilds_what_it_held(
    redis_client: aioredis.Redis,
) -> None:
    """Held entries stay pending: a notifier that dies with a cascade open holds the same
    notifications after its restart, and appends nothing twice."""
    removal = connection_event(ConnectionRemoved, 7)
    later = connection_event(ConnectionInvited, 8, to=CLIENT)
    first = Notifier(redis_client, instance="a", claim_idle_ms=200)
    task = asyncio.create_task(first.consumer.run())
    try:
        await relay(redis_client, CONNECTIONS_STREAM, removal, 1)
        await relay(redis_client, CONNECTIONS_STREAM, later, 2)
        await eventually(lambda: log_types(redis_client, PRO))
        await eventually(lambda: asyncio.sleep(0, first.order.waiting() == 1))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    second = Notifier(redis_client, instance="b", claim_idle_ms=200)
    task = asyncio.create_task(second.consumer.run())
    try:
        await eventually(lambda: asyncio.sleep(0, second.order.waiting() == 1))
        assert await log_types(redis_client, CLIENT) == []
        await cascade_then_the_held_one(redis_client, removal, first_row=1)
        assert await log_types(redis_client, PRO) == [("connection.removed", 7)]  # once
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_change_answered_before_its_event_was_out_is_read_first(
    redis_client: aioredis.Redis,
) -> None:
    """A decline answered while Redis was down (its row not on activities.events yet), then
    a connection change committed later: the notifier waits for the decline's row, and the
    entries merge by commit time, so the client's log has them in the order they happened."""
    unpublished: dict[str, int] = {}
    notifier = Notifier(redis_client, instance="t", unpublished=lambda: unpublished)
    task = asyncio.create_task(notifier.consumer.run())
    try:
        earlier = invited(60)
        later = connection_event(ConnectionInvited, 8, to=CLIENT)
        unpublished[ACTIVITIES_STREAM] = 5  # answered, not on the stream yet
        now_ms = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
        data = await encode(later.to_json(), event_id=str(later.event_id), event_type=later.type)
        await redis_client.xadd(
            CONNECTIONS_STREAM, {"__data__": data, "row": "3"}, id=f"{now_ms}-*"
        )
        await asyncio.sleep(0.3)
        assert await log_types(redis_client, CLIENT) == []  # waiting for row 5
        data = await encode(
            earlier.to_json(), event_id=str(earlier.event_id), event_type=earlier.type
        )
        await redis_client.xadd(
            ACTIVITIES_STREAM, {"__data__": data, "row": "5"}, id=f"{now_ms - 1000}-*"
        )
        await redis_client.set(position_key(ACTIVITIES_STREAM), 5)

        async def both() -> list[tuple[str, int]] | None:
            found = await log_types(redis_client, CLIENT)
            return found if len(found) == 2 else None

        assert await eventually(both) == [("activity.invited", 60), ("connection.invited", 8)]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
