"""A backlog spanning both event streams is delivered in the order the changes happened."""

from __future__ import annotations

import asyncio

import aiohttp
import redis.asyncio as aioredis

from gateway.notifier import RENEW_SECONDS

from ..api import Api
from .conftest import LiveStack
from .live_support import (
    LEADER_KEY,
    SETTLE,
    Sockets,
    activities_of,
    assert_increasing,
    assert_notification,
    connect_pair,
    connections_of,
    create_activity,
    eventually,
    full_log,
    invite,
    remove_connection,
)


async def test_backlog_across_streams_keeps_the_order_of_the_changes(
    live: LiveStack,
    live_api: Api,
    live_redis: aioredis.Redis,
    http: aiohttp.ClientSession,
    sockets: Sockets,
) -> None:
    api = live_api
    pro, client = await asyncio.gather(api.signup("professional"), api.signup("client"))
    connection_id = await connect_pair(api, pro, client)
    activity = await create_activity(api, pro)
    sock = await sockets.open(live.url, client, since="0", label="client")
    await sock.wait_count(1)  # connection.accepted

    # Hold the notifier lease ourselves: the gateway stops consuming (it lags), so the
    # next changes pile up on both streams as a backlog.
    await live_redis.set(LEADER_KEY, "test-holds-the-lease", px=30_000)

    async def standing_by() -> bool:
        health = await api.call("GET", "/api/health")
        return health.body["checks"]["notifications"]["leader"] is False

    try:
        await eventually(standing_by, within=10, what="the notifier stood by")
        # Any other holder (a replica started by an earlier test) notices at its next
        # renewal: wait one renewal period so nobody consumes.
        await asyncio.sleep(RENEW_SECONDS + 0.5)
        made = await invite(api, pro, activity["id"], client)  # activities.events
        await remove_connection(api, pro, connection_id)  # connections.events
        await asyncio.sleep(SETTLE)
        assert len(sock.messages) == 1  # nothing delivered while the notifier lags
    finally:
        await live_redis.delete(LEADER_KEY)

    await sock.wait_count(4, within=15)
    await asyncio.sleep(SETTLE)
    [removed] = await connections_of(api, client, "removed")
    [cancelled] = [i for i in await activities_of(api, client) if i["id"] == made["id"]]
    assert [m["type"] for m in sock.messages[1:]] == [
        "activity.invited",
        "connection.removed",
        "activity.invite_cancelled",
    ]
    assert_notification(sock.messages[1], "activity.invited", {"invite": made})
    assert_notification(sock.messages[2], "connection.removed", {"connection": removed})
    assert_notification(sock.messages[3], "activity.invite_cancelled", {"invite": cancelled})
    assert_increasing(sock.messages)
    assert sock.messages == await full_log(api, client)
