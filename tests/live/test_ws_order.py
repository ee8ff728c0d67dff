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
    stack_lease,
)


def _lease_losses(live: LiveStack) -> int:
    """How often the stack's gateway logged that it stood down as the notifier."""
    text = live.stack.log_path("gateway").read_text(errors="replace")
    return text.count("notifier lease lost; standing by")


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
    # A gateway that led until now logs that it lost the lease; one that did not cannot
    # take it while we hold it.
    losses = _lease_losses(live)
    holder = await live_redis.set(LEADER_KEY, "test-holds-the-lease", px=30_000, get=True)

    async def standing_by() -> bool:
        return _lease_losses(live) > losses

    try:
        if holder is not None and holder.decode() == stack_lease(live.stack):
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
