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
- a handler failure leaves the entry pending; after `max_deliveries` it is copied to
  `<stream>.dead` and acknowledged, so one poison event never blocks the rest;
- a vanished group (Redis restarted without persistence, FLUSHALL) is re-created.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.exceptions
from faststream.redis.parser import BinaryMessageFormatV1
from pydantic import ValidationError
from redis.asyncio import Redis

from .events import Event, parse_event
from .tasks import honour_cancellation

log = logging.getLogger(__name__)

Entry = tuple[str, str, dict[bytes, bytes]]  # stream, entry id, fields

Handler = Callable[[Event], Awaitable[None]]
DEDUP_TTL_SECONDS = 7 * 24 * 3600


def dead_letter_stream(stream: str) -> str:
    return f"{stream}.dead"


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
        """Consume until cancelled; Redis outages only pause it."""
        backoff = 0.1
        while True:
            try:
                await self.ensure_groups()
                await self._drain_own_pending()
                self.running = True
                if self.last_error:
                    log.info("consumer %s/%s resumed", self.group, self.consumer)
                self.last_error = None
                backoff = 0.1
                await self._loop()
            except asyncio.CancelledError:
                self.running = False
                raise
            except redis.exceptions.ResponseError as exc:
                self.running = False
                if "NOGROUP" in str(exc) or "UNBLOCKED" in str(exc):
                    log.warning("group %s vanished; re-creating it", self.group)
                    continue
                self._note(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except (redis.exceptions.RedisError, OSError) as exc:
                self.running = False
                self._note(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _note(self, exc: BaseException) -> None:
        if self.last_error is None:
            log.warning("consumer %s/%s waiting for Redis: %r", self.group, self.consumer, exc)
        self.last_error = repr(exc)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_claim = loop.time() + self.claim_every
        held: list[Entry] = []  # read, not handled yet (see `_in_order`)
        while True:
            if loop.time() >= next_claim:
                await self.reclaim()
                next_claim = loop.time() + self.claim_every
            timeout_ms = max(1, min(self.block_ms, int((next_claim - loop.time()) * 1000)))
            reply = await self.redis.xreadgroup(
                self.group,
                self.consumer,
                dict.fromkeys(self.streams, ">"),
                count=self.batch,
                block=None if held else timeout_ms,  # held entries must not wait
            )
            honour_cancellation()
            ready, held = self._in_order(reply, held)
            await self._handle_batch(ready)

    def _in_order(self, reply: Any, held: list[Entry]) -> tuple[list[Entry], list[Entry]]:
        """Entries of several streams in the order Redis appended them (their ids come
        from one clock), and those to hold back for the next read.

        A stream that filled its batch may have older entries still waiting than another
        stream's newest: only entries up to the oldest such batch end are handled now, the
        rest wait to be merged with the next read. A backlog that spans streams then keeps
        the order in which the changes happened. (Sequence numbers are per stream, so two
        streams can give equal ids within one millisecond; the sort is stable and such ties
        go in the order of `streams`, which lists the causes before their consequences.)
        """
        merged = list(held)
        horizon: tuple[int, int] | None = None
        for stream, entries in reply or []:
            if not entries:
                continue
            merged += [(_s(stream), _s(i), f) for i, f in entries]
            if len(entries) >= self.batch:
                end = _id_tuple(_s(entries[-1][0]))
                horizon = end if horizon is None else min(horizon, end)
        merged.sort(key=lambda entry: _id_tuple(entry[1]))
        if horizon is None:
            return merged, []
        ready = [e for e in merged if _id_tuple(e[1]) <= horizon]
        return ready, merged[len(ready) :]

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
                claimed += [(stream, _s(e[0]), e[1]) for e in entries if e and e[1] is not None]
                if start == "0-0":
                    break
        claimed.sort(key=lambda entry: _id_tuple(entry[1]))
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
        try:
            for (stream, entry_id, fields, event), key in zip(decoded, keys, strict=True):
                if key in seen:  # handled before, or earlier in this batch (a duplicate)
                    done.append((stream, entry_id, key))
                    continue
                try:
                    await self.handler(event)
                except asyncio.CancelledError:
                    raise
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    raise  # Redis itself is down: the loop waits, the entry stays pending
                except Exception as exc:
                    await self._failed(stream, entry_id, fields, event, exc)
                    continue
                seen.add(key)
                done.append((stream, entry_id, key))
                self.processed += 1
        finally:
            # What was handled is settled even when a later entry stops the batch; if this
            # is lost, the entries come again and the idempotent handlers see them twice.
            if done:
                await asyncio.shield(self._settle(done))

    async def _settle(self, done: list[tuple[str, str, str]]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            for stream, entry_id, key in done:
                if self.dedup:
                    pipe.set(key, 1, ex=DEDUP_TTL_SECONDS)
                pipe.xack(stream, self.group, entry_id)
            await pipe.execute()

    async def _failed(
        self, stream: str, entry_id: str, fields: dict[bytes, bytes], event: Event, exc: Exception
    ) -> None:
        pending = await self.redis.xpending_range(
            stream, self.group, min=entry_id, max=entry_id, count=1
        )
        deliveries = pending[0]["times_delivered"] if pending else 1
        if deliveries >= self.max_deliveries:
            log.error(
                "event %s (%s) failed %d times in %s; dead-lettered: %r",
                event.event_id,
                event.type,
                deliveries,
                self.group,
                exc,
            )
            await self._dead_letter(stream, entry_id, fields, repr(exc))
        else:
            log.warning(
                "event %s (%s) failed in %s (try %d of %d), will retry: %r",
                event.event_id,
                event.type,
                self.group,
                deliveries,
                self.max_deliveries,
                exc,
            )

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


# Has `group` handled everything on these streams? Run inside Redis, so the caller gets
# one integer instead of parsing XINFO replies (which carry whole entries). An entry is
# still in flight while it is undelivered, or pending on its first delivery; entries
# being retried (a failing handler) do not hold readers up.
CAUGHT_UP = """
local function before(a, b)
  local ams, aseq = string.match(a, '(%d+)-(%d+)')
  local bms, bseq = string.match(b, '(%d+)-(%d+)')
  ams, aseq, bms, bseq = tonumber(ams), tonumber(aseq), tonumber(bms), tonumber(bseq)
  return ams < bms or (ams == bms and aseq < bseq)
end
for _, key in ipairs(KEYS) do
  local top = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  if #top > 0 then  -- no stream, or an empty one: nothing to wait for
    local last = top[1][1]
    local delivered = nil
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
      local name, seen
      for j = 1, #g, 2 do
        if g[j] == 'name' then name = g[j + 1] end
        if g[j] == 'last-delivered-id' then seen = g[j + 1] end
      end
      if name == ARGV[1] then delivered = seen end
    end
    if delivered == nil or before(delivered, last) then return 0 end
    for _, p in ipairs(redis.call('XPENDING', key, ARGV[1], '-', last, 100)) do
      if tonumber(p[4]) <= 1 then return 0 end
    end
  end
end
return 1
"""


async def wait_caught_up(
    client: Redis, *, group: str, streams: Sequence[str], within: float = 1.0
) -> bool:
    """Wait until `group` has handled every entry already on `streams` (all replicas).

    The read-your-writes barrier for local copies, used where a read or a check depends
    on another service's recent write. One EVALSHA when the group is idle; otherwise it
    polls every few milliseconds. False when time ran out.
    """
    script = client.register_script(CAUGHT_UP)  # cheap: the SHA is computed once per call
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        if await script(keys=list(streams), args=[group]):
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.002)
