"""A replica's limits: a slow consumer gets 1013, quiet sockets get pings, SIGTERM sends 1001."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from ..api import Api
from .conftest import LiveStack
from .live_support import (
    LiveSocket,
    Replica,
    Sockets,
    answer_connection,
    assert_notification,
    eventually,
    open_socket,
    publish,
    request_pro,
    synthetic_invite,
)

HEARTBEAT = 20.0  # gateway/live.py: a ping after 20 s without traffic from the client


@pytest.fixture(scope="module")
def replica(live_stack: LiveStack) -> Iterator[Replica]:
    """A replica of this module's own: the last test stops it with SIGTERM."""
    own = Replica(live_stack.stack, "limits")
    own.start()
    yield own
    own.stop()


@pytest_asyncio.fixture(scope="module")
async def probes(
    replica: Replica, live_stack: LiveStack, http: aiohttp.ClientSession
) -> AsyncIterator[tuple[LiveSocket, LiveSocket, float]]:
    """Two quiet sockets opened when the module starts, so the heartbeat test needs not
    wait the whole interval itself: one never answers pings, the other does."""
    api = Api(http, replica.url)
    silent_user, polite_user = await asyncio.gather(api.signup("client"), api.signup("client"))
    opened = asyncio.get_running_loop().time()
    silent = await open_socket(
        http, replica.url, silent_user.token, autoping=False, label="no-pong"
    )
    polite = await open_socket(http, replica.url, polite_user.token, label="pong")
    yield silent, polite, opened
    await asyncio.gather(silent.close(), polite.close(), return_exceptions=True)


class RawSocket:
    """A WebSocket handshake done by hand on a socket with a tiny receive buffer; after
    the 101 nothing is read until `frames()` is called (a client that stopped reading)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, token: str) -> RawSocket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.wait_for(
            asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)), 5
        )
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /api/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Authorization: Bearer {token}\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def frames(self) -> tuple[int, int | None]:
        """Read until the close frame: (text frames before it, close code)."""
        texts = 0
        while True:
            first, second = await self.reader.readexactly(2)
            length = second & 0x7F
            if length == 126:
                length = int.from_bytes(await self.reader.readexactly(2), "big")
            elif length == 127:
                length = int.from_bytes(await self.reader.readexactly(8), "big")
            payload = await self.reader.readexactly(length)
            opcode = first & 0x0F
            if opcode == 0x8:
                return texts, int.from_bytes(payload[:2], "big") if payload else None
            if opcode == 0x1:
                texts += 1

    def close(self) -> None:
        self.writer.transport.abort()


async def test_a_client_that_stops_reading_is_closed_with_1013(
    replica: Replica,
    probes: tuple[LiveSocket, LiveSocket, float],
    live: LiveStack,
    http: aiohttp.ClientSession,
    live_redis: aioredis.Redis,
    sockets: Sockets,
) -> None:
    api = Api(http, replica.url)
    slow_user, healthy_user = await asyncio.gather(api.signup("client"), api.signup("client"))
    slow = await RawSocket.open(replica.port, slow_user.token)
    healthy = await sockets.open(replica.url, healthy_user, label="healthy")
    try:
        # 2,000 notifications of about 4 KB for the slow user; every tenth for both.
        events = [
            synthetic_invite(
                [slow_user.id, healthy_user.id] if n % 10 == 0 else [slow_user.id], n, pad=4000
            )
            for n in range(2000)
        ]
        for start in range(0, 2000, 250):
            await publish(live_redis, events[start : start + 250])
        await healthy.wait_count(200, within=30)
        assert [m["data"]["invite"]["id"] for m in healthy.messages] == list(range(0, 2000, 10))

        texts, code = await asyncio.wait_for(slow.frames(), 30)
        assert code == 1013, (texts, code)
        assert texts < 2000
    finally:
        slow.close()
    # The healthy socket is still open and still gets what comes next.
    pro = await api.signup("professional")
    asked = await request_pro(api, healthy_user, pro)
    accepted = await answer_connection(api, pro, asked["id"], "accept")
    await healthy.wait_count(201)
    assert_notification(healthy.messages[200], "connection.accepted", {"connection": accepted})
    assert not healthy.closed


async def test_the_server_pings_a_quiet_client(
    replica: Replica, probes: tuple[LiveSocket, LiveSocket, float]
) -> None:
    silent, polite, opened = probes
    loop = asyncio.get_running_loop()
    await silent.until(
        lambda: bool(silent.pings),
        within=max(0.5, opened + HEARTBEAT + 2 - loop.time()),
        what="a ping",
    )
    assert silent.pings[0] - opened >= HEARTBEAT - 1, "pinged too early"
    assert not polite.closed


async def test_sigterm_closes_sockets_with_1001_and_exits_quickly(
    replica: Replica,
    http: aiohttp.ClientSession,
    sockets: Sockets,
    live_redis: aioredis.Redis,
) -> None:
    api = Api(http, replica.url)
    users = await asyncio.gather(api.signup("client"), api.signup("professional"))
    stalled_user = await api.signup("client")
    opened = [
        await sockets.open(replica.url, users[0], label="a"),
        await sockets.open(replica.url, users[0], how="protocol", label="a2"),
        await sockets.open(replica.url, users[1], how="query", label="b"),
    ]
    # A client that stopped reading with its buffers full (but fewer notifications
    # queued than the 1013 limit) must not hold the shutdown up either.
    stalled = await RawSocket.open(replica.port, stalled_user.token)
    try:
        await publish(
            live_redis, [synthetic_invite([stalled_user.id], n, pad=32_000) for n in range(200)]
        )
        await eventually(
            lambda: _log_len(live_redis, stalled_user.id, 200),
            within=10,
            what="the stalled client's notifications were appended",
        )
        await asyncio.sleep(0.5)
        loop = asyncio.get_running_loop()
        started = loop.time()
        replica.signal(signal.SIGTERM)
        for sock in opened:
            assert await sock.wait_closed(within=5) == 1001, sock.label
        code = await asyncio.to_thread(replica.wait_exit, 8)
        took = loop.time() - started
    finally:
        stalled.close()
    assert took <= 5.0, f"exited after {took:.1f}s"
    assert code == 0, code


async def _log_len(client: aioredis.Redis, user_id: int, count: int) -> bool:
    return await client.xlen(f"notifications:{user_id}") >= count
