"""Fixtures of the live tests: API clients, socket pools, and a stack with a Redis of its own."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from ..api import Api
from ..infra import RedisServer
from ..stack import Stack


@pytest.fixture
def api(http: aiohttp.ClientSession, stack: Stack) -> Api:
    """The shared session stack (SQLite and PostgreSQL), through its gateway."""
    return Api(http, stack.gateway_url, stack.inbox)


@dataclass
class LiveStack:
    """A SQLite stack on its own AOF Redis: tests may kill its gateway or its Redis."""

    stack: Stack
    redis: RedisServer

    @property
    def url(self) -> str:
        return self.stack.gateway_url

    def make_whole(self) -> None:
        """Restart whatever a test stopped, and wait until the stack answers again."""
        if self.redis.proc is None or self.redis.proc.poll() is not None:
            self.redis.start()
        proc = self.stack.procs.get("gateway")
        if proc is None or proc.poll() is not None:
            self.stack.start_process("gateway")
        self.stack.wait_healthy(60)


@pytest.fixture(scope="package")
def live_stack() -> Iterator[LiveStack]:
    """One extra stack for the tests that break things (SQLite only: the database plays no
    part in what they check). Package-scoped, so it starts once for all such modules."""
    with tempfile.TemporaryDirectory(prefix="hc-live-") as tmp:
        server = RedisServer(Path(tmp) / "redis")
        server.start()
        system = Stack(backend="sqlite", root=Path(tmp), redis_url=server.url)
        try:
            system.start()
            yield LiveStack(system, server)
        finally:
            system.stop()
            server.stop()


@pytest.fixture
def live(live_stack: LiveStack) -> Iterator[LiveStack]:
    """The extra stack, made whole again after the test whatever it stopped."""
    live_stack.make_whole()
    yield live_stack
    live_stack.make_whole()


@pytest.fixture
def live_api(http: aiohttp.ClientSession, live: LiveStack) -> Api:
    return Api(http, live.url, live.stack.inbox)


@pytest_asyncio.fixture
async def live_redis(live: LiveStack) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(live.redis.url)
    yield client
    await client.aclose()


@pytest_asyncio.fixture
async def shared_redis(stack: Stack) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(stack.redis_url)
    yield client
    await client.aclose()
