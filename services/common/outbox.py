"""Transactional outbox: events are written with the change, then relayed to Redis Streams.

`stage()` puts an event on the session; just before that transaction commits the staged
rows are inserted, so the change and its event commit (or roll back) together. The
relay, one active per database, XADDs unsent rows in order and marks them sent.

The order is the order of commits where it matters, without making writers wait for
each other:
- SQLite has a single writer, so row ids follow commit order: rows go out by id.
- PostgreSQL: each row records its transaction's id (`txid`), and the relay publishes
  only rows of transactions older than every transaction still running in the service's
  database, by (txid, id). That set never grows behind the relay's back, so a stream never
  gets an older row after a newer one; and a change that depends on another (it read it
  after its commit) has a later txid, so causes go out before their consequences. (It
  used to be a global advisory lock held from the outbox insert to the commit: every
  write of a service committed one at a time, and a consumer's write waited its turn
  behind a burst of requests.)

A row's position in its stream (`position`: txid on PostgreSQL, id on SQLite) only grows
in publishing order; it travels in each entry (`row`) and in the answer
(`X-Outbox-Row`), for the read barriers (consumer.ReadBarrier).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import logging
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import redis.exceptions
import sqlalchemy.exc
from aiohttp import web
from faststream.redis.parser import BinaryMessageFormatV1
from redis.asyncio import Redis
from sqlalchemy import (
    BigInteger,
    Index,
    String,
    Text,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Mapped, Session, declared_attr, mapped_column

from .db import Database, UTCDateTime, utcnow
from .events import Event
from .tables import Id
from .tasks import ErrorOnce, honour_cancellation

log = logging.getLogger(__name__)

# The outbox rows committed while handling the current request (set per request by
# `Outbox.middleware`), so the reply can wait until they are on the stream.
_committed_rows: ContextVar[list[dict[str, tuple[int, int]]] | None] = ContextVar(
    "outbox_committed_rows", default=None
)
# A request's own step once its events are out (before the reply), e.g. connections'
# removal waiting until the services that cascade it have applied it.
AFTER_PUBLISHED = web.RequestKey("after_published", object)
OUTBOX_ROW_HEADER = "X-Outbox-Row"  # service -> gateway: `<stream>=<row id>[,...]`
READ_AFTER_HEADER = "X-Read-After"  # gateway -> service: the same, for every stream
UNPUBLISHED_HEADER = "X-Outbox-Unpublished"  # service -> gateway: rows not out at the reply


def position_key(stream: str) -> str:
    """Where the relay keeps the position of the newest row it put on `stream`."""
    return f"{stream}:position"


def format_positions(positions: dict[str, int]) -> str:
    return ",".join(f"{stream}={row}" for stream, row in sorted(positions.items()))


def parse_positions(value: str) -> dict[str, int]:
    """`a.events=12,b.events=7` -> {"a.events": 12, ...}; malformed parts are ignored."""
    found: dict[str, int] = {}
    for part in value.split(",")[:16]:
        stream, sep, row = part.strip().partition("=")
        if sep and stream and row.isascii() and row.isdigit() and len(row) <= 18:
            found[stream] = int(row)
    return found


BATCH = 200
# The transactions of this database that have written something and not ended yet
# (PostgreSQL; prepared ones too), as 32-bit ids (see Outbox._running_horizon).
RUNNING_HERE = """ARRAY(
  SELECT backend_xid::text::bigint FROM pg_stat_activity
  WHERE datname = current_database() AND backend_xid IS NOT NULL
  UNION ALL
  SELECT transaction::text::bigint FROM pg_prepared_xacts WHERE database = current_database()
)"""
POLL_SECONDS = 1.0
BLOCKED_POLL_SECONDS = 0.003  # rows committed but held back by an older transaction
# While Redis is down the relay retries this often at most: after an outage every
# service's backlog must be on its stream within the notifier's settling pause
# (consumer.Consumer's `settle_after_outage`), so the notifier merges them in order.
MAX_BACKOFF_SECONDS = 0.5

# XADD at the row's commit time (`<ms>-*`) instead of at Redis's now: a backlog published
# after an outage or a relay restart then sorts among the other services' entries by when
# it committed, and the notifier, which merges streams by id, keeps the order in which the
# changes happened. When the stream already holds a later entry (on PostgreSQL rows go out
# by transaction, and a later transaction may have committed a millisecond earlier; or a
# clock step) it goes right after that entry, in the same millisecond, which is as early
# as the stream allows; with Redis older than 7.0 (no `<ms>-*` form) at Redis's now. The
# row's position goes into the entry and into `<stream>:position` (what the read barriers
# compare the gateway's X-Read-After with).
XADD_AT = """
local at = ARGV[2] .. '-*'
local id = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], at,
  '__data__', ARGV[3], 'row', ARGV[4])
if type(id) == 'table' and id['err'] then
  local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  at = '*'
  if #top > 0 then at = string.match(top[1][1], '^(%d+)') .. '-*' end
  id = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], at,
    '__data__', ARGV[3], 'row', ARGV[4])
  if type(id) == 'table' and id['err'] then
    id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
      '__data__', ARGV[3], 'row', ARGV[4])
  end
end
redis.call('SET', KEYS[2], ARGV[4])
return id
"""
RETENTION = dt.timedelta(hours=24)
PUBLISH_WAIT_SECONDS = 0.5
STAGED = "outbox.staged"


class OutboxMixin:
    """Columns of a service's `outbox` table; each service maps it on its own Base."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    stream: Mapped[str] = mapped_column(String(100))
    type: Mapped[str] = mapped_column(String(100))
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    stream_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # PostgreSQL: the id of the transaction that wrote the row (see the module docstring).
    txid: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        return (
            Index("ix_outbox_unpublished", "published_at", "id"),
            Index("ix_outbox_unpublished_txid", "published_at", "txid", "id"),
        )


async def encode(payload: bytes, *, event_id: str, event_type: str) -> bytes:
    """FastStream's wire format, so any FastStream subscriber can read our streams too."""
    return await BinaryMessageFormatV1.encode(
        message=payload,
        reply_to=None,
        headers={
            "content-type": "application/json",
            "event-id": event_id,
            "event-type": event_type,
        },
        correlation_id=event_id,
    )


def stage(session: Session, event: Event) -> None:
    """Write `event` in the transaction `session` belongs to."""
    session.info.setdefault(STAGED, []).append(event)


class Outbox:
    """Owns the relay of one service: staging hooks, leader lock, publish loop."""

    def __init__(
        self,
        db: Database,
        redis: Redis,
        model: type[OutboxMixin],
        *,
        name: str,
        maxlen: int = 100_000,
    ) -> None:
        self.db = db
        self.redis = redis
        self.model = model
        self.name = name
        self.maxlen = maxlen
        self._wake = asyncio.Event()
        self.leader = False
        self.last_error: str | None = None
        self._errors = ErrorOnce(log, f"{name} outbox relay")
        self.published = 0
        self.blocked = False  # committed rows wait for an older transaction (PostgreSQL)
        # (position, id) of the last row on the stream: rows go out in that order.
        self.published_upto: tuple[int, int] = (0, 0)
        self._progress = asyncio.Event()
        self._xadd_at = redis.register_script(XADD_AT)
        table = model.__table__
        self.postgres = db.dialect == "postgresql"
        columns = (model.id, model.event_id, model.stream, model.type, model.payload)
        if self.postgres:
            finished = model.txid < bindparam("horizon")
            self._horizon = select(
                literal_column("pg_snapshot_xmax(pg_current_snapshot())::text::bigint").label(
                    "next"
                ),
                literal_column(RUNNING_HERE).label("running"),
            )
            # Committed rows of a transaction newer than one still running wait (`ready`
            # false): they are the rows after which nothing older may come. The relay then
            # looks again in a few milliseconds, as the transaction holding them back may
            # belong to another process (a replica, another service on the cluster) whose
            # commit does not wake this relay.
            self._unsent = (
                select(
                    *columns,
                    model.created_at,
                    func.coalesce(model.txid, 0).label("position"),
                    or_(model.txid.is_(None), finished).label("ready"),
                )
                .where(model.published_at.is_(None))
                .order_by(model.txid.nulls_first(), model.id)
                .limit(BATCH)
            )
            self._insert = (
                insert(table)
                .values(txid=literal_column("pg_current_xact_id()::text::bigint"))
                .returning(table.c.id, table.c.txid)
            )
        else:
            self._unsent = (
                select(
                    *columns,
                    model.created_at,
                    model.id.label("position"),
                    literal_column("1").label("ready"),
                )
                .where(model.published_at.is_(None))
                .order_by(model.id)
                .limit(BATCH)
            )
            self._insert = insert(table).returning(table.c.id, table.c.id)
        self._newest = select(
            model.stream,
            func.max(func.coalesce(model.txid, 0) if self.postgres else model.id).label("position"),
            func.max(model.id).label("id"),
        ).group_by(model.stream)
        self._published_at = select(model.published_at).where(model.id == bindparam("row_id"))
        db.on_before_commit(self._insert_staged)
        db.on_after_commit(self._after_commit)

    def _insert_staged(self, session: Session) -> None:
        events: list[Event] = session.info.pop(STAGED, [])
        if not events:
            return
        now = utcnow()
        rows = [
            {
                "event_id": str(e.event_id),
                "stream": e.stream,
                "type": e.type,
                "payload": e.to_json().decode(),
                "created_at": now,
            }
            for e in events
        ]
        # A Core insert, not ORM objects: this runs in every write (about a third of the
        # CPU of a one-row unit of work went into flushing these through the ORM).
        written = session.execute(self._insert, rows).all()
        last: dict[str, tuple[int, int]] = {}
        for (row_id, position), row in zip(written, rows, strict=True):
            last[row["stream"]] = max((position, row_id), last.get(row["stream"], (0, 0)))
        session.info["outbox.last_rows"] = last

    def _after_commit(self, session: Session) -> None:
        last_rows = session.info.pop("outbox.last_rows", None)
        if last_rows:
            self._wake.set()
            committed = _committed_rows.get()
            if committed is not None:
                committed.append(last_rows)

    async def wait_published(self, upto: tuple[int, int], *, within: float) -> bool:
        """Wait until the row at (position, id) `upto` is on its stream; False when time
        ran out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self.published_upto < upto:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            if not self.leader:  # another replica relays: watch the row itself
                rows = await self.db.fetch(self._published_at, row_id=upto[1])
                if rows and rows[0]["published_at"] is not None:
                    return True
                await asyncio.sleep(min(0.005, remaining))
                continue
            progress = self._progress
            with contextlib.suppress(TimeoutError):  # (not wait_for: see `_pump`)
                async with asyncio.timeout(remaining):
                    await progress.wait()
        return True

    @contextlib.asynccontextmanager
    async def published_on_exit(self) -> AsyncIterator[None]:
        """Leave the block once the events its transactions committed are on their streams
        (Redis permitting, at most PUBLISH_WAIT_SECONDS): a consumer acknowledges an entry
        only then, so "the group has handled it" includes "what it caused is out"."""
        token = _committed_rows.set([])
        try:
            yield
            committed = _committed_rows.get()
        finally:
            _committed_rows.reset(token)
        uptos = [upto for rows in committed or [] for upto in rows.values()]
        if uptos and self.last_error is None:
            await self.wait_published(max(uptos), within=PUBLISH_WAIT_SECONDS)

    async def newest(self) -> dict[str, tuple[int, int]]:
        """(position, id) of the newest row of each stream, published or not."""
        rows = await self.db.fetch(self._newest)
        return {row["stream"]: (row["position"], row["id"]) for row in rows}

    async def reply_after(
        self, response: web.StreamResponse, last: dict[str, tuple[int, int]]
    ) -> None:
        """Wait (Redis permitting) until rows up to `last` are out, and tell the gateway
        where they are (`X-Outbox-Row`): a call that depends on them waits until they are
        applied, even when this reply leaves before they are on the stream (Redis down, a
        slow relay). See consumer.ReadBarrier."""
        if not last:
            return
        published = self.last_error is None and await self.wait_published(
            max(last.values()), within=PUBLISH_WAIT_SECONDS
        )
        positions = format_positions({stream: position for stream, (position, _) in last.items()})
        response.headers[OUTBOX_ROW_HEADER] = positions
        if not published:
            # Answered before its events are on their streams: the gateway's notifier then
            # reads them before any notification it would put after them (per-user order).
            response.headers[UNPUBLISHED_HEADER] = positions

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Reply only once the events of this request are on the stream (Redis permitting).

        A client that acts on the reply (reads another service, opens a socket) then never
        races the relay: what it caused is already on the bus. While Redis is down the
        reply does not wait; the events follow when it is back.
        """
        token = _committed_rows.set([])
        try:
            response = await handler(request)
            committed = _committed_rows.get()
        finally:
            _committed_rows.reset(token)
        last: dict[str, tuple[int, int]] = {}
        for rows in committed or []:
            for stream, upto in rows.items():
                last[stream] = max(upto, last.get(stream, (0, 0)))
        await self.reply_after(response, last)
        if last and self.last_error is None and (then := request.get(AFTER_PUBLISHED)):
            await then()
        return response

    def wake(self) -> None:
        self._wake.set()

    async def publish_pending(self) -> int:
        """Publish one batch of unsent rows in order; returns how many were sent."""
        m = self.model
        params = {"horizon": await self._running_horizon()} if self.postgres else {}
        fetched = await self.db.fetch(self._unsent, **params)
        rows = []
        for row in fetched:  # the ready ones come first: txid order
            if not row["ready"]:
                break
            rows.append(row)
        self.blocked = len(rows) < len(fetched)
        if not rows:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for row in rows:
                data = await encode(
                    row["payload"].encode(), event_id=row["event_id"], event_type=row["type"]
                )
                committed = row["created_at"]
                if committed.tzinfo is None:  # (a raw SQLite read) stored as naive UTC
                    committed = committed.replace(tzinfo=dt.UTC)
                committed_ms = int(committed.timestamp() * 1000)
                await self._xadd_at(
                    keys=[row["stream"], position_key(row["stream"])],
                    args=[self.maxlen, committed_ms, data, row["position"]],
                    client=pipe,
                )
            stream_ids = await pipe.execute()
        # On the stream now: release the replies waiting for these events before marking
        # the rows (that write queues behind the service's other writers).
        self.published += len(rows)
        self.published_upto = (rows[-1]["position"], rows[-1]["id"])
        progress, self._progress = self._progress, asyncio.Event()
        progress.set()
        now = utcnow()
        marks = [
            {"id": row["id"], "published_at": now, "stream_id": _decode(sid)}
            for row, sid in zip(rows, stream_ids, strict=True)
        ]
        # One executemany, keyed by primary key, marks the whole batch. If this fails the
        # batch goes out again; consumers drop the copies by event_id.
        await self.db.write(lambda session: session.execute(update(m), marks))
        return len(rows)

    async def _running_horizon(self) -> int:
        """The oldest transaction of THIS database still running (or the next to start):
        rows of older transactions can no longer be joined by an older row. (Not the
        snapshot's xmin, which is the cluster's: a long write in another service's
        database held every relay back.) Read before the rows are, in its own statement,
        so a transaction that starts in between has a newer id anyway."""
        rows = await self.db.fetch(self._horizon)
        following = rows[0]["next"]
        horizon = following
        for xid in rows[0]["running"] or []:
            # pg_stat_activity gives 32-bit ids; running ones are within 2^31 below `next`.
            behind = (following - xid) % 2**32
            if 0 < behind < 2**31:
                horizon = min(horizon, following - behind)
        return horizon

    async def purge_published(self) -> None:
        m = self.model
        # The newest row always stays: SQLite numbers a new row max(id) + 1, and row ids
        # must never go back (they are positions the gateway passes on, X-Read-After).
        newest = select(func.max(m.id)).scalar_subquery()
        old = delete(m).where(
            m.published_at.is_not(None),
            m.published_at < utcnow() - RETENTION,
            m.id < newest,
        )
        await self.db.write(lambda session: session.execute(old))

    async def run(self) -> None:
        """Relay forever: wait to be leader, then publish on every wake-up or poll."""
        while True:
            try:
                async with self._leadership():
                    await self._pump()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # e.g. the lock's connection dropped: start over
                self._note_error(exc)
                await asyncio.sleep(1)

    async def _pump(self) -> None:
        backoff = 0.1
        last_purge = 0.0
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            try:
                sent = await self.publish_pending()
                honour_cancellation()
                self._errors.clear()
                self.last_error = None
                backoff = 0.1
                if loop.time() - last_purge > 600:
                    await self.purge_published()
                    last_purge = loop.time()
            except (redis.exceptions.RedisError, sqlalchemy.exc.SQLAlchemyError, OSError) as exc:
                # Redis or the database is down: the rows wait in the outbox; retry later.
                self._note_error(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                continue
            if sent == BATCH:
                continue
            if self.blocked:
                await asyncio.sleep(BLOCKED_POLL_SECONDS)
                continue
            # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that arrives
            # just as the wake-up fires, and the relay would outlive its app's shutdown.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_SECONDS):
                    await self._wake.wait()

    def _note_error(self, exc: BaseException) -> None:
        # Redis or the database down is expected (one warning line); anything else is a
        # bug, logged once with its traceback.
        expected = isinstance(
            exc, redis.exceptions.RedisError | sqlalchemy.exc.SQLAlchemyError | OSError
        )
        self._errors.note(exc, expected=expected)
        self.last_error = repr(exc)

    @contextlib.asynccontextmanager
    async def _leadership(self) -> AsyncIterator[None]:
        """Hold the one lock that makes this process the only relay of its database."""
        if self.db.dialect == "postgresql":
            async with self.db.engine.connect() as conn:
                while not await conn.scalar(
                    text("SELECT pg_try_advisory_lock(:k)"), {"k": _lock_key(self.name + ".relay")}
                ):
                    await conn.rollback()
                    await asyncio.sleep(2)
                await conn.commit()
                self.leader = True
                try:
                    yield
                finally:
                    self.leader = False
                    # The session-level lock outlives this block: back in the pool, the
                    # connection would keep it and no relay (this one included) could lead
                    # again until the process exits. Closing the connection frees it.
                    with contextlib.suppress(Exception):
                        await conn.invalidate()
            return
        path = Path(self.db.engine.url.database or "memory").with_suffix(".relay.lock")
        with path.open("a") as fh:
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(2)
            self.leader = True
            try:
                yield
            finally:
                self.leader = False
                fcntl.flock(fh, fcntl.LOCK_UN)


def _lock_key(name: str) -> int:
    return zlib.crc32(f"outbox:{name}".encode())


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
