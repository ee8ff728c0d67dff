"""Slow and stalled clients: a body that stops arriving gets a 408 and the connection is
closed; headers that never finish are cut off; a slow body that keeps coming still works."""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import urlsplit

import orjson

from ..api import Api, unique_email
from ..stack import Stack

BODY_TIMEOUT = 2.0
KEEPALIVE = 3.0
# Short deadlines, so the tests wait seconds, not the defaults' 15 s and 20 s.
EXTRA_STACK_ENV = {
    "BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
    "GATEWAY_KEEPALIVE_TIMEOUT_SECONDS": str(KEEPALIVE),
}
PASSWORD = "correct horse battery"


async def open_raw(base_url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    url = urlsplit(base_url)
    return await asyncio.open_connection(url.hostname, url.port)


def request_head(path: str, length: int, token: str | None = None) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: test",
        "Content-Type: application/json",
        f"Content-Length: {length}",
    ]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_response(reader: asyncio.StreamReader, within: float) -> tuple[int, dict, bytes]:
    """Status, problem body, and what followed (b"" when the server closed the connection)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), within)
    status = int(head.split(b" ", 2)[1])
    headers = dict(
        line.decode().split(": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line
    )
    lengths = {k.lower(): v for k, v in headers.items()}
    body = await asyncio.wait_for(reader.readexactly(int(lengths["content-length"])), within)
    rest = await asyncio.wait_for(reader.read(), within)
    return status, {"headers": lengths, **orjson.loads(body)}, rest


async def stalled_body(base_url: str, path: str, token: str | None = None) -> float:
    """Send 10 of the 100 bytes a request announces, then nothing: a 408 problem, and the
    connection closed; returns how long it took."""
    reader, writer = await open_raw(base_url)
    started = time.monotonic()
    try:
        writer.write(request_head(path, 100, token) + b'{"name": "')
        await writer.drain()
        status, problem, rest = await read_response(reader, BODY_TIMEOUT + 10)
    finally:
        writer.close()
    assert status == 408, problem
    assert problem["headers"]["content-type"].startswith("application/problem+json")
    assert problem["code"] == "request_timeout"
    assert problem["headers"].get("connection", "").lower() == "close"
    assert rest == b""  # closed after the answer
    return time.monotonic() - started


async def test_stalled_body_gets_408_through_the_gateway(extra_stack: Stack) -> None:
    took = await stalled_body(extra_stack.gateway_url, "/api/auth/signup")
    assert BODY_TIMEOUT - 0.5 < took < BODY_TIMEOUT + 5


async def test_stalled_body_on_a_protected_route(extra_stack: Stack, extra_api: Api) -> None:
    pro = await extra_api.signup("professional")
    await stalled_body(extra_stack.gateway_url, "/api/activities/", pro.token)
    listed = await extra_api.call("GET", "/api/activities/list", token=pro.token)
    assert listed.body == []


async def test_stalled_body_gets_408_from_a_service(extra_stack: Stack) -> None:
    await stalled_body(extra_stack.service_url("auth"), "/api/auth/signup")


async def test_slow_but_steady_body_is_accepted(extra_stack: Stack, extra_api: Api) -> None:
    """Pieces 0.25 s apart, all in within the deadline: an ordinary slow upload."""
    email = unique_email("slow")
    body = json.dumps(
        {"name": "Slow", "email": email, "password": PASSWORD, "role": "client"}
    ).encode()
    reader, writer = await open_raw(extra_stack.gateway_url)
    try:
        writer.write(request_head("/api/auth/signup", len(body)))
        for start in range(0, len(body), len(body) // 5 + 1):
            writer.write(body[start : start + len(body) // 5 + 1])
            await writer.drain()
            await asyncio.sleep(0.25)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 201"), head
    assert (await extra_api.login(email, PASSWORD)).status == 200


async def test_unfinished_headers_are_cut_off(extra_stack: Stack) -> None:
    """Headers sent a line at a time, never finished: the connection is closed within the
    keep-alive timeout, however the lines keep coming."""
    reader, writer = await open_raw(extra_stack.gateway_url)
    started = time.monotonic()
    try:
        writer.write(b"POST /api/auth/signup HTTP/1.1\r\nHost: test\r\n")
        closed_after = None
        for n in range(20):
            try:
                writer.write(f"X-Slow-{n}: still coming\r\n".encode())
                await writer.drain()
            except ConnectionError:
                closed_after = time.monotonic() - started
                break
            try:
                if await asyncio.wait_for(reader.read(), 1.0) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except ConnectionError:
                closed_after = time.monotonic() - started
                break
    finally:
        writer.close()
    assert closed_after is not None, "the server kept an unfinished request open for 20 s"
    assert closed_after < KEEPALIVE + 3


async def test_idle_connection_is_closed(extra_stack: Stack) -> None:
    reader, writer = await open_raw(extra_stack.gateway_url)
    try:
        assert await asyncio.wait_for(reader.read(), KEEPALIVE + 5) == b""
    finally:
        writer.close()
