"""The database layer on SQLite and PostgreSQL: UTC datetimes, SQLite settings, concurrency."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3

import pytest
import sqlalchemy.exc
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from services.common.db import Database, UTCDateTime, utcnow

from .conftest import Note


def count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Note)) or 0


async def test_utc_datetime_round_trips_aware_values(database: Database) -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    values = [
        dt.datetime(2026, 11, 24, 7, 0, 0, 123456, tzinfo=dt.UTC),
        dt.datetime(2026, 11, 24, 9, 0, 0, tzinfo=plus_two),  # the same instant as 07:00 UTC
        utcnow(),
    ]

    def add(session: Session) -> None:
        session.add_all(Note(text=str(i), at=v) for i, v in enumerate(values))
        session.add(Note(text="none", at=None))

    await database.write(add)

    def read(session: Session) -> tuple[list[dt.datetime | None], int | None]:
        stored = [n.at for n in session.scalars(select(Note).order_by(Note.id))]
        # Comparisons in SQL work on the stored values, across offsets too.
        earlier = session.scalar(select(func.count()).select_from(Note).where(Note.at < values[2]))
        return stored, earlier

    stored, earlier = await database.query(read)
    assert stored[-1] is None
    for got, want in zip(stored, values, strict=False):
        assert got is not None and got.tzinfo is not None
        assert got.utcoffset() == dt.timedelta(0)
        assert got == want
    assert earlier == 2


async def test_utc_datetime_rejects_naive_values(database: Database) -> None:
    with pytest.raises(sqlalchemy.exc.StatementError) as caught:
        await database.write(
            lambda session: session.add(Note(text="naive", at=dt.datetime(2026, 11, 24, 7, 0)))
        )
    assert isinstance(caught.value.orig, ValueError)
    assert "naive" in str(caught.value.orig)
    assert await database.query(count) == 0
    assert UTCDateTime().process_bind_param(None, database.engine.dialect) is None


async def test_a_failed_unit_of_work_changes_nothing(database: Database) -> None:
    def doomed(session: Session) -> None:
        session.add(Note(text="doomed"))
        session.flush()
        raise LookupError("no")

    with pytest.raises(LookupError):
        await database.write(doomed)
    await database.write(lambda session: session.add(Note(text="kept")))
    assert await database.query(lambda s: s.scalars(select(Note.text)).all()) == ["kept"]


async def test_sqlite_settings(database: Database, backend: str) -> None:
    if backend != "sqlite":
        pytest.skip("SQLite only")

    def pragmas(session: Session) -> dict[str, object]:
        names = ("journal_mode", "foreign_keys", "synchronous", "busy_timeout", "query_only")
        return {n: session.execute(text(f"PRAGMA {n}")).scalar() for n in names}

    # The writer never sleeps in SQLite's busy handler (see the next test); readers may.
    writer = await database.write(pragmas)
    assert writer == {
        "journal_mode": "wal",
        "foreign_keys": 1,
        "synchronous": 1,  # NORMAL: a WAL commit does not sync
        "busy_timeout": 0,
        "query_only": 0,
    }
    reader = await database.query(pragmas)
    assert reader["journal_mode"] == "wal" and reader["query_only"] == 1
    # The async engine, for whoever uses it directly, has the same settings.
    async with database.engine.connect() as one, database.engine.connect() as two:
        for conn in (one, two):
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1


async def test_sqlite_writer_waits_for_another_process_lock_without_blocking_the_loop(
    database: Database, backend: str
) -> None:
    if backend != "sqlite":
        pytest.skip("SQLite only")
    path = database.engine.url.database
    assert path
    # Another connection (as another process would) holds the write lock.
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO notes (text) VALUES ('other')")
    loop = asyncio.get_running_loop()
    try:
        writing = asyncio.create_task(
            database.write(lambda session: session.add(Note(text="mine")))
        )
        started = loop.time()
        await asyncio.sleep(0.3)
        assert loop.time() - started < 2  # the loop kept running (blocked, it would wait 30 s)
        assert not writing.done()
    finally:
        other.execute("COMMIT")
        other.close()
    await asyncio.wait_for(writing, 5)
    texts = await database.query(lambda s: s.scalars(select(Note.text).order_by(Note.id)).all())
    assert texts == ["other", "mine"]


async def test_concurrent_units_of_work_all_commit(database: Database) -> None:
    def writer(i: int):
        def work(session: Session) -> None:
            # Read, then write: the pattern that makes a deferred SQLite transaction fail
            # with "database is locked" instead of waiting its turn.
            session.scalar(select(func.count()).select_from(Note))
            session.add(Note(text=f"writer {i}"))
            session.flush()
            session.execute(text("UPDATE notes SET text = text WHERE id = 1"))

        return database.write(work)

    results = await asyncio.gather(*(writer(i) for i in range(20)), return_exceptions=True)
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert await database.query(count) == 20


async def test_reads_do_not_wait_for_a_writer(database: Database, fresh_url: str) -> None:
    await database.write(lambda session: session.add(Note(text="committed")))
    other = Database(fresh_url)  # another process's writer, holding its transaction open
    holding, release = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with other.sessions() as session, session.begin():
            session.add(Note(text="uncommitted"))
            await session.flush()
            holding.set()
            await release.wait()

    task = asyncio.create_task(hold())
    try:
        await asyncio.wait_for(holding.wait(), 5)
        # The reader sees the last commit, not the open transaction, and does not wait.
        assert await asyncio.wait_for(database.query(count), 2) == 1
    finally:
        release.set()
        await task
        await other.dispose()
    assert await database.query(count) == 2


async def test_ping_and_dialect(database: Database, backend: str) -> None:
    await database.ping()
    assert database.dialect == {"sqlite": "sqlite", "postgres": "postgresql"}[backend]
