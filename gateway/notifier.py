"""Notifier: each notification-worthy event becomes one entry in each recipient's log.

The per-user log is a capped stream `notifications:{user_id}`; its entry ids are the
notification ids of API.md, strictly increasing per user. Appending to every
recipient's log, the de-duplication mark and the signal to the gateway replicas happen in
one Lua script, so an event delivered twice, or a notifier that dies between appending
and acknowledging, still yields each notification exactly once.

One notifier is active at a time across the gateway replicas (a Redis lease), so the
order of the logs is the order of the streams; the others stand by and take over the
same consumer name, which hands them the pending entries of the one that died.

Each user's log keeps the order in which the changes happened, also when a consequence is
drawn late by another service (`CascadeOrder`: a removal's cancelled invites come right
after the removal, before the client's later notifications, however long activities took),
and when a change was answered before its event was on the stream (the consumer first reads
the rows the gateway answered that way, `Positions.unpublished`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import redis.exceptions
from pydantic import BaseModel
from redis.asyncio import Redis

from services.common.consumer import DEFER, Consumer, Deferred
from services.common.events import (
    ACTIVITIES_STREAM,
    CASCADES,
    CONNECTIONS_STREAM,
    Event,
    format_timestamp,
)
from services.common.tasks import ErrorOnce, honour_cancellation

log = logging.getLogger(__name__)

GROUP = "notifier"
CONSUMER = "notifier"  # shared by design: only the lease holder consumes
STREAMS = [CONNECTIONS_STREAM, ACTIVITIES_STREAM]
SIGNAL_CHANNEL = "notifications.signal"
LEADER_KEY = "notifier:leader"
LEASE_MS = 3_000  # a dead leader is replaced within about this long
RENEW_SECONDS = 1.0  # the holder renews this often; a stand-by tries twice as often
LOG_MAXLEN = 1_000
LOG_TTL_SECONDS = 30 * 24 * 3600
DEDUP_TTL_SECONDS = 7 * 24 * 3600
# After Redis was down, every service's relay has its backlog on the streams within this
# (they retry every 0.5 s at most), so merging the streams then keeps each user's order.
SETTLE_AFTER_OUTAGE_SECONDS = 1.0
# A cascade that has not come within this long holds its users' notifications no longer
# (the cascading service is down or far behind): logged, and order may then slip.
CASCADE_WAIT_SECONDS = 30.0
EARLY_KEPT = 10_000  # completions seen before their cause (clock skew), remembered


def log_key(user_id: int | str) -> str:
    return f"notifications:{user_id}"


# KEYS: dedup mark, then one log per recipient. ARGV: ttl, maxlen, log ttl, type,
# occurred_at, data (JSON text), event_id, channel, then the recipients' ids.
# The log is capped exactly; the id of the newest entry trimmed away is kept beside it
# (`<log>:trimmed`), so a reconnect can tell a gap from a client that saw everything.
APPEND = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end
local cap = tonumber(ARGV[2])
local entries = {}
for i = 2, #KEYS do
  local len = redis.call('XLEN', KEYS[i])
  if len >= cap then
    local old = redis.call('XRANGE', KEYS[i], '-', '+', 'COUNT', len - cap + 1)
    redis.call('SET', KEYS[i] .. ':trimmed', old[#old][1], 'EX', ARGV[3])
  end
  local id = redis.call('XADD', KEYS[i], 'MAXLEN', cap, '*',
    'type', ARGV[4], 'occurred_at', ARGV[5], 'data', ARGV[6], 'event_id', ARGV[7])
  redis.call('EXPIRE', KEYS[i], ARGV[3])
  entries[#entries + 1] = {tonumber(ARGV[7 + i]), id}
end
local head = cjson.encode(entries) .. '\\n' .. ARGV[4] .. '\\n' .. ARGV[5] .. '\\n'
redis.call('PUBLISH', ARGV[8], head .. ARGV[6])
return #entries
"""

RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


def frame(entry_id: str, event_type: str, occurred_at: str, data: str) -> str:
    """One WebSocket/REST notification, assembled without re-encoding `data`."""
    return (
        f'{{"id":"{entry_id}","type":"{event_type}","occurred_at":"{occurred_at}","data":{data}}}'
    )


def parse_signal(message: bytes | str) -> tuple[list[tuple[int, str]], str, str, str]:
    text = message.decode() if isinstance(message, bytes) else message
    entries, event_type, occurred_at, data = text.split("\n", 3)
    pairs = orjson.loads(entries)
    if isinstance(pairs, dict):  # cjson encodes an empty table as {}
        pairs = []
    return [(int(u), str(i)) for u, i in pairs], event_type, occurred_at, data


@dataclass(eq=False, slots=True)
class _Slot:
    """Where the consequences of `cause` go in the logs of `users`, until it completes."""

    cause: str
    users: frozenset[int]
    opened: float


class CascadeOrder:
    """Each user's notifications in the order of the changes, cascades included.

    Events come in the order of the merged streams. When one is a cause that another
    service cascades (`events.CASCADES`: a connection removal, whose cancelled invites
    activities publishes whenever it gets to it), a slot opens behind it for the users the
    consequences may notify; their later notifications wait behind the slot. A consequence
    (`caused_by` the cause) goes into the slot, i.e. before them; the completion event
    closes the slot and they flow again. Everyone else's notifications go on at once. An
    event waits too when one of its recipients already has an event waiting (so a
    multi-recipient event keeps its place in every log).

    The caller acknowledges an event only once it is appended and, for a cause, once its
    slot has closed: after a crash the unacknowledged entries come again, and the same
    state is rebuilt from them (`clear` first).
    """

    def __init__(
        self,
        *,
        wait_seconds: float = CASCADE_WAIT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.wait_seconds = wait_seconds
        self.clock = clock
        self.causes = {cause: users for cause, (_, users) in CASCADES.items()}
        self.completion_types = tuple(completion for completion, _ in CASCADES.values())
        self._items: list[Event | _Slot] = []
        self._slots: dict[str, _Slot] = {}
        self._early: OrderedDict[str, None] = OrderedDict()
        self._waiting: set[str] = set()  # ids of the events among the items

    def clear(self) -> None:
        self._items.clear()
        self._slots.clear()
        self._waiting.clear()

    def waiting(self) -> int:
        return len(self._waiting)

    def is_waiting(self, event_id: str) -> bool:
        return event_id in self._waiting

    def holds(self, event_id: str) -> bool:
        """Is the slot of this cause still open (its entry must stay unacknowledged)?"""
        return event_id in self._slots

    def offer(self, event: Event) -> tuple[list[Event], list[str]]:
        """Take the next event; returns the events to append now, in order, and the ids of
        causes whose slot just closed (to acknowledge now)."""
        event_id = str(event.event_id)
        closed: list[str] = []
        if isinstance(event, self.completion_types):
            cause = str(event.caused_by)
            slot = self._slots.pop(cause, None)
            if slot is not None:
                self._items.remove(slot)
                closed.append(cause)
            else:
                self._remember_early(cause)
        elif event_id not in self._waiting and event_id not in self._slots:
            # (else a second copy of an event already here: the first one is enough)
            cause = str(event.caused_by) if event.caused_by else None
            slot = self._slots.get(cause) if cause else None
            if slot is not None:
                self._items.insert(self._items.index(slot), event)
            else:
                self._items.append(event)
            self._waiting.add(event_id)
            users = self.causes.get(type(event))
            recipients = users(event) if users is not None else []
            # A completion seen before its cause (clocks apart) closed the slot already.
            if recipients and self._early.pop(event_id, "absent") == "absent":
                slot = _Slot(event_id, frozenset(recipients), self.clock())
                self._slots[event_id] = slot
                self._items.append(slot)
        return self._ready(closed), closed

    def _ready(self, closed: list[str]) -> list[Event]:
        if not self._slots:  # the usual case: nothing is held, all goes in order
            ready = [item for item in self._items if not isinstance(item, _Slot)]
            self._items.clear()
            self._waiting.clear()
            return ready
        now = self.clock()
        blocked: set[int] = set()
        ready, kept = [], []
        for item in self._items:
            if isinstance(item, _Slot):
                if now - item.opened > self.wait_seconds:
                    log.warning(
                        "cascade of event %s has not come in %.0f s; not waiting for it",
                        item.cause,
                        self.wait_seconds,
                    )
                    del self._slots[item.cause]
                    closed.append(item.cause)
                    continue
                blocked |= item.users
                kept.append(item)
                continue
            recipients = set(item.recipient_ids)
            if recipients & blocked:
                blocked |= recipients
                kept.append(item)
            else:
                ready.append(item)
                self._waiting.discard(str(item.event_id))
        self._items = kept
        return ready

    def _remember_early(self, cause: str) -> None:
        self._early[cause] = None
        while len(self._early) > EARLY_KEPT:
            self._early.popitem(last=False)


class Notifier:
    def __init__(
        self,
        redis: Redis,
        *,
        instance: str,
        claim_idle_ms: int = 5_000,
        unpublished: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self.redis = redis
        self.instance = instance
        self._append = redis.register_script(APPEND)
        self._renew = redis.register_script(RENEW)
        self.order = CascadeOrder()
        self.consumer = Consumer(
            redis,
            group=GROUP,
            consumer=CONSUMER,
            streams=STREAMS,
            handler=self.notify,
            claim_idle_ms=claim_idle_ms,
            dedup=False,  # the append script marks and checks `notified:{event_id}` itself
            settle_after_outage=SETTLE_AFTER_OUTAGE_SECONDS,
            required_rows=unpublished,
            on_restart=self.order.clear,
        )
        self.leader = False
        self.appended = 0
        self._errors = ErrorOnce(log, "notifier")

    async def notify(self, event: Event) -> Deferred | None:
        """Append what may go now; the entry of an event that waits (or of a cause whose
        consequences have not come) stays unacknowledged until its turn (DEFER)."""
        ready, closed = self.order.offer(event)
        current = str(event.event_id)
        done = not self.order.is_waiting(current) and not self.order.holds(current)
        for item in ready:
            await self.append(item)
            item_id = str(item.event_id)
            if item_id != current and not self.order.holds(item_id):
                self.consumer.release(item_id)
        for cause in closed:
            if cause != current:
                self.consumer.release(cause)
        return None if done else DEFER

    async def append(self, event: Event) -> None:
        recipients = sorted(set(event.recipient_ids))
        if not recipients:
            return
        data = (
            event.data.model_dump_json()
            if isinstance(event.data, BaseModel)
            else orjson.dumps(event.data).decode()
        )
        keys = [f"notified:{event.event_id}", *(log_key(u) for u in recipients)]
        args = [
            DEDUP_TTL_SECONDS,
            LOG_MAXLEN,
            LOG_TTL_SECONDS,
            event.type,
            format_timestamp(event.occurred_at),
            data,
            str(event.event_id),
            SIGNAL_CHANNEL,
            *recipients,
        ]
        self.appended += await self._append(keys=keys, args=args)

    async def run(self) -> None:
        """Hold the lease and consume; stand by while another replica holds it."""
        while True:
            try:
                if await self.redis.set(LEADER_KEY, self.instance, nx=True, px=LEASE_MS):
                    await self._lead()
                else:
                    await asyncio.sleep(RENEW_SECONDS / 2)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                expected = isinstance(exc, redis.exceptions.RedisError | OSError)
                self._errors.note(exc, expected=expected)
                self.consumer.recovering = True  # settle before the next lead consumes
                await asyncio.sleep(1)

    async def _lead(self) -> None:
        self.leader = True
        task = asyncio.create_task(self.consumer.run(), name="notifier-consumer")
        try:
            while True:
                if not await self._renew(keys=[LEADER_KEY], args=[self.instance, LEASE_MS]):
                    break
                honour_cancellation()
                await asyncio.sleep(RENEW_SECONDS)
            log.warning("notifier lease lost; standing by")
        finally:
            self.leader = False
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(redis.exceptions.RedisError, OSError):
                await self._release()

    async def _release(self) -> None:
        # Hand the lease over at once on shutdown instead of letting it expire.
        if await self.redis.get(LEADER_KEY) == self.instance.encode():
            await self.redis.delete(LEADER_KEY)

    def status(self) -> dict[str, Any]:
        return {
            "leader": self.leader,
            "appended": self.appended,
            "consumer_running": self.consumer.running,
            "waiting": self.order.waiting(),
        }
