"""Resuming with `?since=`: missed entries then live ones, races, the reset, duplicate events."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import redis.asyncio as aioredis

from services.common.consumer import decode_entry, wait_caught_up
from services.common.events import ACTIVITIES_STREAM

from ..api import Api
from ..stack import Stack
from .live_support import (
    SETTLE,
    Sockets,
    assert_increasing,
    assert_notification,
    connect_pair,
    create_activity,
    entry_fields,
    full_log,
    id_key,
    invite,
    publish,
    synthetic_invite,
    wait_log,
)


def decode_entry_data(fields: dict[bytes, bytes]) -> dict[str, Any]:
    """The `data` of one entry of a notification log."""
    return json.loads(fields[b"data"])


def seqs(messages: list[dict[str, Any]]) -> list[int]:
    """The invite ids of synthetic notifications (their publication order)."""
    return [m["data"]["invite"]["id"] for m in messages]


async def test_reconnect_with_since_gets_the_missed_then_live(
    api: Api, stack: Stack, sockets: Sockets
) -> None:
    pro, client = await asyncio.gather(api.signup("professional"), api.signup("client"))
    await connect_pair(api, pro, client)
    activities = [await create_activity(api, pro, title=f"A{n}") for n in range(7)]
    url = stack.gateway_url

    first = await sockets.open(url, client, label="first")
    for activity in activities[:2]:
        await invite(api, pro, activity["id"], client)
    await first.wait_count(2)
    await first.close()
    last_seen = first.messages[-1]["id"]

    missed = [await invite(api, pro, a["id"], client) for a in activities[2:5]]
    second = await sockets.open(url, client, since=last_seen, label="second")
    await second.wait_count(3)
    for message, made in zip(second.messages, missed, strict=True):
        assert_notification(message, "activity.invited", {"invite": made})
    live = [await invite(api, pro, a["id"], client) for a in activities[5:]]
    await second.wait_count(5)
    await asyncio.sleep(SETTLE)
    assert len(second.messages) == 5
    for message, made in zip(second.messages[3:], live, strict=True):
        assert_notification(message, "activity.invited", {"invite": made})
    assert_increasing(first.messages + second.messages)
    assert second.messages == await full_log(api, client, since=last_seen)
    # A socket opened with the newest id as `since` gets nothing old.
    caught_up = await sockets.open(url, client, since=second.messages[-1]["id"], label="third")
    await asyncio.sleep(SETTLE)
    assert caught_up.messages == []


async def _burst(
    redis: aioredis.Redis, user_id: int, start: int, count: int, group: int = 10
) -> None:
    """`count` notifications for `user_id`, published in groups a few ms apart."""
    for offset in range(0, count, group):
        ids = range(start + offset, start + min(offset + group, count))
        await publish(redis, [synthetic_invite([user_id], n) for n in ids])
        await asyncio.sleep(0.003)


async def test_reconnect_racing_a_burst_misses_nothing_and_repeats_nothing(
    api: Api, stack: Stack, sockets: Sockets, shared_redis: aioredis.Redis
) -> None:
    # Backlogs of several sizes: none, under one replay batch, over one (500); bursts
    # under and over what a socket holds while its replay runs (256).
    for backlog, burst, group in ((0, 120, 10), (150, 120, 10), (600, 120, 10), (500, 480, 480)):
        user = await api.signup("client")
        await publish(shared_redis, [synthetic_invite([user.id], n) for n in range(backlog + 1)])
        log = await wait_log(api, user, backlog + 1)
        since = log[0]["id"]
        opened, _ = await asyncio.gather(
            sockets.open(stack.gateway_url, user, since=since, label=f"backlog{backlog}"),
            _burst(shared_redis, user.id, backlog + 1, burst, group),
        )
        total = backlog + burst
        await opened.wait_count(total, within=15)
        await asyncio.sleep(SETTLE)
        assert len(opened.messages) == total, backlog
        assert seqs(opened.messages) == list(range(1, total + 1)), backlog
        assert not opened.closed
        assert_increasing(opened.messages)
        assert opened.messages == await full_log(api, user, since=since)
        await opened.close()


async def test_since_older_than_the_log_starts_with_a_reset(
    api: Api, stack: Stack, sockets: Sockets, shared_redis: aioredis.Redis
) -> None:
    user = await api.signup("client")
    await publish(shared_redis, [synthetic_invite([user.id], n) for n in range(10)])
    first_id = (await wait_log(api, user, 10))[0]["id"]
    await publish(shared_redis, [synthetic_invite([user.id], n) for n in range(10, 1050)])

    async def newest() -> int:
        [last] = await shared_redis.xrevrange(f"notifications:{user.id}", count=1)
        return int(decode_entry_data(last[1])["invite"]["id"])

    deadline = asyncio.get_running_loop().time() + 20
    while await newest() != 1049:
        assert asyncio.get_running_loop().time() < deadline, "the notifier fell behind"
        await asyncio.sleep(0.1)
    held = await full_log(api, user)  # read once the log stopped changing
    assert len(held) == 1000  # the log is capped at 1,000 entries, oldest trimmed first
    assert seqs(held) == list(range(50, 1050))
    assert id_key(first_id) < id_key(held[0]["id"])

    sock = await sockets.open(stack.gateway_url, user, since=first_id, label="gap")
    await sock.wait_count(1001, within=15)
    assert sock.messages[0] == {"type": "reset", "id": held[0]["id"]}
    assert sock.messages[1:] == held
    # The newest trimmed id: the client saw everything before the oldest held, no reset.
    trimmed = (await shared_redis.get(f"notifications:{user.id}:trimmed")).decode()
    assert id_key(first_id) < id_key(trimmed) < id_key(held[0]["id"])
    from_trimmed = await sockets.open(stack.gateway_url, user, since=trimmed, label="edge")
    from_oldest = await sockets.open(stack.gateway_url, user, since=held[0]["id"], label="held")
    await from_trimmed.wait_count(1000, within=15)
    await from_oldest.wait_count(999, within=15)
    await asyncio.sleep(SETTLE)
    assert from_trimmed.messages == held
    assert from_oldest.messages == held[1:]
    assert len(sock.messages) == 1001


async def test_duplicate_event_delivery_notifies_once(
    api: Api, stack: Stack, sockets: Sockets, shared_redis: aioredis.Redis
) -> None:
    pro, client = await asyncio.gather(api.signup("professional"), api.signup("client"))
    await connect_pair(api, pro, client)
    first, second = [await create_activity(api, pro, title=t) for t in ("Once", "Marker")]
    sock = await sockets.open(stack.gateway_url, client, label="client")
    made = await invite(api, pro, first["id"], client)
    [message] = await sock.wait_count(1)
    assert_notification(message, "activity.invited", {"invite": made})

    # The very entry the activities relay published, appended again (same event_id).
    entries = await shared_redis.xrevrange(ACTIVITIES_STREAM, count=200)
    original = next(
        fields
        for _, fields in entries
        if (event := decode_entry(fields)).type == "activity.invited"
        and event.recipient_ids == [client.id]
        and event.data.invite.id == made["id"]
    )
    event_id = str(decode_entry(original).event_id)
    await shared_redis.xadd(ACTIVITIES_STREAM, original)
    # A synthetic event appended twice in one go counts once as well.
    twice = synthetic_invite([client.id], 77)
    fields = await entry_fields(twice)
    async with shared_redis.pipeline(transaction=False) as pipe:
        pipe.xadd(ACTIVITIES_STREAM, fields)
        pipe.xadd(ACTIVITIES_STREAM, fields)
        await pipe.execute()
    assert await wait_caught_up(
        shared_redis, group="notifier", streams=[ACTIVITIES_STREAM], within=10
    )
    marker = await invite(api, pro, second["id"], client)
    await sock.wait_count(3)
    await asyncio.sleep(SETTLE)
    assert [m["type"] for m in sock.messages] == ["activity.invited"] * 3
    assert sock.messages[1]["data"]["invite"]["id"] == 77
    assert_notification(sock.messages[2], "activity.invited", {"invite": marker})
    log = await full_log(api, client)
    assert [m["type"] for m in log[:1]] == ["connection.accepted"]
    assert log[1:] == sock.messages
    raw = await shared_redis.xrange(f"notifications:{client.id}")
    logged = [fields[b"event_id"].decode() for _, fields in raw]
    assert logged.count(event_id) == 1 and logged.count(str(twice.event_id)) == 1
    assert len(logged) == len(set(logged)) == 4
