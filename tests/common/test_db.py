"""The database layer on SQLite and PostgreSQL: UTC datetimes, SQLite settings, concurrency."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
import sqlalchemy.exc
from sqlalchemy import func, select, text

from services.common.db import Database, UTCDateTime, utcnow

from .conftest import Note


async def test_utc_datetime_round_trips_aware_values(database: Database) -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    values = [
        dt.datetime(2026, 11, 24, 7, 0, 0, 123456, tzinfo=dt.UTC),
        dt.datetime(2026, 11, 24, 9, 0, 0, tzinfo=plus_two),  # the same instant as 07:00 UTC
        utcnow(),
    ]
    async with database.transaction() as session:
        session.add_all(Note(text=str(i), at=v) for i, v in enumerate(values))
        session.add(Note(text="none", at=None))
    async with database.read() as session:
        notes = (await session.scalars(select(Note).order_by(Note.id))).all()
        stored = [n.at for n in notes]
        assert stored[-1] is None
        for got, want in zip(stored, values, strict=False):
            assert got is not None and got.tzinfo is not None
            assert got.utcoffset() == dt.timedelta(0)
            assert got == want
        # Comparisons in SQL work on the stored values, across offsets too.
        earlier = await session.scalar(
            select(func.count()).select_from(Note).where(Note.at < values[2])
        )
        assert earlier == 2


async def test_utc_datetime_rejects_naive_values(database: Database) -> None:
    with pytest.raises(sqlalchemy.exc.StatementError) as caught:
        async with database.transaction() as session:
            session.add(Note(text="naive", at=dt.datetime(2026, 11, 24, 7, 0)))
    assert isinstance(caught.value.orig, ValueError)
    assert "naive" in str(caught.value.orig)
    async with database.read() as session:
        assert await session.scalar(select(func.count()).select_from(Note)) == 0
    assert UTCDateTime().process_bind_param(None, database.engine.dialect) is None


async def test_sqlite_settings(database: Database, backend: str) -> None:
    if backend != "sqlite":
        pytest.skip("SQLite only")
    # Every pooled connection gets them, not only the first.
    async with database.engine.connect() as one, database.engine.connect() as two:
        for conn in (one, two):
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
            assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar() >= 5000


async def test_concurrent_write_transactions_all_commit(database: Database) -> None:
    async def writer(i: int) -> None:
        # Read, yield to the others, then write: the pattern that makes a deferred SQLite
        # transaction fail with "database is locked" instead of waiting its turn.
        async with database.transaction() as session:
            await session.scalar(select(func.count()).select_from(Note))
            await asyncio.sleep(0.005)
            session.add(Note(text=f"writer {i}"))
            await session.flush()
            await session.execute(text("UPDATE notes SET text = text WHERE id = 1"))

    results = await asyncio.gather(*(writer(i) for i in range(20)), return_exceptions=True)
    assert [r for r in results if isinstance(r, BaseException)] == []
    async with database.read() as session:
        assert await session.scalar(select(func.count()).select_from(Note)) == 20


async def test_reads_do_not_wait_for_a_writer(database: Database) -> None:
    async with database.transaction() as session:
        session.add(Note(text="committed"))
    async with database.transaction() as writing:
        writing.add(Note(text="uncommitted"))
        await writing.flush()
        async with database.read() as reading:
            count = await asyncio.wait_for(
                reading.scalar(select(func.count()).select_from(Note)), 2
            )
        assert count == 1  # the reader sees the last commit, not the open transaction


async def test_ping_and_dialect(database: Database, backend: str) -> None:
    await database.ping()
    assert database.dialect == {"sqlite": "sqlite", "postgres": "postgresql"}[backend]
