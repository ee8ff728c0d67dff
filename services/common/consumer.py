"""Consumer groups on Redis Streams: at-least-once delivery, applied once per event.

Written on redis-py rather than a FastStream subscriber because FastStream 0.7 creates
groups at `$` (skipping history), reclaims with a separate XAUTOCLAIM-only subscriber one
entry at a time, and stops for good when the group disappears (TECH-NOTES.md §1.3-1.5).
This loop does all of it in one place:

- the group is created at `0`, so events published before the first start are read;
- the consumer name is stable per replica, and on start it re-reads its own pending
  entries (a crash between handling and XACK), then new ones with `>`;
- entries idle in another consumer's pending list are taken over with XAUTOCLAIM;
- an event whose id was already applied is acknowledged without running the handler;
- events are routed by type to typed handlers (`route`); a type the consumer does not
  know is acknowledged and skipped, never dead-lettered;
- a handler failure leaves the entry pending and the entries behind it go on; it is
  retried after `claim_idle_ms`, and after `max_deliveries` it is copied to
  `<stream>.dead` and acknowledged, so one poison event never blocks the rest;
- a dependency down (the database) stops the batch instead: the entries wait, in order,
  and are handled again when it is back;
- a vanished group (Redis restarted without persistence, FLUSHALL) is re-created.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis.exceptions
from faststream.redis.parser import BinaryMessageFormatV1
from pydantic import ValidationError
from redis.asyncio import Redis
from sqlalchemy.orm import Session

from .db import Database
from .events import Event, parse_event
from .outbox import Outbox, position_key
from .problems import is_unavailable
from .tasks import ErrorOnce, honour_cancellation

log = logging.getLogger(__name__)

Entry = tuple[str, str, dict[bytes, bytes]]  # stream, entry id, fields


class Deferred:
    """What a handler returns to keep its entry unacknowledged for now (`Consumer.release`
    acknowledges it later): the notifier holds back entries to keep each user's order."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "DEFER"


DEFER = Deferred()
Handler = Callable[[Event], Awaitable[Deferred | None]]
# How long the consumer holds everything back for answered rows that do not reach their
# stream (a producer that died with them in its outbox): then it goes on without them.
COVER_MAX_SECONDS = 10.0
COVER_POLL_SECONDS = 0.01
DEDUP_TTL_SECONDS = 7 * 24 * 3600
STALL_SECONDS = 2.0  # a blocking read this much over its timeout means Redis was frozen


def route(handlers: Mapping[type[Event], Callable[[Any], Awaitable[None]]]) -> Handler:
    """One handler that sends each event to the handler of its type (its class).

    A type with no handler, including one this code does not know at all (a newer
    producer), is skipped: the consumer then acknowledges it like any handled event.
    """
    table = dict(handlers)

    async def handle(event: Event) -> None:
        typed = table.get(type(event))
        if typed is None:
            log.debug("skipping %s event %s: no handler here", event.type, event.event_id)
            return
        await typed(event)

    return handle


UnitOfWork = Callable[[Session], Any]


class Units:
    """Typed handlers whose work is a unit of work on the service's own database.

    Each maps an event to a function of a `Session`. One event is applied in a transaction
    of its own; a batch read together is applied in ONE transaction (`many`), so a
    consumer behind by a hundred events pays one commit, not a hundred, and its copies
    catch up in milliseconds. A type with no handler is skipped (and acknowledged).
    """

    def __init__(
        self,
        db: Database,
        handlers: Mapping[type[Event], Callable[[Any], UnitOfWork]],
        *,
        batch: Callable[[Sequence[Any]], UnitOfWork] | None = None,
    ) -> None:
        self.db = db
        self.table = dict(handlers)
        # One unit for a whole batch of handled events (fewer statements than a unit per
        # event); None: the units of the events, one after the other.
        self.batch = batch
        # The service's outbox (set when the app is built): events a unit stages (a
        # cascade) are on their stream before the entries that caused them are
        # acknowledged, so a caller that waited for the group also waited for them.
        self.outbox: Outbox | None = None

    def _published(self) -> contextlib.AbstractAsyncContextManager[None]:
        if self.outbox is None:
            return contextlib.nullcontext()
        return self.outbox.published_on_exit()

    async def __call__(self, event: Event) -> None:
        build = self.table.get(type(event))
        if build is None:
            log.debug("skipping %s event %s: no handler here", event.type, event.event_id)
            return
        async with self._published():
            await self.db.write(build(event), background=True)

    async def many(self, events: Sequence[Event]) -> None:
        handled = [e for e in events if type(e) in self.table]
        if not handled:
            return
        if self.batch is not None:
            async with self._published():
                await self.db.write(self.batch(handled), background=True)
            return
        units = [self.table[type(e)](e) for e in handled]

        def apply_all(session: Session) -> None:
            for unit in units:
                unit(session)

        async with self._published():
            await self.db.write(apply_all, background=True)


def dead_letter_stream(stream: str) -> str:
    return f"{stream}.dead"


def set_aside_key(stream: str, group: str) -> str:
    """The entries of `stream` that `group` set aside: pending, but not in flight (being
    retried after a failure, or held back on purpose). Read barriers do not wait for them.
    Ids are never reused, so members left behind once an entry is acknowledged are
    harmless; the set expires a while after its last addition."""
    return f"{stream}:set-aside:{group}"


SET_ASIDE_TTL_SECONDS = 2 * 24 * 3600


def decode_entry(fields: dict[bytes, bytes]) -> Event:
    """Parse one stream entry (FastStream binary frame, or a bare JSON field) into an Event."""
    raw = fields.get(b"__data__")
    if raw is None:
        raise ValueError("entry has no __data__ field")
    body, _headers = BinaryMessageFormatV1.parse(raw)
    return parse_event(body)


class Consumer:
    """One consumer of one group over one or more streams."""

    def __init__(
        self,
        redis: Redis,
        *,
        group: str,
        consumer: str,
        streams: Sequence[str],
        handler: Handler,
        max_deliveries: int = 5,
        claim_idle_ms: int = 30_000,
        claim_every: float = 5.0,
        batch: int = 100,
        block_ms: int = 2_000,
        dedup: bool = True,
        on_settled: Callable[[], None] | None = None,
        settle_after_outage: float = 0.0,
        required_rows: Callable[[], Mapping[str, int]] | None = None,
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        self.redis = redis
        self.group = group
        self.consumer = consumer
        self.streams = list(streams)
        self.handler = handler
        self.max_deliveries = max_deliveries
        self.claim_idle_ms = claim_idle_ms
        self.claim_every = claim_every
        self.batch = batch
        self.block_ms = block_ms
        # Off for a handler that de-duplicates atomically with its own effect (the
        # notifier's append): the marks here would be two more Redis writes per event.
        self.dedup = dedup
        # Told after every acknowledgement (a ReadBarrier's kick: waiters look again).
        self.on_settled = on_settled
        # After Redis was down or frozen, wait this long before handling anything: every
        # relay's backlog lands meanwhile, and entries merged from several streams keep the
        # order of their commits (the notifier's per-user order; see outbox.XADD_AT).
        self.settle_after_outage = settle_after_outage
        # Outbox rows (per stream) that must have been read before anything is handled: the
        # notifier's, those of changes the gateway answered before they were on their
        # stream (Redis was down). A backlog that lands late then still merges in order.
        self.required_rows = required_rows
        self._covered: dict[str, int] = {}  # each stream read up to this row
        self._confirmed: dict[str, int] = {}  # on the stream; the next full read covers it
        self._cover_since: float | None = None
        # Told each time the loop (re)starts, before the pending entries are read again:
        # a handler that defers entries forgets them then (they all come again).
        self.on_restart = on_restart
        # Entries a handler deferred (event id -> stream, entry id), and those it released
        # since, to acknowledge with the batch being handled.
        self._deferred: dict[str, tuple[str, str]] = {}
        self._released: list[tuple[str, str, str]] = []
        self.recovering = False
        self._errors = ErrorOnce(log, f"consumer {group}/{consumer}")
        self.running = False
        self.last_error: str | None = None
        self.processed = 0
        self.dead_lettered = 0

    def _dedup_key(self, event_id: Any) -> str:
        return f"consumed:{self.group}:{event_id}"

    async def ensure_groups(self) -> None:
        for stream in self.streams:
            try:
                await self.redis.xgroup_create(stream, self.group, id="0", mkstream=True)
            except redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def run(self) -> None:
        """Consume until cancelled; outages only pause it, and an unexpected error is
        logged once with its traceback, then retried."""
        backoff = 0.1
        while True:
            try:
                await self.ensure_groups()
                if self.recovering and self.settle_after_outage:
                    await asyncio.sleep(self.settle_after_outage)
                self.recovering = False
                self._deferred.clear()
                self._released.clear()
                self._covered.clear()
                self._confirmed.clear()
                if self.on_restart is not None:
                    self.on_restart()
                await self._drain_own_pending()
                self.running = True
                self._errors.clear()
                self.last_error = None
                backoff = 0.1
                await self._loop()
            except asyncio.CancelledError:
                self.running = False
                raise
            except redis.exceptions.ResponseError as exc:
                self.running = False
                self.recovering = True
                if "NOGROUP" in str(exc) or "UNBLOCKED" in str(exc):
                    log.warning("group %s vanished; re-creating it", self.group)
                    continue
                self._note(exc, expected=False)
            except Exception as exc:
                self.running = False
                self.recovering = True
                expected = isinstance(exc, redis.exceptions.RedisError | OSError)
                self._note(exc, expected=expected or is_unavailable(exc))
            await asyncio.sleep(backoff)
            # At most a second: once Redis is back, consumers are back within a second.
            backoff = min(backoff * 2, 1.0)

    def release(self, event_id: Any) -> None:
        """Acknowledge, with the batch being handled, an entry its handler deferred."""
        found = self._deferred.pop(str(event_id), None)
        if found is not None:
            self._released.append((*found, self._dedup_key(event_id)))

    def deferred(self) -> int:
        return len(self._deferred)

    def _note(self, exc: BaseException, *, expected: bool) -> None:
        self._errors.note(exc, expected=expected)
        self.last_error = repr(exc)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_claim = loop.time() + self.claim_every
        held: list[Entry] = []  # read, not handled yet (see `_in_order`)
        read_on = False  # read again at once, without blocking
        while True:
            if loop.time() >= next_claim:
                await self.reclaim()
                next_claim = loop.time() + self.claim_every
            timeout_ms = max(1, min(self.block_ms, int((next_claim - loop.time()) * 1000)))
            started = loop.time()
            reply = await self.redis.xreadgroup(
                self.group,
                self.consumer,
                dict.fromkeys(self.streams, ">"),
                count=self.batch,
                block=None if held or read_on else timeout_ms,  # held entries must not wait
            )
            honour_cancellation()
            stalled = loop.time() - started > timeout_ms / 1000 + STALL_SECONDS
            if stalled and self.settle_after_outage:
                # Redis was frozen: hold what came, let the relays' backlogs land, then
                # merge them in (the next read does not block while entries are held).
                ready, rest = self._in_order(reply, held)
                held = ready + rest
                await asyncio.sleep(self.settle_after_outage)
                continue
            read_on = False
            if self.required_rows is not None and not await self._cover(reply):
                # A change answered before its event was on the stream is not among what
                # was read yet: read on and merge it in before handling anything.
                ready, rest = self._in_order(reply, held)
                held, read_on = ready + rest, True
                continue
            ready, held = self._in_order(reply, held)
            await self._handle_batch(ready)

    async def _cover(self, reply: Any) -> bool:
        """Have the rows `required_rows` names all been read? If not, wait (briefly) until
        they are on their streams, and say so: the caller reads on."""
        assert self.required_rows is not None
        counts = {_s(stream): entries for stream, entries in reply or []}
        for stream in self.streams:
            entries = counts.get(stream, [])
            for _, fields in entries:
                row = (fields or {}).get(b"row", b"")
                if row.isdigit() and int(row) > self._covered.get(stream, 0):
                    self._covered[stream] = int(row)
            if stream in self._confirmed and len(entries) < self.batch:
                # Read after its rows were seen on the stream, and not cut short: covered.
                confirmed = self._confirmed.pop(stream)
                self._covered[stream] = max(self._covered.get(stream, 0), confirmed)
        needed = {
            stream: row
            for stream, row in self.required_rows().items()
            if stream in self.streams and row > self._covered.get(stream, 0)
        }
        loop = asyncio.get_running_loop()
        if not needed:
            self._cover_since = None
            return True
        if self._cover_since is None:
            self._cover_since = loop.time()
        elif loop.time() - self._cover_since > COVER_MAX_SECONDS:
            log.warning(
                "%s: answered outbox rows %s never reached their streams; going on without",
                self.group,
                needed,
            )
            for stream, row in needed.items():
                self._covered[stream] = row
            self._cover_since = None
            return True
        values = await self.redis.mget([position_key(stream) for stream in needed])
        behind = False
        for (stream, row), value in zip(needed.items(), values, strict=True):
            on_stream = int(value) if value and value.isdigit() else 0
            if on_stream >= row:
                self._confirmed[stream] = max(self._confirmed.get(stream, 0), on_stream)
            else:
                behind = True
        if behind:
            await asyncio.sleep(COVER_POLL_SECONDS)
        return False

    def _in_order(self, reply: Any, held: list[Entry]) -> tuple[list[Entry], list[Entry]]:
        """Entries of several streams in the order the changes committed (the relays
        give each entry its commit time as id), and those to hold back for the next read.

        A stream that filled its batch may have older entries still waiting than another
        stream's newest: only entries up to the oldest such batch end are handled now, the
        rest wait to be merged with the next read. A backlog that spans streams then keeps
        the order in which the changes happened. Sequence numbers are per stream, so two
        streams can give equal times: such ties go in the order of `streams`, which lists
        the causes before their consequences.
        """
        merged = list(held)
        horizon: tuple[int, int, int] | None = None
        for stream, entries in reply or []:
            if not entries:
                continue
            merged += [(_s(stream), _s(i), f) for i, f in entries]
            if len(entries) >= self.batch:
                end = self._order_key((_s(stream), _s(entries[-1][0]), {}))
                horizon = end if horizon is None else min(horizon, end)
        merged.sort(key=self._order_key)
        if horizon is None:
            return merged, []
        ready = [e for e in merged if self._order_key(e) <= horizon]
        return ready, merged[len(ready) :]

    def _order_key(self, entry: Entry) -> tuple[int, int, int]:
        ms, seq = _id_tuple(entry[1])
        rank = self.streams.index(entry[0]) if entry[0] in self.streams else len(self.streams)
        return ms, rank, seq

    async def _drain_own_pending(self) -> None:
        """Re-handle what this consumer read but never acknowledged before it stopped."""
        cursor = dict.fromkeys(self.streams, "0")
        held: list[Entry] = []
        while cursor:
            reply = await self.redis.xreadgroup(self.group, self.consumer, cursor, count=self.batch)
            progressed = {}
            for stream, entries in reply or []:
                if entries:
                    progressed[_s(stream)] = _s(entries[-1][0])
            ready, held = self._in_order(reply, held)
            await self._handle_batch(ready)
            cursor = {s: i for s, i in progressed.items() if s in cursor}
        await self._handle_batch(held)

    async def reclaim(self) -> int:
        """Take over entries left idle by a crashed consumer of the same group, and handle
        them in the order Redis appended them, across streams (a consumer's pending list
        is small: what it had read and not yet acknowledged)."""
        claimed: list[Entry] = []
        deferred = set(self._deferred.values())  # held back on purpose, not stuck
        for stream in self.streams:
            start = "0-0"
            while True:
                reply = await self.redis.xautoclaim(
                    stream,
                    self.group,
                    self.consumer,
                    min_idle_time=self.claim_idle_ms,
                    start_id=start,
                    count=self.batch,
                )
                start, entries = _s(reply[0]), reply[1]
                claimed += [
                    (stream, _s(e[0]), e[1])
                    for e in entries
                    if e and e[1] is not None and (stream, _s(e[0])) not in deferred
                ]
                if start == "0-0":
                    break
        claimed.sort(key=self._order_key)
        await self._handle_batch(claimed)
        return len(claimed)

    async def _handle_batch(self, batch: list[Entry]) -> None:
        """Handle entries in order, with one round trip to Redis before (which were handled
        already?) and one after (mark handled + acknowledge), not two per entry."""
        decoded: list[tuple[str, str, dict[bytes, bytes], Event]] = []
        for stream, entry_id, fields in batch:
            try:
                decoded.append((stream, entry_id, fields, decode_entry(fields or {})))
            except (ValidationError, ValueError) as exc:
                log.error("undecodable entry %s on %s: %s", entry_id, stream, exc)
                await self._dead_letter(stream, entry_id, fields or {}, f"undecodable: {exc}")
        if not decoded:
            return
        keys = [self._dedup_key(event.event_id) for *_, event in decoded]
        seen: set[str] = set()
        if self.dedup:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.exists(key)
                found = await pipe.execute()
            seen = {key for key, hit in zip(keys, found, strict=True) if hit}
        done: list[tuple[str, str, str]] = []  # (stream, entry id, dedup key) to settle
        newly_deferred: list[tuple[str, str]] = []
        many = getattr(self.handler, "many", None)
        fresh = [(d, k) for d, k in zip(decoded, keys, strict=True) if k not in seen]
        if many is not None and len(fresh) > 1 and len({k for _, k in fresh}) == len(fresh):
            try:
                await many([event for (*_, event), _ in fresh])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if is_unavailable(exc) or isinstance(exc, redis.exceptions.ConnectionError):
                    raise  # a dependency is down: the batch waits, in order
                # Something in the batch fails: apply one by one below, so the entries
                # that can be applied are, and only the failing one is retried.
                log.info("batch of %d failed in %s (%r); one by one", len(fresh), self.group, exc)
            else:
                self.processed += len(fresh)
                done = [
                    (stream, entry_id, key)
                    for (stream, entry_id, _, _), key in zip(decoded, keys, strict=True)
                ]
                done += self._released
                self._released = []
                await asyncio.shield(self._settle(done))
                return
        try:
            for (stream, entry_id, fields, event), key in zip(decoded, keys, strict=True):
                if key in seen:  # handled before, or earlier in this batch (a duplicate)
                    done.append((stream, entry_id, key))
                    continue
                event_id = str(event.event_id)
                # Registered before the handler runs, which may release it at once; a second
                # copy of an event already deferred is never registered over the first.
                mine = event_id not in self._deferred
                if mine:
                    self._deferred[event_id] = (stream, entry_id)
                try:
                    result = await self.handler(event)
                except asyncio.CancelledError:
                    raise
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    raise  # Redis itself is down: the loop waits, the entry stays pending
                except Exception as exc:
                    if mine:
                        self._deferred.pop(event_id, None)
                    if is_unavailable(exc):
                        raise  # the database is down: this and what follows wait, in order
                    await self._failed(stream, entry_id, fields, event, exc)
                    continue
                if result is DEFER and mine and event_id in self._deferred:
                    newly_deferred.append((stream, entry_id))
                    continue
                if mine:
                    self._deferred.pop(event_id, None)
                seen.add(key)
                done.append((stream, entry_id, key))
                self.processed += 1
        finally:
            # What was handled is settled even when a later entry stops the batch; if this
            # is lost, the entries come again and the idempotent handlers see them twice.
            done += self._released
            self._released = []
            if done or newly_deferred:
                await asyncio.shield(self._settle(done, newly_deferred))

    async def _settle(
        self, done: list[tuple[str, str, str]], deferred: Sequence[tuple[str, str]] = ()
    ) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            for stream, entry_id, key in done:
                if self.dedup:
                    pipe.set(key, 1, ex=DEDUP_TTL_SECONDS)
                pipe.xack(stream, self.group, entry_id)
            if deferred:
                # Held back on purpose: set aside, so read barriers do not wait for it as for
                # an entry in flight (it comes when its turn does).
                self._aside_commands(pipe, deferred)
            await pipe.execute()
        if self.on_settled is not None:
            self.on_settled()

    async def _failed(
        self, stream: str, entry_id: str, fields: dict[bytes, bytes], event: Event, exc: Exception
    ) -> None:
        pending = await self.redis.xpending_range(
            stream, self.group, min=entry_id, max=entry_id, count=1
        )
        tries = pending[0]["times_delivered"] if pending else 1
        if tries >= self.max_deliveries:
            log.error(
                "event %s (%s) failed %d times in %s; dead-lettered",
                event.event_id,
                event.type,
                tries,
                self.group,
                exc_info=exc,
            )
            await self._dead_letter(stream, entry_id, fields, repr(exc))
            return
        log.warning(
            "event %s (%s) failed in %s (try %d of %d), will retry: %r",
            event.event_id,
            event.type,
            self.group,
            tries,
            self.max_deliveries,
            exc,
            exc_info=tries == 1,  # the traceback once, on the first failure
        )
        # Set aside: read barriers stop waiting for it (it is being retried, not in
        # flight); the retry comes after claim_idle_ms.
        await self._set_aside([(stream, entry_id)])
        if self.on_settled is not None:
            self.on_settled()

    def _aside_commands(self, pipe: Any, entries: Sequence[tuple[str, str]]) -> None:
        for stream in {stream for stream, _ in entries}:
            key = set_aside_key(stream, self.group)
            pipe.sadd(key, *(entry_id for s, entry_id in entries if s == stream))
            pipe.expire(key, SET_ASIDE_TTL_SECONDS)

    async def _set_aside(self, entries: Sequence[tuple[str, str]]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            self._aside_commands(pipe, entries)
            await pipe.execute()

    async def _dead_letter(
        self, stream: str, entry_id: str, fields: dict[bytes, bytes], reason: str
    ) -> None:
        record = {**fields, b"source_id": entry_id, b"group": self.group, b"error": reason[:1000]}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(dead_letter_stream(stream), record, maxlen=10_000, approximate=True)
            pipe.xack(stream, self.group, entry_id)
            await pipe.execute()
        self.dead_lettered += 1


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id_tuple(entry_id: Any) -> tuple[int, int]:
    ms, _, seq = _s(entry_id).partition("-")
    return int(ms), int(seq or 0)


# How far `group` has got on each stream of KEYS (the streams, their position keys, then
# their set-aside keys), in one round trip: the stream's newest entry id, the position of
# the newest outbox row its relay put on it (outbox.position_key), the group's
# last-delivered id, and its oldest entry still in flight (delivered and not acknowledged;
# "" when none). Entries set aside (a failing handler's, being retried; the notifier's,
# held back on purpose) do not count as in flight, so one bad entry never holds readers
# up; an entry delivered again after a crash or a Redis restart does.
PROGRESS = """
local out = {}
local n = #KEYS / 3
for i = 1, n do
  local key = KEYS[i]
  local last, delivered, inflight = '0-0', '0-0', ''
  local row = redis.call('GET', KEYS[n + i]) or '0'
  if redis.call('EXISTS', key) == 1 then
    local top = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
    if #top > 0 then last = top[1][1] end
    local found = false
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
      local name, seen
      for j = 1, #g, 2 do
        if g[j] == 'name' then name = g[j + 1] end
        if g[j] == 'last-delivered-id' then seen = g[j + 1] end
      end
      if name == ARGV[1] then delivered = seen; found = true end
    end
    if found then
      for _, p in ipairs(redis.call('XPENDING', key, ARGV[1], '-', '+', 100)) do
        if redis.call('SISMEMBER', KEYS[2 * n + i], p[1]) == 0 then inflight = p[1]; break end
      end
    end
  end
  out[#out + 1] = last
  out[#out + 1] = row
  out[#out + 1] = delivered
  out[#out + 1] = inflight
end
return out
"""

EntryId = tuple[int, int]
POLL_SECONDS = 0.003
SCAN_LIMIT = 500  # entries in flight a barrier reads through to see if any concern it


@dataclass(frozen=True, slots=True)
class StreamProgress:
    last: EntryId  # the newest entry on the stream
    row: int  # the producer's outbox row that entry carries (0: none)
    delivered: EntryId  # the group's last-delivered id
    inflight: EntryId | None  # the group's oldest entry in flight (not set aside)

    def handled(self, target: EntryId) -> bool:
        """Has the group handled (or, for now, given up on) every entry up to `target`?"""
        return target <= self.delivered and (self.inflight is None or target < self.inflight)


def _progress_keys(streams: Sequence[str], group: str) -> list[str]:
    return [
        *streams,
        *(position_key(stream) for stream in streams),
        *(set_aside_key(stream, group) for stream in streams),
    ]


def _format_id(entry_id: EntryId) -> str:
    return f"{entry_id[0]}-{entry_id[1]}"


def _parse_progress(reply: Sequence[Any]) -> list[StreamProgress]:
    values = [_s(v) for v in reply]
    return [
        StreamProgress(
            last=_id_tuple(values[i]),
            row=int(values[i + 1]) if values[i + 1].isdigit() else 0,
            delivered=_id_tuple(values[i + 2]),
            inflight=_id_tuple(values[i + 3]) if values[i + 3] else None,
        )
        for i in range(0, len(values), 4)
    ]


@dataclass(slots=True)
class _Waiter:
    marks: list[int]  # outbox rows that must be on each stream before targets are set
    targets: list[EntryId] | None
    done: asyncio.Future[bool]

    def check(self, progress: list[StreamProgress]) -> bool:
        if self.targets is None:
            if any(p.row < mark for p, mark in zip(progress, self.marks, strict=True)):
                return False  # a change the caller knows of is not on its stream yet
            self.targets = [p.last for p in progress]
        return all(p.handled(t) for p, t in zip(progress, self.targets, strict=True))


class CatchUp(Protocol):
    """The read barrier as the use cases see it (`ReadBarrier.wait`, bound to the app)."""

    def __call__(self, about: Callable[[Event], bool] | None = None) -> Awaitable[bool]: ...


class CopyBehind(Exception):
    """A refusal would rest on a local copy that could not be confirmed current (Redis
    down, or the consumer behind): answered 503 with Retry-After, never 403/404."""

    retry_after = 1


class ReadBarrier:
    """Read-your-writes on a service's local copies of other services' records.

    A call whose answer depends on another service's recent change (an invite right after
    the connection's accept) waits until the service's group has handled every entry that
    was on the streams *when the call arrived*. The target is fixed then: a stream that
    keeps growing under load never moves the goal away (waiting for "caught up right
    now" starved under steady traffic). A change that answered 2xx was normally on its
    stream before it answered (the outbox's middleware); when it was not (Redis down, a
    slow relay), the gateway passes its outbox row on (`after`, from X-Read-After), and
    the barrier first waits for an entry at least that new to be on the stream. So any
    later call through the gateway, by anyone, sees it.

    Waiters of a process share one poller: one Redis round trip answers all of them, and
    the process's own consumer wakes it as soon as it acknowledges a batch.
    """

    def __init__(self, redis: Redis, *, group: str, streams: Sequence[str]) -> None:
        self.group = group
        self.streams = list(streams)
        self._redis = redis
        self._script = redis.register_script(PROGRESS)
        self._keys = _progress_keys(self.streams, group)
        self._waiters: list[_Waiter] = []
        self._kick = asyncio.Event()
        self._errors = ErrorOnce(log, f"read barrier of {group}")

    async def progress(self) -> list[StreamProgress]:
        return _parse_progress(await self._script(keys=self._keys, args=[self.group]))

    def kick(self) -> None:
        """Look again now (the local consumer just acknowledged entries)."""
        if self._waiters:
            self._kick.set()

    async def wait(
        self,
        within: float = 1.0,
        *,
        about: Callable[[Event], bool] | None = None,
        after: Mapping[str, int] | None = None,
    ) -> bool:
        """True once the copies reflect every change published before this call (and the
        changes at the outbox rows `after` names, per stream); False when that could not be
        established in `within` seconds (Redis down, or the consumer behind): the caller
        must then not refuse on the strength of its copy.

        `about` says which events the caller's answer depends on: when none of the
        entries still in flight is about it, there is nothing to wait for (an invite
        waits for its own pair's connection events, not for everyone's).
        """
        marks = [(after or {}).get(stream, 0) for stream in self.streams]
        waiter = _Waiter(marks, None, asyncio.get_running_loop().create_future())
        try:
            progress = await self.progress()
            if waiter.check(progress):
                return True
            if about is not None and waiter.targets is not None:
                # Wait only up to the newest in-flight entry about the caller, if any.
                relevant = await self._in_flight_about(progress, about)
                if relevant is None:
                    return True
                waiter.targets = relevant
                if waiter.check(progress):
                    return True
        except (redis.exceptions.RedisError, OSError):
            return False
        self._waiters.append(waiter)
        self._kick.set()
        try:
            async with asyncio.timeout(within):
                return await waiter.done
        except TimeoutError:
            return False
        finally:
            self._waiters.remove(waiter)

    async def _in_flight_about(
        self, progress: list[StreamProgress], about: Callable[[Event], bool]
    ) -> list[EntryId] | None:
        """The newest entry per stream that the group has not handled yet (up to the
        targets) and that is about the caller: what the caller must wait for. None when
        there is none. One XRANGE per stream, from the oldest entry in flight on."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream, p in zip(self.streams, progress, strict=True):
                start = _format_id(p.inflight) if p.inflight else f"({_format_id(p.delivered)}"
                pipe.xrange(stream, min=start, max=_format_id(p.last), count=SCAN_LIMIT + 1)
            replies = await pipe.execute()
        targets: list[EntryId] = []
        found = False
        for entries in replies:
            if len(entries) > SCAN_LIMIT:
                return [q.last for q in progress]  # a long backlog: wait for all of it
            newest: EntryId = (0, 0)  # nothing to wait for on this stream
            for entry_id, fields in entries:
                try:
                    event = decode_entry(fields or {})
                except (ValidationError, ValueError):
                    continue  # never applied: it goes to the dead letters
                if about(event):
                    newest, found = _id_tuple(entry_id), True
            targets.append(newest)
        return targets if found else None

    async def run(self) -> None:
        """The poller: while anyone waits, check progress on every kick or every few ms."""
        while True:
            await self._kick.wait()
            self._kick.clear()
            while any(not w.done.done() for w in self._waiters):
                try:
                    progress = await self.progress()
                    self._errors.clear()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # Redis down: nobody can be told "caught up"
                    self._errors.note(exc, expected=isinstance(exc, redis.exceptions.RedisError))
                    for w in self._waiters:
                        if not w.done.done():
                            w.done.set_result(False)
                    break
                for w in self._waiters:
                    if not w.done.done() and w.check(progress):
                        w.done.set_result(True)
                honour_cancellation()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_SECONDS):
                        await self._kick.wait()
                self._kick.clear()


async def wait_caught_up(
    client: Redis, *, group: str, streams: Sequence[str], within: float = 1.0
) -> bool:
    """Wait until `group` has handled every entry on `streams` when called (all replicas).

    A standalone form of `ReadBarrier.wait` for tools and tests. False when time ran out.
    """
    script = client.register_script(PROGRESS)
    keys = _progress_keys(streams, group)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    progress = _parse_progress(await script(keys=keys, args=[group]))
    targets = [p.last for p in progress]
    while not all(p.handled(t) for p, t in zip(progress, targets, strict=True)):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.002)
        progress = _parse_progress(await script(keys=keys, args=[group]))
    return True
