"""The users copy is idempotent: a redelivered `user.registered` changes and emits nothing."""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis

from services.common.consumer import decode_entry, wait_caught_up
from services.common.events import AUTH_STREAM, UserRegistered
from services.common.outbox import encode

from ..api import Account, Api, unique_email
from .conn_support import StreamWatch, answered, invite_client, listing, requested

GROUP = "connections"


async def registered_entry(watch: StreamWatch, user_id: int) -> dict[bytes, bytes]:
    """The raw `auth.events` entry of the `user.registered` event of `user_id`."""
    for _, fields in await watch.entries():
        event = decode_entry(fields)
        if isinstance(event, UserRegistered) and event.data.user.id == user_id:
            return fields
    raise AssertionError(f"no user.registered for user {user_id} on {AUTH_STREAM}")


async def caught_up(redis: aioredis.Redis) -> None:
    """The connections consumer has handled every entry on `auth.events` (the duplicate too)."""
    assert await wait_caught_up(redis, group=GROUP, streams=[AUTH_STREAM], within=5.0)


async def no_dead_letters(redis: aioredis.Redis, entry_id: bytes) -> None:
    dead = await redis.xrange(f"{AUTH_STREAM}.dead", min="-", max="+")
    assert not [f for _, f in dead if f.get(b"source_id") == entry_id]


async def email_invited_client(
    api: Api, stack_redis: aioredis.Redis
) -> tuple[Account, Account, dict, dict[bytes, bytes], StreamWatch]:
    """A professional's email invitation, bound by the sign-up of its addressee."""
    auth_watch = await StreamWatch.start(stack_redis, AUTH_STREAM)
    connections_watch = await StreamWatch.start(stack_redis, "connections.events")
    pro = await api.signup("professional")
    email = unique_email("dup")
    created = (await invite_client(api, pro, email)).body
    client = await api.signup("client", email=email)
    assert [c["id"] for c in await listing(api, client)] == [created["id"]]
    await connections_watch.wait_for(created["id"], 2)
    fields = await registered_entry(auth_watch, client.id)
    return pro, client, created, fields, connections_watch


async def test_redelivered_registration_same_event_id(api: Api, stack_redis) -> None:
    pro, client, created, fields, watch = await email_invited_client(api, stack_redis)
    before_client = await listing(api, client)
    before_pro = await listing(api, pro)

    entry_id = await stack_redis.xadd(AUTH_STREAM, fields)
    await caught_up(stack_redis)
    await no_dead_letters(stack_redis, entry_id)

    assert await listing(api, client) == before_client
    assert await listing(api, pro) == before_pro
    # A later change: its event follows any the duplicate could have caused (outbox order).
    accepted = await answered(api, client, created["id"], "accept")
    assert accepted["client"]["id"] == client.id
    assert await watch.wait_for(created["id"], 3) == [
        ("connection.invited", []),
        ("connection.invited", [client.id]),
        ("connection.accepted", [pro.id]),
    ]


async def test_redelivered_registration_new_event_id(api: Api, stack_redis) -> None:
    """Even past the consumer's dedup (a new event id, same user) the copy stays as it is."""
    pro, client, created, fields, watch = await email_invited_client(api, stack_redis)
    event = decode_entry(fields)
    again = event.model_copy(update={"event_id": uuid.uuid4()})
    data = await encode(again.to_json(), event_id=str(again.event_id), event_type=again.type)
    entry_id = await stack_redis.xadd(AUTH_STREAM, {"__data__": data})
    await caught_up(stack_redis)
    await no_dead_letters(stack_redis, entry_id)

    (mine,) = await listing(api, client)
    assert mine["id"] == created["id"] and mine["client"]["id"] == client.id
    assert [c["id"] for c in await listing(api, pro)] == [created["id"]]
    await answered(api, client, created["id"], "reject")
    assert await watch.wait_for(created["id"], 3) == [
        ("connection.invited", []),
        ("connection.invited", [client.id]),
        ("connection.rejected", [pro.id]),
    ]


async def test_redelivered_registration_of_a_connected_client(api: Api, stack_redis) -> None:
    """A request-pro client's registration delivered again: no event, no change."""
    auth_watch = await StreamWatch.start(stack_redis, AUTH_STREAM)
    client, pro = await api.signup("client"), await api.signup("professional")
    created = await requested(api, client, pro)
    connections_watch = await StreamWatch.start(stack_redis, "connections.events")
    for user_id in (client.id, pro.id):
        entry_id = await stack_redis.xadd(AUTH_STREAM, await registered_entry(auth_watch, user_id))
        await caught_up(stack_redis)
        await no_dead_letters(stack_redis, entry_id)
    assert await listing(api, client) == [created]
    assert await listing(api, pro) == [created]
    await answered(api, pro, created["id"], "accept")
    mine = [
        (e.type, e.data.connection.id)
        for e in await connections_watch.all()
        if e.type.startswith("connection.")
        and client.id in (e.data.connection.client.id, e.data.connection.professional.id)
    ]
    assert mine == [("connection.accepted", created["id"])]
