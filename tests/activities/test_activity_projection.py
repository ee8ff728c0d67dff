"""The activities copy of connections is idempotent: replays and stale events change nothing."""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis

from services.common.consumer import decode_entry
from services.common.events import CONNECTIONS_STREAM, ConnectionEvent, Event
from services.common.outbox import encode

from ..api import Api, assert_problem
from .conftest import (
    Pair,
    about,
    connect,
    connected_pair,
    create,
    invite,
    invite_reply,
    listing,
    remove_connection,
    respond,
    stream_mark,
    wait_events,
)


async def connection_entries(
    redis: aioredis.Redis, connection_id: int
) -> dict[str, tuple[dict[bytes, bytes], Event]]:
    """The entries of `connections.events` about one connection, by event type."""
    found = {}
    for _, fields in await redis.xrange(CONNECTIONS_STREAM):
        event = decode_entry(fields)
        if not isinstance(event, ConnectionEvent):
            continue  # e.g. a type this code does not know, put there by another test
        if event.data.connection.id == connection_id:
            found[event.type] = (fields, event)
    return found


async def republish(redis: aioredis.Redis, event: Event, **update: object) -> Event:
    """XADD a copy of `event` (with `update` applied) to `connections.events`."""
    copy = event.model_copy(update=update)
    data = await encode(copy.to_json(), event_id=str(copy.event_id), event_type=copy.type)
    await redis.xadd(CONNECTIONS_STREAM, {"__data__": data})
    return copy


async def settle(api: Api, pair: Pair) -> None:
    """A barrier: the client's list waits until activities has read every connection event,
    and a create replies once its event is out, so events staged before it are out too."""
    await listing(api, pair.client)
    await create(api, pair.professional, title="Barrier")


async def removed_pair(api: Api, redis: aioredis.Redis) -> tuple[Pair, dict, dict, str]:
    """A pair with one cancelled-by-removal invite and one accepted invite."""
    pair = await connected_pair(api)
    pending_activity = await create(api, pair.professional, title="Pending")
    accepted_activity = await create(api, pair.professional, title="Accepted")
    cancelled = await invite(api, pair.professional, pending_activity["id"], pair.client)
    accepted = await invite(api, pair.professional, accepted_activity["id"], pair.client)
    accepted = await respond(api, pair.client, accepted["id"], "accept")
    mark = await stream_mark(redis)
    await remove_connection(api, pair.client, pair.connection_id)
    statuses = {i["id"]: i["status"] for i in await listing(api, pair.client)}
    assert statuses == {cancelled["id"]: "cancelled", accepted["id"]: "accepted"}
    return pair, cancelled, accepted, mark


async def test_replayed_removal_and_stale_accept_change_nothing(
    api: Api, stack_redis: aioredis.Redis
) -> None:
    pair, cancelled, accepted, mark = await removed_pair(api, stack_redis)
    activity_ids = (cancelled["activity"]["id"], accepted["activity"]["id"])
    [first] = await wait_events(stack_redis, mark, about(*activity_ids), 1)
    assert first.type == "activity.invite_cancelled"
    before = await listing(api, pair.client)

    entries = await connection_entries(stack_redis, pair.connection_id)
    removed_fields, _ = entries["connection.removed"]
    _, accepted_event = entries["connection.accepted"]
    # The very same entry again (same event_id), and an older state under a new event_id.
    await stack_redis.xadd(CONNECTIONS_STREAM, removed_fields)
    await republish(stack_redis, accepted_event, event_id=uuid.uuid4())
    await settle(api, pair)

    assert await listing(api, pair.client) == before
    events = await wait_events(stack_redis, mark, about(*activity_ids), 1)
    assert [e.event_id for e in events] == [first.event_id]
    # The stale "accepted" did not bring the connection back.
    fresh = await create(api, pair.professional, title="After replay")
    assert_problem(
        await invite_reply(api, pair.professional, fresh["id"], pair.client.id),
        403,
        "not_connected",
    )
    [mine] = [a for a in await listing(api, pair.professional) if a["id"] == activity_ids[1]]
    assert mine["invites"] == {"pending": 0, "accepted": 1, "declined": 0}


async def test_replayed_removal_spares_a_new_connections_invites(
    api: Api, stack_redis: aioredis.Redis
) -> None:
    """At-least-once: a removal handled again (its dedup mark lost, so under a new
    event_id here) must not cancel invites made since, under a new connection."""
    pair, cancelled, _, mark = await removed_pair(api, stack_redis)
    await connect(api, pair.professional, pair.client)
    again = await invite(api, pair.professional, cancelled["activity"]["id"], pair.client)

    _, removed_event = (await connection_entries(stack_redis, pair.connection_id))[
        "connection.removed"
    ]
    await republish(stack_redis, removed_event, event_id=uuid.uuid4())
    await settle(api, pair)

    statuses = {i["id"]: i["status"] for i in await listing(api, pair.client)}
    assert statuses[again["id"]] == "pending"
    assert statuses[cancelled["id"]] == "cancelled"
    events = await wait_events(stack_redis, mark, about(cancelled["activity"]["id"]), 1)
    cancellations = [e for e in events if e.type == "activity.invite_cancelled"]
    assert [e.data.invite.id for e in cancellations] == [cancelled["id"]]


async def test_late_first_removal_of_an_older_connection_spares_the_pairs_invites(
    api: Api, stack_redis: aioredis.Redis
) -> None:
    """A removal of another connection of the same pair, seen for the first time after a
    newer connection between them was accepted, cancels nothing of the newer one."""
    pair, cancelled, _, mark = await removed_pair(api, stack_redis)
    await connect(api, pair.professional, pair.client)
    again = await invite(api, pair.professional, cancelled["activity"]["id"], pair.client)

    _, removed_event = (await connection_entries(stack_redis, pair.connection_id))[
        "connection.removed"
    ]
    older = removed_event.data.connection.model_copy(update={"id": 10**9})
    data = removed_event.data.model_copy(update={"connection": older})
    await republish(stack_redis, removed_event, event_id=uuid.uuid4(), data=data)
    await settle(api, pair)

    statuses = {i["id"]: i["status"] for i in await listing(api, pair.client)}
    assert statuses[again["id"]] == "pending"
    events = await wait_events(stack_redis, mark, about(cancelled["activity"]["id"]), 1)
    cancellations = [e for e in events if e.type == "activity.invite_cancelled"]
    assert [e.data.invite.id for e in cancellations] == [cancelled["id"]]
