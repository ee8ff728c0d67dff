"""The transactional outbox and its relay, on SQLite and PostgreSQL, against a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import random
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from faststream.redis.parser import BinaryMessageFormatV1
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from services.common.consumer import decode_entry
from services.common.db import Database, utcnow
from services.common.events import (
    ACTIVITIES_STREAM,
    AUTH_STREAM,
    CONNECTIONS_STREAM,
    EXAMPLES,
    ActivityCreated,
    ConnectionAccepted,
    Event,
)
from services.common.outbox import Outbox, stage

from ..api import eventually
from ..infra import RedisServer
from .conftest import Note, OutboxEvent, stop, user_event


def make_outbox(db: Database, redis: aioredis.Redis, name: str = "test") -> Outbox:
    return Outbox(db, redis, OutboxEvent, name=name, maxlen=10_000)


async def commit(db: Database, *events: Event, text: str = "note") -> None:
    def work(session: Session) -> None:
        session.add(Note(text=text))
        for event in events:
            stage(session, event)

    await db.write(work)


async def rows(db: Database) -> list[OutboxEvent]:
    query = select(OutboxEvent).order_by(OutboxEvent.id)
    return await db.query(lambda session: list(session.scalars(query).all()))


async def count_notes(db: Database) -> int:
    query = select(func.count()).select_from(Note)
    return await db.query(lambda session: session.scalar(query)) or 0


async def on_stream(redis: aioredis.Redis, stream: str = AUTH_STREAM) -> list[tuple[str, Event]]:
    entries = await redis.xrange(stream)
    return [(sid.decode(), decode_entry(fields)) for sid, fields in entries]


@contextlib.asynccontextmanager
async def relaying(outbox: Outbox, *, lead: bool = True) -> AsyncIterator[asyncio.Task[None]]:
    """Run the relay for the block; with `lead`, first wait until it holds the leader lock."""
    task = asyncio.create_task(outbox.run())
    try:
        if lead:

            async def leading() -> bool:
                assert not task.done(), task
                return outbox.leader

            await eventually(leading, within=5)
        yield task
    finally:
        await stop(task)


async def published_count(redis: aioredis.Redis, n: int, stream: str = AUTH_STREAM) -> bool:
    return await redis.xlen(stream) >= n


async def test_event_row_commits_with_the_change(
    database: Database, redis_client: aioredis.Redis
) -> None:
    make_outbox(database, redis_client)
    event = user_event(1)
    await commit(database, event)

    assert await count_notes(database) == 1
    [row] = await rows(database)
    assert row.event_id == str(event.event_id)
    assert row.stream == AUTH_STREAM
    assert row.type == "user.registered"
    assert json.loads(row.payload) == json.loads(event.to_json())
    assert row.published_at is None and row.stream_id is None
    assert row.created_at.tzinfo is not None
    assert abs(utcnow() - row.created_at) < dt.timedelta(seconds=30)


async def test_rolled_back_transaction_leaves_nothing(
    database: Database, redis_client: aioredis.Redis
) -> None:
    outbox = make_outbox(database, redis_client)
    async with relaying(outbox):

        def doomed(session: Session) -> None:
            session.add(Note(text="doomed"))
            stage(session, user_event(1))
            session.flush()
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            await database.write(doomed)
        assert await count_notes(database) == 0
        assert await rows(database) == []

        # A later good transaction goes through; the doomed event never shows up.
        good = user_event(2)
        await commit(database, good)
        await eventually(lambda: published_count(redis_client, 1), within=3)
        await asyncio.sleep(0.2)
        assert [e.event_id for _, e in await on_stream(redis_client)] == [good.event_id]
    assert await count_notes(database) == 1
    assert [r.event_id for r in await rows(database)] == [str(good.event_id)]


async def test_relay_publishes_right_after_commit(
    database: Database, redis_client: aioredis.Redis
) -> None:
    outbox = make_outbox(database, redis_client)
    latencies = []
    events = [user_event(i) for i in range(6)]
    async with relaying(outbox):
        await asyncio.sleep(0.3)  # the relay is now idle, inside its 1 s poll wait
        for n, event in enumerate(events, start=1):
            started = time.perf_counter()
            await commit(database, event)
            await eventually(lambda n=n: published_count(redis_client, n), within=3, every=0.002)
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(random.uniform(0.05, 0.25))
        # With only the 1 s poll, six commits at random moments would all be under 0.4 s
        # once in 250 runs; the after-commit wake-up makes each take milliseconds.
        assert max(latencies) < 0.4, latencies

        async def all_marked() -> bool:
            return all(r.published_at is not None for r in await rows(database))

        await eventually(all_marked, within=3)
        assert outbox.published == 6
        assert outbox.last_error is None

    published = await on_stream(redis_client)
    assert [e.event_id for _, e in published] == [e.event_id for e in events]
    stored = await rows(database)
    assert [r.stream_id for r in stored] == [sid for sid, _ in published]
    for row in stored:
        assert row.published_at is not None and row.published_at.tzinfo is not None
        assert row.published_at >= row.created_at


async def test_events_wait_while_redis_is_down(
    database: Database, redis_client: aioredis.Redis, own_redis: RedisServer
) -> None:
    outbox = make_outbox(database, redis_client)
    first = user_event(1)
    during = [user_event(2), user_event(3)]
    after = user_event(4)
    async with relaying(outbox) as task:
        await commit(database, first)
        await eventually(lambda: published_count(redis_client, 1), within=3)

        await asyncio.to_thread(own_redis.stop)
        for event in during:
            await commit(database, event)  # the write itself must not need Redis

        async def relay_noticed() -> bool:
            return outbox.last_error is not None

        await eventually(relay_noticed, within=5)
        await asyncio.sleep(0.3)
        assert not task.done()
        assert [r.published_at for r in await rows(database)][1:] == [None, None]

        await asyncio.to_thread(own_redis.start)
        await commit(database, after)

        async def all_marked() -> bool:
            return all(r.published_at is not None for r in await rows(database))

        await eventually(all_marked, within=10)
        assert not task.done()
        assert outbox.last_error is None

    published = await on_stream(redis_client)
    assert [e.event_id for _, e in published] == [
        e.event_id for e in [first, *during, after]
    ]  # in order, each once
    assert [r.stream_id for r in await rows(database)] == [sid for sid, _ in published]


async def test_stream_keeps_commit_order(database: Database, redis_client: aioredis.Redis) -> None:
    """Concurrent writers, each dawdling between its outbox insert and its commit: the
    stream gets every row once, in (txid, id) order on PostgreSQL (id order on SQLite),
    so positions only grow along it: no row went out while an older transaction was still
    running."""
    outbox = make_outbox(database, redis_client)

    def dawdle(session: Session) -> None:
        # After the outbox insert, before COMMIT. On PostgreSQL a server-side sleep, so
        # the other transactions run meanwhile; SQLite has one writer anyway.
        if "test.delay" in session.info and database.dialect == "postgresql":
            session.execute(text("SELECT pg_sleep(:s)"), {"s": session.info["test.delay"]})

    database.on_before_commit(dawdle)  # registered after the outbox's own hook

    async def one(i: int) -> None:
        def work(session: Session) -> None:
            session.info["test.delay"] = random.uniform(0, 0.02)
            session.add(Note(text=f"note {i}"))
            stage(session, user_event(i))

        await database.write(work)

    async with relaying(outbox):
        await asyncio.gather(*(one(i) for i in range(50)))
        await eventually(lambda: published_count(redis_client, 50), within=10)

        async def all_marked() -> bool:
            return all(r.published_at is not None for r in await rows(database))

        await eventually(all_marked, within=5)

    stored = await rows(database)
    assert len(stored) == 50
    if database.dialect == "postgresql":
        expected = sorted(stored, key=lambda r: (r.txid, r.id))
        assert len({r.txid for r in stored}) == 50
    else:
        expected = sorted(stored, key=lambda r: r.id)
    entries = await redis_client.xrange(AUTH_STREAM)
    assert [decode_entry(f).event_id for _, f in entries] == [
        uuid.UUID(r.event_id) for r in expected
    ]
    positions = [int(f[b"row"]) for _, f in entries]
    assert positions == sorted(positions)
    assert positions == [r.txid or r.id for r in expected]


async def test_a_consequence_goes_out_after_its_cause(
    database: Database, redis_client: aioredis.Redis
) -> None:
    """A transaction that began after another committed (it may have read it) is published
    after it, even when the cause dawdled and the consequence did not."""
    outbox = make_outbox(database, redis_client)
    cause, consequence = user_event(1), user_event(2)
    await commit(database, cause)
    await commit(database, consequence)
    async with relaying(outbox):
        await eventually(lambda: published_count(redis_client, 2), within=5)
    assert [e.event_id for _, e in await on_stream(redis_client)] == [
        cause.event_id,
        consequence.event_id,
    ]


async def test_only_one_relay_publishes(database: Database, redis_client: aioredis.Redis) -> None:
    other_db = Database(database.url)  # a second replica of the same service
    try:
        first = make_outbox(database, redis_client)
        second = make_outbox(other_db, redis_client)
        events = [user_event(i) for i in range(10)]
        async with relaying(first), relaying(second, lead=False) as second_task:
            await asyncio.sleep(0.5)
            assert first.leader and not second.leader
            for i, event in enumerate(events):
                await commit(database if i % 2 else other_db, event)
            # Commits on the second replica reach the leader by its poll.
            await eventually(lambda: published_count(redis_client, 10), within=5)
            await asyncio.sleep(0.3)
            assert not second_task.done()
            assert not second.leader and second.published == 0
            assert first.published == 10
        published = await on_stream(redis_client)
        ids = [e.event_id for _, e in published]
        assert len(ids) == len(set(ids)) == 10  # nothing published twice
        assert set(ids) == {e.event_id for e in events}
    finally:
        await other_db.dispose()


async def test_leadership_moves_to_the_waiting_relay(
    database: Database, redis_client: aioredis.Redis
) -> None:
    other_db = Database(database.url)
    try:
        first = make_outbox(database, redis_client)
        second = make_outbox(other_db, redis_client)
        async with contextlib.AsyncExitStack() as leader:
            await leader.enter_async_context(relaying(first))
            async with relaying(second, lead=False):
                await asyncio.sleep(0.3)
                assert first.leader and not second.leader
                await leader.aclose()  # the first replica's process exits...
                await database.dispose()  # ...and its connections close

                async def second_leads() -> bool:
                    return second.leader

                await eventually(second_leads, within=5)
                event = user_event(1)
                await commit(other_db, event)
                await eventually(lambda: published_count(redis_client, 1), within=3)
                assert [e.event_id for _, e in await on_stream(redis_client)] == [event.event_id]
    finally:
        await other_db.dispose()


async def test_relay_restarted_in_process_leads_again(
    database: Database, redis_client: aioredis.Redis
) -> None:
    outbox = make_outbox(database, redis_client)
    async with relaying(outbox):
        # Several pooled connections, so the next checkout need not be the lock's one.
        await asyncio.gather(*(commit(database, user_event(i)) for i in range(5)))
        await eventually(lambda: published_count(redis_client, 5), within=3)
    assert not outbox.leader
    async with relaying(outbox):
        await commit(database, user_event(5))
        await eventually(lambda: published_count(redis_client, 6), within=3)


async def test_entries_decode_to_the_same_events(
    database: Database, redis_client: aioredis.Redis
) -> None:
    outbox = make_outbox(database, redis_client)
    events: list[Event] = [
        user_event(1),
        ConnectionAccepted(data=EXAMPLES["connection.accepted"], recipient_ids=[1, 2]),
        ActivityCreated(data=EXAMPLES["activity.created"]),
    ]
    async with relaying(outbox):
        await commit(database, *events)

        async def all_marked() -> bool:
            return all(r.published_at is not None for r in await rows(database))

        await eventually(all_marked, within=3)

    for event, stream in zip(
        events, [AUTH_STREAM, CONNECTIONS_STREAM, ACTIVITIES_STREAM], strict=True
    ):
        [(_, fields)] = await redis_client.xrange(stream)
        assert set(fields) == {b"__data__", b"row"}  # the event, and its outbox row
        decoded = decode_entry(fields)
        assert type(decoded) is type(event)
        assert decoded == event

        body, headers = BinaryMessageFormatV1.parse(fields[b"__data__"])
        assert json.loads(body) == json.loads(event.to_json())
        assert headers["event-id"] == str(event.event_id)
        assert headers["event-type"] == event.type
        assert headers["content-type"] == "application/json"


async def test_purge_drops_only_old_published_rows(
    database: Database, redis_client: aioredis.Redis
) -> None:
    outbox = make_outbox(database, redis_client)
    await commit(database, user_event(1), user_event(2), user_event(3))
    old = utcnow() - dt.timedelta(hours=25)
    ids = [r.id for r in await rows(database)]

    def age(session: Session) -> None:
        session.execute(
            update(OutboxEvent).where(OutboxEvent.id == ids[0]).values(published_at=old)
        )
        session.execute(
            update(OutboxEvent).where(OutboxEvent.id == ids[1]).values(published_at=utcnow())
        )
        session.execute(update(OutboxEvent).where(OutboxEvent.id == ids[2]).values(created_at=old))

    await database.write(age)
    await outbox.purge_published()
    assert [r.id for r in await rows(database)] == ids[1:]


async def test_relay_stops_when_cancelled_right_after_a_wake_up(
    database: Database, redis_client: aioredis.Redis
) -> None:
    # Shutdown cancels the relay; a commit's wake-up landing at that moment must not make
    # it survive the cancellation (asyncio.wait_for on Python 3.11 swallowed it).
    outbox = make_outbox(database, redis_client)
    for _ in range(10):
        task = asyncio.create_task(outbox.run())

        async def idle(task: asyncio.Task[None] = task) -> bool:
            assert not task.done()
            return outbox.leader

        await eventually(idle, within=5)
        await asyncio.sleep(0.02)  # inside the poll wait now
        outbox.wake()
        await stop(task)
        assert task.cancelled()
        assert not outbox.leader


async def test_wait_published(database: Database, redis_client: aioredis.Redis) -> None:
    outbox = make_outbox(database, redis_client)
    watcher_db = Database(database.url)
    try:
        watcher = make_outbox(watcher_db, redis_client)  # not the leader: watches the row
        async with relaying(outbox):
            await commit(database, user_event(1))
            [row] = await rows(database)
            upto = (row.txid or row.id, row.id)  # (position, id): txid on PostgreSQL
            assert await outbox.wait_published(upto, within=2)
            assert await watcher.wait_published(upto, within=2)
            assert outbox.published_upto >= upto
    finally:
        await watcher_db.dispose()
    # No relay running: the wait gives up in time.
    await commit(database, user_event(2))
    last = (await rows(database))[-1]
    started = time.perf_counter()
    assert not await outbox.wait_published((last.txid or last.id, last.id), within=0.2)
    assert time.perf_counter() - started < 1


async def test_a_backlog_is_appended_at_its_commit_time(
    database: Database, redis_client: aioredis.Redis
) -> None:
    """Rows relayed late (Redis was down, the relay restarted) get their commit time as
    entry id, so they sort before what another service appended meanwhile: the notifier
    merges the streams by id and keeps the order in which the changes happened."""
    outbox = make_outbox(database, redis_client)
    late = user_event(1)
    await commit(database, late)  # committed; no relay runs yet
    [row] = await rows(database)
    await asyncio.sleep(0.05)
    other = (await redis_client.xadd(CONNECTIONS_STREAM, {"x": "appended meanwhile"})).decode()
    async with relaying(outbox):
        await eventually(lambda: published_count(redis_client, 1), within=5)
    [(entry_id, event)] = await on_stream(redis_client)
    assert event.event_id == late.event_id
    committed_ms = int(row.created_at.timestamp() * 1000)
    assert int(entry_id.split("-")[0]) == committed_ms
    assert _id(entry_id) < _id(other)
    # A stream that already holds a later entry takes the row at Redis's now instead.
    again = user_event(2)
    await redis_client.xadd(AUTH_STREAM, {"x": "newer"}, id=f"{committed_ms + 60_000}-0")
    await commit(database, again)
    async with relaying(outbox):
        await eventually(lambda: published_count(redis_client, 3), within=5)
    [(last_id, fields)] = await redis_client.xrevrange(AUTH_STREAM, count=1)
    assert decode_entry(fields).event_id == again.event_id
    assert _id(last_id.decode()) > (committed_ms + 60_000, 0)


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


async def test_a_long_write_in_another_database_holds_no_relay_back(
    database: Database, redis_client: aioredis.Redis, pg_url: str | None
) -> None:
    """Only this database's running transactions can still add older rows to its outbox:
    one that writes for minutes in another database of the same PostgreSQL cluster (a
    migration, another service) must not hold this relay's rows back."""
    if database.dialect != "postgresql":
        pytest.skip("PostgreSQL only: SQLite has no other databases' transactions")
    import asyncpg
    from sqlalchemy.engine import make_url

    from ..stack import _admin, create_database_sql

    assert pg_url
    other = f"hc_t_{uuid.uuid4().hex[:12]}"
    await _admin(pg_url, [create_database_sql(other)])
    dsn = make_url(pg_url).set(drivername="postgresql", database=other)
    conn = await asyncpg.connect(dsn.render_as_string(hide_password=False))
    try:
        writing = conn.transaction()
        await writing.start()
        await conn.fetchval("SELECT pg_current_xact_id()")  # it has a transaction id now
        outbox = make_outbox(database, redis_client)
        async with relaying(outbox):
            await commit(database, user_event(1))
            await eventually(lambda: published_count(redis_client, 1), within=2)
        await writing.rollback()
    finally:
        await conn.close()
        await _admin(pg_url, [f'DROP DATABASE IF EXISTS "{other}" WITH (FORCE)'])
