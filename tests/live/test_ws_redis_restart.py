"""Redis trouble: after a restart (AOF) or a dropped pub/sub link, nothing is lost or repeated."""

from __future__ import annotations

import asyncio

import aiohttp
import redis.asyncio as aioredis

from ..api import Api, eventually, unique_email
from .conftest import LiveStack
from .live_support import (
    SETTLE,
    Sockets,
    answer_connection,
    assert_increasing,
    assert_notification,
    connect_pair,
    connections_of,
    full_log,
    invite_client,
    publish,
    request_pro,
    synthetic_invite,
    wait_log,
)


async def test_logs_survive_and_missed_notifications_arrive_after_a_restart(
    live: LiveStack, live_api: Api, http: aiohttp.ClientSession, sockets: Sockets
) -> None:
    api = live_api
    pro, client = await asyncio.gather(api.signup("professional"), api.signup("client"))
    pro_s = await sockets.open(live.url, pro, label="pro")
    client_s = await sockets.open(live.url, client, label="client")
    await connect_pair(api, pro, client)
    await pro_s.wait_count(1)
    await client_s.wait_count(1)
    email = unique_email("during-outage")
    waiting = await invite_client(api, pro, email)
    before = {pro.id: await full_log(api, pro), client.id: await full_log(api, client)}

    await asyncio.to_thread(live.redis.stop)
    try:
        # Public routes that need no token check still work, and their events wait in
        # the outbox: the invitee signs up while Redis is down.
        newcomer = await api.signup("client", email=email)
        down = await api.call("GET", "/api/notifications", token=pro.token)
        assert down.status == 503, down.text
    finally:
        await asyncio.to_thread(live.redis.start)

    # Everything in the logs before the outage is still there (AOF).
    assert await full_log(api, pro) == before[pro.id]
    assert await full_log(api, client) == before[client.id]

    # The sockets that lived through the outage, or new ones resuming with `since=`,
    # get what happened meanwhile once Redis is back.
    fresh = await sockets.open(live.url, newcomer, since="0", label="newcomer")
    [message] = await fresh.wait_count(1, within=20)

    # The first call to a service right after Redis came back may meet a pooled
    # connection that died with it: 503 with Retry-After, as API.md allows; the retry
    # goes through.
    async def listed() -> bool:
        reply = await api.call("GET", "/api/connection/list", token=newcomer.token)
        assert reply.status in (200, 503), reply.text
        return reply.status == 200

    await eventually(listed, within=10)
    [bound] = await connections_of(api, newcomer)
    assert bound["id"] == waiting["id"]
    assert_notification(message, "connection.invited", {"connection": bound})

    resumed = await sockets.open(live.url, pro, since=before[pro.id][-1]["id"], label="pro-2")
    accepted = await answer_connection(api, newcomer, bound["id"], "accept")
    other = await api.signup("client")
    asked = await request_pro(api, other, pro)
    for sock in (resumed, pro_s):
        await sock.wait_count(2 if sock is resumed else 3, within=20)
    await asyncio.sleep(SETTLE)
    assert_notification(resumed.messages[0], "connection.accepted", {"connection": accepted})
    assert_notification(resumed.messages[1], "connection.requested", {"connection": asked})
    assert pro_s.messages[1:] == resumed.messages  # the old socket: no gap, no repeat
    assert_increasing(pro_s.messages)
    assert pro_s.messages == await wait_log(api, pro, 3)


async def test_entries_appended_while_the_signal_is_down_still_arrive(
    live: LiveStack, live_api: Api, live_redis: aioredis.Redis, sockets: Sockets
) -> None:
    """Pub/sub drops what is published while a subscriber is away: the replica re-reads
    each socket's log once it has subscribed again."""
    user = await live_api.signup("client")
    sock = await sockets.open(live.url, user, label="client")
    await publish(live_redis, [synthetic_invite([user.id], n) for n in range(5)])
    await sock.wait_count(5)
    killed = await live_redis.client_kill_filter(_type="pubsub")
    assert killed >= 1
    await publish(live_redis, [synthetic_invite([user.id], n) for n in range(5, 40)])
    await sock.wait_count(40, within=10)
    await asyncio.sleep(SETTLE)
    assert [m["data"]["invite"]["id"] for m in sock.messages] == list(range(40))
    assert_increasing(sock.messages)
    assert sock.messages == await full_log(live_api, user)
