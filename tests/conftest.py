"""Shared fixtures: infrastructure (Redis, PostgreSQL), the running stack, API clients."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from sqlalchemy.engine import make_url

from .infra import RedisServer, postgres_url, redis_url
from .live.live_support import Sockets
from .stack import Stack, _admin, create_database_sql, own_stack, with_redis_db

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


@pytest_asyncio.fixture
async def fresh_url(backend: str, pg_url: str | None, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of an empty database of this test's own, on the `backend` under test."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
        return
    assert pg_url
    name = f"hc_t_{uuid.uuid4().hex[:12]}"
    await _admin(pg_url, [create_database_sql(name)])
    try:
        yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    finally:
        await _admin(pg_url, [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'])


@pytest.fixture(scope="session")
def stack(backend: str, redis_base_url: str, pg_url: str | None) -> Iterator[Stack]:
    """The system on `backend`, with a Redis database of its own (flushed first)."""
    with own_stack(
        backend=backend,
        redis_url=with_redis_db(redis_base_url, 1 if backend == "sqlite" else 2),
        postgres_url=pg_url,
        prefix=f"hc-stack-{backend}-",
    ) as system:
        yield system


@pytest.fixture
def inbox(stack: Stack):
    """The mail the stack's SMTP sink received (tests/mailbox.py)."""
    return stack.inbox


@pytest_asyncio.fixture(scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest_asyncio.fixture
async def sockets(http: aiohttp.ClientSession) -> AsyncIterator[Sockets]:
    """WebSockets a test opens, closed at its end (tests/live/live_support.py)."""
    pool = Sockets(http)
    yield pool
    await pool.close_all()


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
