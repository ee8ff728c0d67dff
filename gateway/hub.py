"""The sockets this gateway replica holds, per user, and the live fan-out to them.

Every replica listens to the notifier's signal (Redis pub/sub, carrying the new log
entries) and to the revocation channel. A notification is offered to each socket of its
user through a bounded queue: the fan-out never awaits a socket, and a socket whose
queue is full (a client that stopped reading) is closed with 1013. Pub/sub can drop
messages while its connection is down, so after every reconnect each socket re-reads its
own log after the last id it was sent: the log, not the signal, is the source of truth.

A user holds at most `max_per_user` sockets on a replica (GATEWAY_MAX_SOCKETS_PER_USER):
a new one closes their oldest with 4008. The cap is per replica: a user whose sockets a
load balancer spreads over N replicas may hold up to N times as many.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterable

import orjson
import redis.exceptions
from aiohttp import WSCloseCode, web
from redis.asyncio import Redis

from services.common.tasks import ErrorOnce, honour_cancellation
from services.common.tokens import REVOCATION_CHANNEL, Identity

from .notifier import SIGNAL_CHANNEL, frame, log_key, parse_signal

log = logging.getLogger(__name__)

QUEUE_SIZE = 256
REPLAY_BATCH = 500
CLOSE_REVOKED = 4001  # revoked or expired token: reconnect with a fresh one
CLOSE_TOO_MANY = 4008  # the user opened more sockets than the cap: this was the oldest
REVOCATION_SWEEP_SECONDS = 2.0
CLOSE_TIMEOUT_SECONDS = 1.0  # on shutdown
SLOW_CLOSE_SECONDS = 5.0  # a slow or revoked client gets this long to read its close frame


def id_tuple(entry_id: str | bytes) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def entry_frame(entry_id: bytes | str, fields: dict[bytes, bytes]) -> str:
    return frame(
        entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
        fields[b"type"].decode(),
        fields[b"occurred_at"].decode(),
        fields[b"data"].decode(),
    )


class Conn:
    """One open socket: its identity, a bounded send queue, and the last id it was sent."""

    __slots__ = (
        "buffer",
        "deferred_close",
        "hub",
        "identity",
        "last",
        "live",
        "overflowed",
        "queue",
        "sender",
        "transport",
        "ws",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        identity: Identity,
        hub: Hub,
        transport: asyncio.Transport | None = None,
    ) -> None:
        self.ws = ws
        self.transport = transport  # to drop a client that stopped reading, at shutdown
        self.hub = hub
        self.identity = identity
        self.queue: asyncio.Queue[str] = asyncio.Queue(QUEUE_SIZE)
        self.last: tuple[int, int] = (0, 0)
        # Until the replay is done, live entries wait here (then only newer ones are sent).
        self.live = False
        self.buffer: list[tuple[tuple[int, int], str]] = []
        self.overflowed = False  # live entries were let go during the replay (see `offer`)
        self.sender: asyncio.Task[None] | None = None
        # A close asked for before the upgrade was done (see `close_later`).
        self.deferred_close: tuple[int, str] | None = None

    def offer(self, entry_id: str, text: str) -> None:
        key = id_tuple(entry_id)
        if not self.live:
            if len(self.buffer) >= QUEUE_SIZE:
                # More arrived than a replay should hold: let them go, the log has them
                # and the replay reads on (`Hub.replay`). The client is not at fault.
                self.buffer.clear()
                self.overflowed = True
            self.buffer.append((key, text))
            return
        if key <= self.last:
            return  # already sent (replay and live overlap)
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            self.close_later(WSCloseCode.TRY_AGAIN_LATER, "slow consumer")
            return
        self.last = key

    def go_live(self) -> None:
        """After the replay: queue the buffered entries that are newer, then follow live."""
        self.live = True
        pending, self.buffer = sorted(self.buffer), []
        for key, text in pending:
            self.offer(f"{key[0]}-{key[1]}", text)

    def close_later(self, code: int, reason: str) -> None:
        """Close from sync code (the fan-out), without awaiting this socket."""
        if not self.ws.prepared:
            # No close frame before the 101: the handler closes it once upgraded.
            self.deferred_close = (code, reason)
            return
        if not self.ws.closed:
            task = asyncio.get_running_loop().create_task(
                self.close(code, reason, within=SLOW_CLOSE_SECONDS)
            )
            self.hub.closing.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(self.hub.closing.discard)

    async def close(self, code: int, reason: str, *, within: float) -> None:
        """Send the close frame; a client that never reads it (so it never drains) is
        dropped after `within` seconds instead of being held, with its buffers, forever."""
        try:
            async with asyncio.timeout(within):
                await self.ws.close(code=code, message=reason.encode())
        except TimeoutError:
            if self.transport is not None:
                self.transport.abort()

    async def send_loop(self) -> None:
        while True:
            text = await self.queue.get()
            await self.ws.send_str(text)
            self.hub.sent += 1


class Hub:
    """Sockets by user on this replica, plus the listeners that feed them."""

    def __init__(self, redis: Redis, *, max_per_user: int | None = None) -> None:
        self.redis = redis
        self.max_per_user = max_per_user
        # Per user, their sockets in the order they opened (a dict keeps it).
        self.by_user: dict[int, dict[Conn, None]] = defaultdict(dict)
        self.connected = False
        self.sent = 0
        self.closing: set[asyncio.Task[None]] = set()
        self._errors = ErrorOnce(log, "socket hub")

    def add(self, conn: Conn) -> None:
        conns = self.by_user[conn.identity.user_id]
        while self.max_per_user is not None and len(conns) >= self.max_per_user:
            # Out of the fan-out at once; its handler discards it again when it closes.
            oldest = next(iter(conns))
            del conns[oldest]
            oldest.close_later(CLOSE_TOO_MANY, "too many sockets")
        conns[conn] = None

    def discard(self, conn: Conn) -> None:
        conns = self.by_user.get(conn.identity.user_id)
        if conns is not None:
            conns.pop(conn, None)
            if not conns:
                del self.by_user[conn.identity.user_id]

    def all(self) -> Iterable[Conn]:
        for conns in list(self.by_user.values()):
            yield from list(conns)

    def count(self) -> int:
        return sum(len(c) for c in self.by_user.values())

    async def replay(self, conn: Conn, since: str | None) -> None:
        """Send what the log holds after `since` (a reset first if some was trimmed)."""
        if since is None:
            conn.go_live()
            return
        key = log_key(conn.identity.user_id)
        trimmed = await self.redis.get(key + ":trimmed")
        if trimmed is not None and id_tuple(since) < id_tuple(trimmed):
            # Entries after `since` were trimmed away: tell the client to reload.
            first = await self.redis.xrange(key, count=1)
            oldest = first[0][0].decode() if first else trimmed.decode()
            await conn.ws.send_str(orjson.dumps({"type": "reset", "id": oldest}).decode())
        conn.last = id_tuple(since)
        while True:
            cursor = f"({conn.last[0]}-{conn.last[1]}"
            entries = await self.redis.xrange(key, min=cursor, count=REPLAY_BATCH)
            for entry_id, fields in entries:
                await conn.ws.send_str(entry_frame(entry_id, fields))
                conn.last = id_tuple(entry_id)
            if len(entries) == REPLAY_BATCH:
                continue
            if not conn.overflowed:
                break
            conn.overflowed = False  # what was let go is in the log after `conn.last`
        conn.go_live()

    async def resync(self) -> None:
        """After a gap in the signal: every socket reads its log after its last id."""
        for conn in self.all():
            if not conn.live:
                continue
            last = f"{conn.last[0]}-{conn.last[1]}"
            entries = await self.redis.xrange(log_key(conn.identity.user_id), min=f"({last}")
            for entry_id, fields in entries:
                conn.offer(entry_id.decode(), entry_frame(entry_id, fields))

    def deliver(self, message: bytes) -> None:
        entries, event_type, occurred_at, data = parse_signal(message)
        for user_id, entry_id in entries:
            conns = self.by_user.get(user_id)
            if not conns:
                continue
            text = frame(entry_id, event_type, occurred_at, data)
            for conn in list(conns):
                conn.offer(entry_id, text)

    def revoke(self, message: bytes) -> None:
        data = orjson.loads(message)
        jti, sid = data.get("jti"), data.get("sid")
        for conn in self.all():
            if (jti and conn.identity.jti == jti) or (sid and conn.identity.sid == sid):
                conn.close_later(CLOSE_REVOKED, "token revoked")

    async def listen(self) -> None:
        """Follow the signal and revocation channels for the replica's lifetime."""
        backoff = 0.1
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(SIGNAL_CHANNEL, REVOCATION_CHANNEL)
                self.connected = True
                backoff = 0.1
                await self.resync()  # anything appended while we were not listening
                while True:
                    message = await pubsub.get_message(timeout=5.0)
                    honour_cancellation()
                    if message is None:
                        continue
                    if message["channel"] == SIGNAL_CHANNEL.encode():
                        self.deliver(message["data"])
                    else:
                        self.revoke(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not isinstance(exc, redis.exceptions.RedisError | OSError):
                    self._errors.note(exc)  # a bug: once, with its traceback
                elif self.connected:
                    log.warning("notification signal lost, reconnecting: %r", exc)
                self.connected = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def sweep_revoked(self) -> None:
        """Belt and braces for a revocation published while the channel was down."""
        while True:
            await asyncio.sleep(REVOCATION_SWEEP_SECONDS)
            conns = list(self.all())
            if not conns:
                continue
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for conn in conns:
                        pipe.exists(
                            f"revoked:jti:{conn.identity.jti}", f"revoked:sid:{conn.identity.sid}"
                        )
                    flags = await pipe.execute()
            except (redis.exceptions.RedisError, OSError):
                continue
            except Exception as exc:
                self._errors.note(exc)
                continue
            honour_cancellation()
            for conn, revoked in zip(conns, flags, strict=True):
                if revoked:
                    conn.close_later(CLOSE_REVOKED, "token revoked")

    async def close_all(
        self, code: int = WSCloseCode.GOING_AWAY, reason: str = "server shutdown"
    ) -> None:
        # A client that stopped reading would hold the shutdown up (aiohttp then waits for
        # its handler, twice the shutdown timeout): after a moment it is dropped.
        await asyncio.gather(
            *(c.close(code, reason, within=CLOSE_TIMEOUT_SECONDS) for c in self.all()),
            return_exceptions=True,
        )
