"""Notifier: each notification-worthy event becomes one entry in each recipient's log.

The per-user log is a capped stream `notifications:{user_id}`; its entry ids are the
notification ids of API.md, strictly increasing per user. Appending to every
recipient's log, the de-duplication mark and the signal to the gateway replicas happen in
one Lua script, so an event delivered twice, or a notifier that dies between appending
and acknowledging, still yields each notification exactly once.

One notifier is active at a time across the gateway replicas (a Redis lease), so the
order of the logs is the order of the streams; the others stand by and take over the
same consumer name, which hands them the pending entries of the one that died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
import redis.exceptions
from pydantic import BaseModel
from redis.asyncio import Redis

from services.common.consumer import Consumer
from services.common.events import ACTIVITIES_STREAM, CONNECTIONS_STREAM, Event, format_timestamp
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


class Notifier:
    def __init__(self, redis: Redis, *, instance: str, claim_idle_ms: int = 5_000) -> None:
        self.redis = redis
        self.instance = instance
        self._append = redis.register_script(APPEND)
        self._renew = redis.register_script(RENEW)
        self.consumer = Consumer(
            redis,
            group=GROUP,
            consumer=CONSUMER,
            streams=STREAMS,
            handler=self.notify,
            claim_idle_ms=claim_idle_ms,
            dedup=False,  # the append script marks and checks `notified:{event_id}` itself
            settle_after_outage=SETTLE_AFTER_OUTAGE_SECONDS,
        )
        self.leader = False
        self.appended = 0
        self._errors = ErrorOnce(log, "notifier")

    async def notify(self, event: Event) -> None:
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
        }
