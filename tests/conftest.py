"""Shared fixtures: infrastructure (Redis, PostgreSQL), the running stack, API clients."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from .infra import RedisServer, postgres_url, redis_url
from .stack import Stack, with_redis_db

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def redis_base_url() -> Iterator[str]:
    with redis_url() as url:
        yield url


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str | None]:
    with postgres_url() as url:
        yield url


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest, pg_url: str | None) -> str:
    if request.param == "postgres" and pg_url is None:
        pytest.skip("no PostgreSQL: set TEST_POSTGRES_URL, run Docker, or install PostgreSQL")
    return request.param


@pytest.fixture(scope="session")
def stack(backend: str, redis_base_url: str, pg_url: str | None) -> Iterator[Stack]:
    """The system on `backend`, with a Redis database of its own (flushed first)."""
    import redis

    url = with_redis_db(redis_base_url, 1 if backend == "sqlite" else 2)
    redis.Redis.from_url(url).flushdb()
    with tempfile.TemporaryDirectory(prefix=f"hc-stack-{backend}-") as tmp:
        system = Stack(backend=backend, root=Path(tmp), redis_url=url, postgres_url=pg_url)
        try:
            system.start()
            yield system
        finally:
            system.stop()


@pytest.fixture
def inbox(stack: Stack):
    """The mail the stack's SMTP sink received (tests/mailbox.py)."""
    return stack.inbox


@pytest_asyncio.fixture(scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest_asyncio.fixture
async def stack_redis(stack: Stack) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(stack.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, which it may stop and restart (AOF keeps the data)."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()
