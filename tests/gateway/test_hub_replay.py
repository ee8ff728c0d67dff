"""A replay that live notifications outrun: what the socket could not hold comes from the log."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
import redis.asyncio as aioredis

from gateway.hub import QUEUE_SIZE, Conn, Hub
from gateway.notifier import log_key
from services.common.tokens import Identity

from ..infra import RedisServer

USER = 7


class RecordingSocket:
    """Stands in for the WebSocket: records frames; `during_first_send` runs once."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.closed = False
        self.during_first_send = None

    async def send_str(self, text: str) -> None:
        self.frames.append(text)
        if self.during_first_send is not None:
            hook, self.during_first_send = self.during_first_send, None
            await hook()

    async def close(self, **_: object) -> None:
        self.closed = True


@pytest_asyncio.fixture
async def redis(own_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(own_redis.url)
    yield client
    await client.aclose()


async def append(redis: aioredis.Redis, n: int) -> str:
    fields = {"type": "activity.invited", "occurred_at": "2026-11-24T00:00:00.000Z"}
    entry = await redis.xadd(log_key(USER), {**fields, "data": f'{{"n":{n}}}'})
    return entry.decode()


async def test_live_entries_beyond_what_a_replaying_socket_holds_come_from_the_log(
    redis: aioredis.Redis,
) -> None:
    since = await append(redis, 0)
    for n in range(1, 11):
        await append(redis, n)
    hub = Hub(redis)
    ws = RecordingSocket()
    conn = Conn(ws, Identity(USER, "client", "jti", "sid", 0), hub)  # type: ignore[arg-type]
    burst = QUEUE_SIZE + 150

    async def live_burst() -> None:
        # While the replay sends its first frame, more arrive than the socket may hold.
        for n in range(11, 11 + burst):
            entry = await append(redis, n)
            conn.offer(entry, f'{{"id":"{entry}","n":{n}}}')

    ws.during_first_send = live_burst
    await hub.replay(conn, since)

    assert conn.live and not ws.closed
    assert not conn.overflowed
    numbers = [int(f.rsplit(":", 1)[1].rstrip("}")) for f in ws.frames]
    assert numbers == list(range(1, 11 + burst))  # all, in order, none twice
