"""Consumer groups on a real Redis: history, dedup, reclaim, dead letters, outages."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from services.common.consumer import (
    Consumer,
    dead_letter_stream,
    set_aside_key,
    wait_caught_up,
)
from services.common.events import Event
from services.common.outbox import encode

from ..api import eventually
from ..infra import RedisServer
from .conftest import stop, user_event

GROUP = "testers"


async def publish(redis: aioredis.Redis, stream: str, event: Event) -> str:
    data = await encode(event.to_json(), event_id=str(event.event_id), event_type=event.type)
    return (await redis.xadd(stream, {"__data__": data})).decode()


class Recorder:
    """A handler that records what it handled; `poison` events always raise."""

    def __init__(self, poison: set[uuid.UUID] | None = None) -> None:
        self.handled: list[uuid.UUID] = []
        self.attempts: dict[uuid.UUID, int] = {}
        self.poison = poison or set()

    async def __call__(self, event: Event) -> None:
        self.attempts[event.event_id] = self.attempts.get(event.event_id, 0) + 1
        if event.event_id in self.poison:
            raise RuntimeError(f"poison {event.event_id}")
        self.handled.append(event.event_id)

    async def has(self, *events: Event) -> bool:
        return all(e.event_id in self.handled for e in events)


def make_consumer(
    redis: aioredis.Redis, stream: str, handler: Recorder, name: str = "c1", **options: float
) -> Consumer:
    return Consumer(redis, group=GROUP, consumer=name, streams=[stream], handler=handler, **options)


@contextlib.asynccontextmanager
async def consuming(consumer: Consumer) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(consumer.run())

    async def started() -> bool:
        assert not task.done(), task
        return consumer.running

    try:
        await eventually(started, within=5)
        yield task
    finally:
        await stop(task)


async def pending(redis: aioredis.Redis, stream: str) -> int:
    return (await redis.xpending(stream, GROUP))["pending"]


async def no_pending(redis: aioredis.Redis, stream: str) -> bool:
    return await pending(redis, stream) == 0


async def test_events_published_before_the_first_start_are_delivered(
    redis_client: aioredis.Redis, stream: str
) -> None:
    events = [user_event(i) for i in range(3)]
    for event in events:
        await publish(redis_client, stream, event)
    handler = Recorder()
    consumer = make_consumer(redis_client, stream, handler)
    assert not consumer.running
    async with consuming(consumer):
        await eventually(lambda: handler.has(*events), within=3)
        assert handler.handled == [e.event_id for e in events]
        assert consumer.running
        assert consumer.processed == 3 and consumer.dead_lettered == 0
        assert await pending(redis_client, stream) == 0
    assert not consumer.running


async def test_same_event_twice_is_handled_once(redis_client: aioredis.Redis, stream: str) -> None:
    twice, other = user_event(1), user_event(2)
    await publish(redis_client, stream, twice)
    await publish(redis_client, stream, twice)
    await publish(redis_client, stream, other)
    handler = Recorder()
    consumer = make_consumer(redis_client, stream, handler)
    async with consuming(consumer):
        await eventually(lambda: handler.has(other), within=3)
        # Delivered again later (a relay retry after a lost reply): still once.
        await publish(redis_client, stream, twice)
        last = user_event(3)
        await publish(redis_client, stream, last)
        await eventually(lambda: handler.has(last), within=3)
        assert handler.handled == [twice.event_id, other.event_id, last.event_id]
        assert consumer.processed == 3
        assert await pending(redis_client, stream) == 0  # duplicates are acknowledged


async def test_crashed_consumers_entry_is_reclaimed(
    redis_client: aioredis.Redis, stream: str
) -> None:
    orphan = user_event(1)
    await redis_client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    await publish(redis_client, stream, orphan)
    read = await redis_client.xreadgroup(GROUP, "dead", {stream: ">"}, count=10)
    assert len(read[0][1]) == 1  # "dead" holds it and never acknowledges it
    assert await pending(redis_client, stream) == 1

    handler = Recorder()
    consumer = make_consumer(
        redis_client, stream, handler, name="alive", claim_idle_ms=100, claim_every=0.2
    )
    async with consuming(consumer):
        await eventually(lambda: handler.has(orphan), within=3)
        await eventually(lambda: no_pending(redis_client, stream), within=2)
    assert handler.handled == [orphan.event_id]
    assert consumer.processed == 1


async def test_entries_reclaimed_from_several_streams_are_handled_in_order(
    redis_client: aioredis.Redis, stream: str
) -> None:
    other = stream + ".other"
    for name in (stream, other):
        await redis_client.xgroup_create(name, GROUP, id="0", mkstream=True)
    published: list[tuple[tuple[int, int], uuid.UUID]] = []
    for n in range(30):
        event = user_event(n)
        entry = await publish(redis_client, other if n % 3 == 0 else stream, event)
        published.append((_key(entry), event.event_id))
    # "dead" read them all and never acknowledged them.
    await redis_client.xreadgroup(GROUP, "dead", {stream: ">", other: ">"}, count=100)

    handler = Recorder()
    consumer = Consumer(
        redis_client,
        group=GROUP,
        consumer="alive",
        streams=[stream, other],
        handler=handler,
        claim_idle_ms=100,
        claim_every=0.2,
    )
    async with consuming(consumer):

        async def all_handled() -> bool:
            return len(handler.handled) >= len(published)

        await eventually(all_handled, within=5)
    assert_append_order(handler, published)


async def test_restart_with_same_name_rehandles_own_pending(
    redis_client: aioredis.Redis, stream: str
) -> None:
    event = user_event(1)
    await publish(redis_client, stream, event)
    entered = asyncio.Event()

    async def stuck(_event: Event) -> None:
        entered.set()
        await asyncio.Event().wait()  # the process dies before it acknowledges

    crashing = Consumer(
        redis_client, group=GROUP, consumer="replica-1", streams=[stream], handler=stuck
    )
    async with consuming(crashing):
        await asyncio.wait_for(entered.wait(), 3)
    assert await pending(redis_client, stream) == 1

    handler = Recorder()
    # Reclaiming from others is far off (30 s idle): only the start-up re-read can do it.
    restarted = make_consumer(redis_client, stream, handler, name="replica-1")
    async with consuming(restarted):
        await eventually(lambda: handler.has(event), within=1)
        await eventually(lambda: no_pending(redis_client, stream), within=1)
    assert handler.handled == [event.event_id]


async def test_poison_event_goes_to_dead_letters_after_max_deliveries(
    redis_client: aioredis.Redis, stream: str
) -> None:
    assert inspect.signature(Consumer).parameters["max_deliveries"].default == 5
    before, poison, after = user_event(1), user_event(2), user_event(3)
    await publish(redis_client, stream, before)
    poison_id = await publish(redis_client, stream, poison)
    await publish(redis_client, stream, after)
    handler = Recorder(poison={poison.event_id})
    consumer = make_consumer(
        redis_client, stream, handler, max_deliveries=3, claim_idle_ms=50, claim_every=0.1
    )
    dead = dead_letter_stream(stream)
    assert dead == f"{stream}.dead"
    async with consuming(consumer):
        await eventually(lambda: handler.has(before, after), within=2)

        async def dead_lettered() -> bool:
            return await redis_client.xlen(dead) == 1

        await eventually(dead_lettered, within=5)
        await eventually(lambda: no_pending(redis_client, stream), within=2)
        await asyncio.sleep(0.3)  # no further tries once it is dead-lettered
        assert handler.attempts[poison.event_id] == 3
        assert handler.handled == [before.event_id, after.event_id]
        assert consumer.processed == 2 and consumer.dead_lettered == 1
        later = user_event(4)
        await publish(redis_client, stream, later)
        await eventually(lambda: handler.has(later), within=2)

    [(_, fields)] = await redis_client.xrange(dead)
    assert fields[b"source_id"].decode() == poison_id
    assert fields[b"group"].decode() == GROUP
    assert b"poison" in fields[b"error"]
    [(_, original)] = await redis_client.xrange(stream, poison_id, poison_id)
    assert fields[b"__data__"] == original[b"__data__"]  # the event itself is kept


@pytest.mark.parametrize(
    "fields", [{"__data__": b"garbage"}, {"something": b"else"}], ids=["garbage", "no-data"]
)
async def test_undecodable_entry_goes_straight_to_dead_letters(
    redis_client: aioredis.Redis, stream: str, fields: dict[str, bytes]
) -> None:
    bad_id = (await redis_client.xadd(stream, fields)).decode()
    good = user_event(1)
    await publish(redis_client, stream, good)
    handler = Recorder()
    # Default retry settings: only a first-delivery decision is fast enough to pass.
    consumer = make_consumer(redis_client, stream, handler)
    async with consuming(consumer):
        await eventually(lambda: handler.has(good), within=2)

        async def dead_lettered() -> bool:
            return await redis_client.xlen(dead_letter_stream(stream)) == 1

        await eventually(dead_lettered, within=1)
        assert await pending(redis_client, stream) == 0
        assert consumer.dead_lettered == 1 and consumer.processed == 1
    [(_, dead)] = await redis_client.xrange(dead_letter_stream(stream))
    assert dead[b"source_id"].decode() == bad_id
    assert dead[b"error"].startswith(b"undecodable")
    for key, value in fields.items():
        assert dead[key.encode()] == value
    assert handler.handled == [good.event_id]


@pytest.mark.parametrize("how", ["destroy", "flushall"])
async def test_vanished_group_is_recreated(
    redis_client: aioredis.Redis, stream: str, how: str
) -> None:
    first = user_event(1)
    await publish(redis_client, stream, first)
    handler = Recorder()
    consumer = make_consumer(redis_client, stream, handler)
    async with consuming(consumer) as task:
        await eventually(lambda: handler.has(first), within=2)
        if how == "destroy":
            assert await redis_client.xgroup_destroy(stream, GROUP) == 1
        else:
            await redis_client.flushall()
        await asyncio.sleep(0.1)
        second = user_event(2)
        await publish(redis_client, stream, second)
        await eventually(lambda: handler.has(second), within=5)
        assert not task.done()
        assert consumer.running
        # Re-created at 0 after DESTROY, the group sees `first` again: dedup skips it.
        await asyncio.sleep(0.2)
        assert handler.handled == [first.event_id, second.event_id]
        assert await pending(redis_client, stream) == 0


async def test_consumer_survives_a_redis_restart(
    redis_client: aioredis.Redis, own_redis: RedisServer, stream: str
) -> None:
    first = user_event(1)
    await publish(redis_client, stream, first)
    handler = Recorder()
    consumer = make_consumer(redis_client, stream, handler)
    async with consuming(consumer) as task:
        await eventually(lambda: handler.has(first), within=2)
        await asyncio.to_thread(own_redis.stop)

        async def stopped() -> bool:
            return not consumer.running

        await eventually(stopped, within=5)
        assert consumer.last_error is not None
        await asyncio.to_thread(own_redis.start)

        async def resumed() -> bool:
            return consumer.running

        await eventually(resumed, within=8)
        assert consumer.last_error is None
        second = user_event(2)
        await publish(redis_client, stream, second)
        await eventually(lambda: handler.has(second), within=3)
        assert not task.done()
    assert handler.handled == [first.event_id, second.event_id]
    assert consumer.processed == 2


async def test_wait_caught_up(redis_client: aioredis.Redis, stream: str) -> None:
    handler = Recorder()
    events = [user_event(i) for i in range(3)]
    for event in events:
        await publish(redis_client, stream, event)
    # Nobody consumes yet: the barrier times out.
    assert not await wait_caught_up(redis_client, group=GROUP, streams=[stream], within=0.1)
    async with consuming(make_consumer(redis_client, stream, handler)):
        assert await wait_caught_up(redis_client, group=GROUP, streams=[stream], within=2)
        assert await handler.has(*events)
    # A stream that does not exist has nothing to wait for.
    assert await wait_caught_up(redis_client, group=GROUP, streams=["no.such.stream"])


async def test_wait_caught_up_on_an_empty_stream(redis_client: aioredis.Redis, stream: str) -> None:
    # A group's XGROUP CREATE ... MKSTREAM leaves an empty stream: nothing to wait for
    # (this was a Lua error, and GET /api/users a 500, on a fresh system).
    await redis_client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    assert await wait_caught_up(redis_client, group=GROUP, streams=[stream], within=0.1)


async def test_a_backlog_over_several_batches_is_handled_in_order_across_streams(
    redis_client: aioredis.Redis, stream: str
) -> None:
    """Two streams, one with more waiting than a batch holds: entries are handled in the
    order Redis appended them, not the short stream's newer ones before the long one's."""
    other = stream + ".other"
    published: list[tuple[tuple[int, int], uuid.UUID]] = []
    for n in range(260):
        if n % 13 == 0:
            event = user_event(n)
            entry = await publish(redis_client, other, event)
            published.append((_key(entry), event.event_id))
        event = user_event(10_000 + n)
        entry = await publish(redis_client, stream, event)
        published.append((_key(entry), event.event_id))
    handler = Recorder()
    consumer = Consumer(
        redis_client, group=GROUP, consumer="c1", streams=[stream, other], handler=handler, batch=50
    )
    async with consuming(consumer):

        async def all_handled() -> bool:
            return len(handler.handled) >= len(published)

        await eventually(all_handled, within=10)
    assert_append_order(handler, published)


def assert_append_order(
    handler: Recorder, published: list[tuple[tuple[int, int], uuid.UUID]]
) -> None:
    """Each published event handled once, never a newer entry before an older one. (Two
    streams can give the same id within a millisecond, as sequence numbers are per
    stream: such ties have no order to keep.)"""
    key_of = {event_id: key for key, event_id in published}
    assert sorted(handler.handled) == sorted(key_of)
    times = [key_of[event_id][0] for event_id in handler.handled]
    assert times == sorted(times)


def _key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


async def test_a_deferred_entry_stays_pending_until_released(
    redis_client: aioredis.Redis, stream: str
) -> None:
    """A handler may keep an entry unacknowledged (DEFER) and release it later: it is not
    reclaimed meanwhile, counts as retried (not in flight) for read barriers, and after a
    restart it comes again (the handler is told to forget what it held)."""
    from services.common.consumer import DEFER

    held, later = user_event(1), user_event(2)
    seen: list[uuid.UUID] = []
    restarts: list[int] = []
    consumer: Consumer

    async def handler(event: Event) -> object:
        seen.append(event.event_id)
        if event.event_id == held.event_id:
            return DEFER
        consumer.release(held.event_id)  # the next event lets the first one go
        return None

    await publish(redis_client, stream, held)
    consumer = Consumer(
        redis_client,
        group=GROUP,
        consumer="c1",
        streams=[stream],
        handler=handler,
        claim_idle_ms=50,
        claim_every=0.1,
        on_restart=lambda: restarts.append(1),
    )
    async with consuming(consumer):
        await eventually(lambda: asyncio.sleep(0, seen == [held.event_id]))
        await asyncio.sleep(0.4)  # several reclaims: none hands it over again
        assert seen == [held.event_id]
        assert consumer.deferred() == 1
        entries = await redis_client.xpending_range(stream, GROUP, min="-", max="+", count=5)
        aside = await redis_client.smembers(set_aside_key(stream, GROUP))
        assert {e["message_id"] for e in entries} <= aside  # not "in flight"
    assert restarts == [1]
    async with consuming(consumer):  # a restart: the held entry comes again
        await eventually(lambda: asyncio.sleep(0, seen == [held.event_id] * 2))
        await publish(redis_client, stream, later)
        await eventually(lambda: no_pending(redis_client, stream), within=3)
    assert seen == [held.event_id, held.event_id, later.event_id]
    assert consumer.deferred() == 0
