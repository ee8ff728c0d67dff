"""A bad or unknown event on connections.events slows nobody down and blocks nothing."""

from __future__ import annotations

import asyncio
import datetime as dt

import redis.asyncio as aioredis

from services.common.consumer import dead_letter_stream
from services.common.events import (
    CONNECTIONS_STREAM,
    ConnectionAccepted,
    ConnectionData,
    ConnectionPayload,
    Event,
    Party,
)
from services.common.outbox import encode

from ..api import Api
from .conftest import connect, create, invite_reply


async def _put(redis: aioredis.Redis, event: Event) -> None:
    data = await encode(event.to_json(), event_id=str(event.event_id), event_type=event.type)
    await redis.xadd(CONNECTIONS_STREAM, {"__data__": data})


def _poison() -> ConnectionAccepted:
    """A connection event no database can store (an id past 64 bits): its handler fails."""
    now = dt.datetime.now(dt.UTC)
    connection = ConnectionData(
        id=2**70,
        status="accepted",
        initiated_by="client",
        professional=Party(id=2**70, name="X", email="x@example.com"),
        client=Party(id=2**70, name="Y", email="y@example.com"),
        created_at=now,
        updated_at=now,
    )
    return ConnectionAccepted(data=ConnectionPayload(connection=connection))


async def test_a_failing_event_holds_up_no_invite(api: Api, stack_redis: aioredis.Redis) -> None:
    pro = await api.signup("professional")
    activity = await create(api, pro, title="Group")
    await _put(stack_redis, _poison())
    for _ in range(5):
        client = await api.signup("client")
        await connect(api, pro, client)  # published after the poison: handled past it
        reply = await invite_reply(api, pro, activity["id"], client.id)
        assert reply.status == 201, reply.text
    # Were the failing entry counted as in flight, every invite would wait out the
    # barrier's 1 s and answer 503 (the copy not confirmed current) until it is
    # dead-lettered minutes later: all five got through.


async def test_unknown_event_types_are_skipped_not_dead_lettered(
    api: Api, stack_redis: aioredis.Redis
) -> None:
    newer = Event(type="connection.archived", producer="connections", data={"connection": 1})
    dead_before = await stack_redis.xlen(dead_letter_stream(CONNECTIONS_STREAM))
    await _put(stack_redis, newer)
    pro = await api.signup("professional")
    client = await api.signup("client")
    await connect(api, pro, client)
    activity = await create(api, pro, title="Group")
    reply = await invite_reply(api, pro, activity["id"], client.id)
    assert reply.status == 201, reply.text
    await asyncio.sleep(0.5)
    for group in ("activities", "auth", "notifier"):
        pending = await stack_redis.xpending(CONNECTIONS_STREAM, group)
        ids = [
            p["message_id"]
            for p in await stack_redis.xpending_range(
                CONNECTIONS_STREAM, group, min="-", max="+", count=100
            )
        ]
        assert pending["pending"] == len(ids)
        # The unknown entry is acknowledged by every group (nothing left but the poison
        # of the other test, which is being retried).
        for entry_id in ids:
            [(_, fields)] = await stack_redis.xrange(CONNECTIONS_STREAM, entry_id, entry_id)
            assert b"connection.archived" not in fields[b"__data__"], group
    assert await stack_redis.xlen(dead_letter_stream(CONNECTIONS_STREAM)) == dead_before
