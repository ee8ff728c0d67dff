"""The read barrier, typed routing and batched units of work, on a real Redis and both databases."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.consumer import Consumer, ReadBarrier, Units, dead_letter_stream, route
from services.common.db import Database
from services.common.events import Event, UserRegistered
from services.common.outbox import encode, position_key

from ..api import eventually
from ..infra import RedisServer
from .conftest import Note, stop, user_event
from .test_consumer import GROUP, Recorder, consuming, no_pending, publish


class Slow(Recorder):
    """A handler that takes `delay` seconds per event (a consumer under load)."""

    def __init__(self, delay: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.delay = delay

    async def __call__(self, event: Event) -> None:
        await asyncio.sleep(self.delay)
        await super().__call__(event)


@contextlib.asynccontextmanager
async def barrier_running(barrier: ReadBarrier) -> AsyncIterator[None]:
    task = asyncio.create_task(barrier.run())
    try:
        yield
    finally:
        await stop(task)


def consumer_for(
    redis: aioredis.Redis, stream: str, handler: Any, barrier: ReadBarrier | None = None, **kw: Any
) -> Consumer:
    return Consumer(
        redis,
        group=GROUP,
        consumer="c1",
        streams=[stream],
        handler=handler,
        on_settled=barrier.kick if barrier else None,
        **kw,
    )


async def test_barrier_target_is_fixed_when_the_call_arrives(
    redis_client: aioredis.Redis, stream: str
) -> None:
    """Under steady inflow the group is never "caught up right now"; the barrier waits only
    for what was on the stream when it was called (the old check starved here)."""
    handler = Slow(0.01)
    barrier = ReadBarrier(redis_client, group=GROUP, streams=[stream])
    consumer = consumer_for(redis_client, stream, handler, barrier, batch=1)
    stop_feed = asyncio.Event()

    async def feed() -> None:
        n = 100
        while not stop_feed.is_set():
            n += 1
            await publish(redis_client, stream, user_event(n))
            await asyncio.sleep(0.005)  # faster than the consumer's 10 ms per event

    async with consuming(consumer), barrier_running(barrier):
        feeder = asyncio.create_task(feed())
        try:
            await asyncio.sleep(0.2)
            marker = user_event(1)
            await publish(redis_client, stream, marker)
            assert await barrier.wait(within=10)
            # Everything up to the marker is handled, though the stream has grown since.
            assert marker.event_id in handler.handled
            assert await redis_client.xlen(stream) > len(handler.handled)
        finally:
            stop_feed.set()
            await feeder


async def test_barrier_is_immediate_when_idle_and_on_an_empty_stream(
    redis_client: aioredis.Redis, stream: str
) -> None:
    barrier = ReadBarrier(redis_client, group=GROUP, streams=[stream, "no.such.stream"])
    assert await barrier.wait(within=0.1)  # nothing was ever published
    handler = Recorder()
    event = user_event(1)
    await publish(redis_client, stream, event)
    assert not await barrier.wait(within=0.05)  # published, nobody consumes
    consumer = consumer_for(redis_client, stream, handler, barrier)
    async with consuming(consumer), barrier_running(barrier):
        assert await barrier.wait(within=5)
        assert handler.handled == [event.event_id]


async def test_a_failing_entry_does_not_hold_the_barrier_or_the_entries_behind_it(
    redis_client: aioredis.Redis, stream: str
) -> None:
    poison, after = user_event(1), user_event(2)
    handler = Recorder(poison={poison.event_id})
    barrier = ReadBarrier(redis_client, group=GROUP, streams=[stream])
    # Retried only after 30 s: the barrier must not wait for that.
    consumer = consumer_for(redis_client, stream, handler, barrier, claim_idle_ms=30_000)
    async with consuming(consumer), barrier_running(barrier):
        await publish(redis_client, stream, poison)
        await publish(redis_client, stream, after)
        # Retried only after 30 s: a barrier that waited for it would say no here.
        assert await barrier.wait(within=10)
        assert handler.handled == [after.event_id]
        assert handler.attempts[poison.event_id] == 1
        assert await redis_client.xlen(dead_letter_stream(stream)) == 0  # retried, not dead


async def test_an_entry_delivered_again_after_a_crash_is_waited_for(
    redis_client: aioredis.Redis, stream: str
) -> None:
    """A consumer that died holding an entry (or a Redis restart that hands it over again)
    leaves it delivered twice and unhandled: the barrier must wait for it, as for any entry
    in flight (it once took "delivered more than once" for "a failing entry, set aside",
    and an answer right after a Redis restart read a copy without it)."""
    event = user_event(1)
    await redis_client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    await publish(redis_client, stream, event)
    await redis_client.xreadgroup(GROUP, "dead", {stream: ">"}, count=10)
    [entry] = await redis_client.xpending_range(stream, GROUP, min="-", max="+", count=1)
    await redis_client.xclaim(stream, GROUP, "other", 0, [entry["message_id"]])  # delivery 2
    barrier = ReadBarrier(redis_client, group=GROUP, streams=[stream])
    async with barrier_running(barrier):
        assert not await barrier.wait(within=0.2)
        handler = Recorder()
        consumer = consumer_for(redis_client, stream, handler, barrier, claim_idle_ms=50)
        async with consuming(consumer):
            assert await barrier.wait(within=5)  # handled once reclaimed
            assert handler.handled == [event.event_id]


async def test_barrier_says_no_while_redis_is_down(own_redis: RedisServer, stream: str) -> None:
    from services.common.service_app import make_redis

    client = make_redis(own_redis.url)
    try:
        barrier = ReadBarrier(client, group=GROUP, streams=[stream])
        async with barrier_running(barrier):
            own_redis.stop()
            assert not await barrier.wait(within=1)
            own_redis.start()
            assert await eventually(lambda: barrier.wait(within=0.5), within=10)
    finally:
        await client.aclose()


async def test_unknown_event_types_are_acknowledged_and_skipped(
    redis_client: aioredis.Redis, stream: str
) -> None:
    """A newer producer's type (parsed as a bare envelope) or a known type with no handler
    is skipped and acknowledged; it never reaches a handler or the dead letters."""
    seen: list[str] = []

    async def on_user(event: UserRegistered) -> None:
        seen.append(event.data.user.email)

    unknown = Event(type="user.archived", producer="auth", data={"anything": [1, 2]})
    known = user_event(7)
    consumer = consumer_for(redis_client, stream, route({UserRegistered: on_user}))
    await publish(redis_client, stream, unknown)
    await publish(redis_client, stream, known)
    async with consuming(consumer):
        await eventually(lambda: no_pending(redis_client, stream), within=5)
        assert seen == ["user7@example.com"]
        assert await redis_client.xlen(dead_letter_stream(stream)) == 0
        assert consumer.dead_lettered == 0


def _note_unit(event: UserRegistered):  # a unit of work per event, as the services' bus.py
    def add(session: Session) -> None:
        if event.data.user.id == 99:
            raise ValueError("unlucky")
        session.add(Note(text=event.data.user.email))

    return add


async def _notes(database: Database) -> list[str]:
    return await database.query(lambda s: list(s.scalars(select(Note.text).order_by(Note.id))))


async def test_units_apply_a_batch_in_one_transaction(
    database: Database, redis_client: aioredis.Redis, stream: str
) -> None:
    commits = 0

    def count(_session: Session) -> None:
        nonlocal commits
        commits += 1

    database.on_after_commit(count)
    events = [user_event(i) for i in range(1, 21)]
    for event in events:
        await publish(redis_client, stream, event)
    units = Units(database, {UserRegistered: _note_unit})
    async with consuming(consumer_for(redis_client, stream, units)):
        await eventually(lambda: no_pending(redis_client, stream), within=5)
    assert await _notes(database) == [f"user{i}@example.com" for i in range(1, 21)]
    assert commits == 1  # twenty events, one commit


async def test_units_fall_back_to_one_by_one_around_a_failing_event(
    database: Database, redis_client: aioredis.Redis, stream: str
) -> None:
    events = [user_event(i) for i in (11, 12, 99, 14)]
    for event in events:
        await publish(redis_client, stream, event)
    units = Units(database, {UserRegistered: _note_unit})
    consumer = consumer_for(redis_client, stream, units, claim_idle_ms=30_000)
    async with consuming(consumer):

        async def applied() -> bool:
            return len(await _notes(database)) == 3

        await eventually(applied, within=5)
        assert await _notes(database) == [f"user{i}@example.com" for i in (11, 12, 14)]

        # The failing one is pending, to be retried; the others are acknowledged.
        async def only_the_failing_one_pending() -> bool:
            return (await redis_client.xpending(stream, GROUP))["pending"] == 1

        await eventually(only_the_failing_one_pending, within=5)


async def _publish_row(redis: aioredis.Redis, stream: str, event: Event, row: int) -> None:
    """As the outbox relay appends: the event, and the position of the row it came from."""
    data = await encode(event.to_json(), event_id=str(event.event_id), event_type=event.type)
    await redis.xadd(stream, {"__data__": data, "row": row})
    await redis.set(position_key(stream), row)


async def test_barrier_waits_for_a_change_the_gateway_saw_answered(
    redis_client: aioredis.Redis, stream: str
) -> None:
    """A change answered before its event reached the stream (Redis was down, a slow relay)
    is passed on by the gateway as its outbox row: the barrier waits until an entry that
    new is on the stream and handled, instead of deciding on what is there now."""
    handler = Recorder()
    barrier = ReadBarrier(redis_client, group=GROUP, streams=[stream])
    consumer = consumer_for(redis_client, stream, handler, barrier)
    async with consuming(consumer), barrier_running(barrier):
        await _publish_row(redis_client, stream, user_event(1), row=5)
        assert await barrier.wait(within=5, after={stream: 5})
        assert not await barrier.wait(within=0.3, after={stream: 7})  # row 7 not out yet
        waiting = asyncio.create_task(barrier.wait(within=10, after={stream: 7, "other": 9}))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        late = user_event(2)
        await _publish_row(redis_client, stream, late, row=7)
        assert await waiting
        assert late.event_id in handler.handled  # applied, not merely on the stream
