"""Fixtures of the Idempotency-Key tests: the API, a service's database, a held write lock."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from sqlalchemy import pool, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from ..api import Account, Api
from ..stack import Stack


@pytest.fixture
def api(http: aiohttp.ClientSession, stack: Stack) -> Api:
    return Api(http, stack.gateway_url, stack.inbox)


async def scalar(stack: Stack, service: str, sql: str, **params: Any) -> Any:
    """One value read straight from a service's own database (SQLite file or PostgreSQL)."""
    engine = create_async_engine(stack.databases[service], poolclass=pool.NullPool)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text(sql), params)).scalar()
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def write_lock(stack: Stack, service: str) -> AsyncIterator[None]:
    """Hold what a write of `service` needs until the block ends, so a request that gets
    there waits, deterministically: SQLite's write lock, or on PostgreSQL an EXCLUSIVE lock
    on `idempotency_keys` (reads go on; recording an answer waits)."""
    url = make_url(stack.databases[service])
    if url.get_backend_name() == "sqlite":
        conn = sqlite3.connect(url.database or "", isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield
            conn.execute("ROLLBACK")
        finally:
            conn.close()
        return
    import asyncpg

    pg = await asyncpg.connect(url.set(drivername="postgresql").render_as_string(False))
    try:
        tx = pg.transaction()
        await tx.start()
        await pg.execute("LOCK TABLE idempotency_keys IN EXCLUSIVE MODE")
        yield
        await tx.rollback()
    finally:
        await pg.close()


def keyed(account: Account | None, key: str) -> dict[str, str]:
    headers = {"Idempotency-Key": key}
    if account is not None:
        headers["Authorization"] = f"Bearer {account.token}"
    return headers
