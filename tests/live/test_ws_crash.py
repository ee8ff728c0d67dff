"""A notifier killed mid-work: after a restart every notification is in its log exactly once."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from gateway.notifier import CONSUMER, GROUP, Notifier
from services.common.consumer import decode_entry, wait_caught_up
from services.common.events import ACTIVITIES_STREAM, CONNECTIONS_STREAM

from ..api import Account, Api
from .conftest import LiveStack
from .live_support import (
    SETTLE,
    Sockets,
    answer_connection,
    assert_increasing,
    entry_fields,
    eventually,
    full_log,
    request_pro,
    synthetic_invite,
)

STREAMS = [CONNECTIONS_STREAM, ACTIVITIES_STREAM]


async def logged_event_ids(client: aioredis.Redis, user: Account) -> list[str]:
    """The `event_id` of every entry of the user's log, oldest first."""
    entries = await client.xrange(f"notifications:{user.id}")
    return [fields[b"event_id"].decode() for _, fields in entries]


async def events_for(client: aioredis.Redis, user: Account) -> set[str]:
    """The ids of the events on the streams that name `user` as a recipient."""
    found = set()
    for stream in STREAMS:
        for _, fields in await client.xrange(stream):
            event = decode_entry(fields)
            if user.id in event.recipient_ids:
                found.add(str(event.event_id))
    return found


async def request_and_reject(api: Api, client: Account, pro: Account, times: int) -> None:
    for _ in range(times):
        asked = await request_pro(api, client, pro)
        await answer_connection(api, pro, asked["id"], "reject")


async def pending(client: aioredis.Redis) -> int:
    total = 0
    for stream in STREAMS:
        total += (await client.xpending(stream, GROUP))["pending"]
    return total


async def test_sigkill_mid_burst_loses_and_repeats_nothing(
    live: LiveStack, live_api: Api, live_redis: aioredis.Redis, sockets: Sockets
) -> None:
    api = live_api
    pro = await api.signup("professional")
    clients = await asyncio.gather(*(api.signup("client") for _ in range(5)))
    sock = await sockets.open(live.url, pro, label="pro")

    # 50 changes, five clients at a time: 25 requests (to the professional) and 25
    # rejections (to the clients)...
    await asyncio.gather(*(request_and_reject(api, c, pro, 5) for c in clients))
    # ...and, right behind them, a burst the notifier is still working through when the
    # gateway is killed.
    burst = [synthetic_invite([pro.id, clients[0].id], n) for n in range(400)]
    fields = [await entry_fields(e) for e in burst]
    async with live_redis.pipeline(transaction=False) as pipe:
        for entry in fields:
            pipe.xadd(ACTIVITIES_STREAM, entry)
        await pipe.execute()

    async def busy() -> bool:
        return await live_redis.xlen(f"notifications:{pro.id}") >= 25 + 40

    await eventually(busy, within=10, what="the notifier started on the burst")
    gateway = live.stack.procs["gateway"]
    gateway.send_signal(signal.SIGKILL)
    await asyncio.to_thread(gateway.wait, 5)
    in_flight = await pending(live_redis)
    appended = await live_redis.xlen(f"notifications:{pro.id}")
    assert await sock.wait_closed(within=5) is not None
    assert in_flight > 0 or appended < 425, "the kill came after all the work was done"

    await asyncio.to_thread(live.make_whole)
    assert await wait_caught_up(live_redis, group=GROUP, streams=STREAMS, within=20)

    for user, count in [(pro, 425), (clients[0], 405), *[(c, 5) for c in clients[1:]]]:
        ids = await logged_event_ids(live_redis, user)
        assert len(ids) == count, (user.id, len(ids), count)
        repeated = [i for i, n in Counter(ids).items() if n > 1]
        assert not repeated, repeated
        assert set(ids) == await events_for(live_redis, user), user.id
    assert await pending(live_redis) == 0

    # The socket that died with the gateway resumes where it stopped: no gap, no repeat.
    last = sock.messages[-1]["id"] if sock.messages else "0"
    again = await sockets.open(live.url, pro, since=last, label="pro-again")
    await again.wait_count(425 - len(sock.messages), within=15)
    await asyncio.sleep(SETTLE)
    union = sock.messages + again.messages
    assert_increasing(union)
    assert union == await full_log(api, pro)


async def test_appended_but_not_acknowledged_is_not_appended_again(
    live: LiveStack,
    live_api: Api,
    live_redis: aioredis.Redis,
    http: aiohttp.ClientSession,
) -> None:
    """The exact window: the entry is read and its notification appended, then the
    notifier dies before XACK. Reproduced step by step with the notifier's own code while
    the gateway is down; the restarted gateway re-handles the entry and appends nothing."""
    user = await live_api.signup("client")
    assert await wait_caught_up(live_redis, group=GROUP, streams=STREAMS, within=10)
    gateway = live.stack.procs["gateway"]
    gateway.send_signal(signal.SIGKILL)
    await asyncio.to_thread(gateway.wait, 5)

    event = synthetic_invite([user.id], 1)
    entry_id = (await live_redis.xadd(ACTIVITIES_STREAM, await entry_fields(event))).decode()
    reply: Any = await live_redis.xreadgroup(GROUP, CONSUMER, {ACTIVITIES_STREAM: ">"})
    [(_, [(read_id, fields)])] = reply
    assert read_id.decode() == entry_id
    await Notifier(live_redis, instance="test-crash").notify(decode_entry(fields))
    assert await logged_event_ids(live_redis, user) == [str(event.event_id)]
    assert (await live_redis.xpending(ACTIVITIES_STREAM, GROUP))["pending"] >= 1

    await asyncio.to_thread(live.make_whole)
    assert await wait_caught_up(live_redis, group=GROUP, streams=STREAMS, within=20)
    assert await logged_event_ids(live_redis, user) == [str(event.event_id)]
    log = await full_log(Api(http, live.url, live.stack.inbox), user)
    assert [m["data"]["invite"]["id"] for m in log] == [1]
