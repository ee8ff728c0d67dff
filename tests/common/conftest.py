"""Fixtures for the shared plumbing: a fresh database per test, a test-only schema, helpers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.db import Database, UTCDateTime
from services.common.events import UserData, UserPayload, UserRegistered
from services.common.outbox import OutboxMixin
from services.common.service_app import make_redis
from services.common.tables import Id

from ..infra import RedisServer


class Base(DeclarativeBase):
    pass


class Note(Base):
    """The "business change" written in the same transaction as its event."""

    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    text: Mapped[str] = mapped_column(String(200))
    at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class OutboxEvent(OutboxMixin, Base):
    pass


def user_event(n: int, **extra: Any) -> UserRegistered:
    """A `user.registered` event for user `n` (goes to the `auth.events` stream)."""
    user = UserData(
        id=n,
        name=f"User {n}",
        email=f"user{n}@example.com",
        role="client",
        created_at=dt.datetime(2026, 11, 24, 7, 0, tzinfo=dt.UTC),
    )
    return UserRegistered(data=UserPayload(user=user), **extra)


def unique_stream(prefix: str = "test") -> str:
    return f"{prefix}.{uuid.uuid4().hex[:12]}.events"


async def stop(task: asyncio.Task[Any]) -> None:
    """Cancel a background task and wait (bounded) until it has really stopped."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    if not done:
        task.cancel()  # do not leak it into the next test
        await asyncio.wait({task}, timeout=5)
        raise AssertionError(f"{task.get_name()} outlived its cancellation")
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.fixture
def stream() -> str:
    """A stream name no other test uses."""
    return unique_stream()


@pytest_asyncio.fixture
async def database(fresh_url: str) -> AsyncIterator[Database]:
    """A `Database` on a fresh database holding the test schema (notes + outbox)."""
    db = Database(fresh_url)
    async with db.engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    try:
        yield db
    finally:
        await db.dispose()


@pytest_asyncio.fixture
async def redis_client(own_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A client of this test's own Redis, configured like the services' clients."""
    client = make_redis(own_redis.url)
    yield client
    await client.aclose()
