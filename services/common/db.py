"""Async SQLAlchemy engine from a URL, one code path for SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import sqlalchemy.exc
from sqlalchemy import DateTime, Engine, create_engine, event, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.sql import Executable
from sqlalchemy.types import TypeDecorator

from .tasks import ErrorOnce

log = logging.getLogger(__name__)

UTC = dt.UTC
T = TypeVar("T")
BUSY_SECONDS = 30.0  # how long a writer waits for another process's SQLite write lock
CHECKPOINT_EVERY = 200  # commits between two WAL checkpoints (SQLite's own default: ~1,000 pages)
# `session.info` key under which a before-commit hook finds what the unit of work returned.
UNIT_RESULT = "unit.result"


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on both databases.

    SQLite hands back naive datetimes even for `DateTime(timezone=True)`, and asyncpg
    rejects aware values in naive columns; normalising here keeps that out of the code.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        # SQLite stores text: keep it naive-UTC so comparisons between rows stay lexical.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def make_engine(url: str, *, pool_size: int = 10, connections: int | None = None) -> AsyncEngine:
    """Create the async engine; SQLite gets WAL, foreign keys and a busy timeout.

    On PostgreSQL it runs every unit of work. On SQLite the units run on the synchronous
    engines below; this one serves tools and tests that want an async connection.
    """
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN")

        # pysqlite's own implicit BEGIN must be off for the listener above to own it.
        @event.listens_for(engine.sync_engine, "connect", insert=True)
        def _sqlite_no_implicit_begin(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None

        return engine
    # Connections are kept, not opened per burst: an overflow connection is closed when
    # returned, and under steady load opening and closing them (with asyncpg's SSL probe)
    # cost more CPU than the queries. `Database` caps the callers at the pool's size.
    return create_async_engine(
        url,
        pool_size=connections or 2 * pool_size,
        max_overflow=0,
        pool_pre_ping=True,
        pool_recycle=1800,
    )


def _sqlite_sync_engine(url: str, *, writer: bool) -> Engine:
    """A synchronous engine on the SQLite file, used in the event loop (see `Database`)."""
    engine = create_engine(
        make_url(url).set(drivername="sqlite"),
        pool_size=1 if writer else 2,
        max_overflow=0 if writer else 2,
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the "begin" listener below owns BEGIN
        cur = dbapi_conn.cursor()
        if writer:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            # Never sleep in the loop: a lock held by another process is waited for in
            # `Database._begin`, asynchronously.
            cur.execute("PRAGMA busy_timeout=0")
            # Checkpoints sync the database file: `Database._checkpoint` runs them on a
            # worker thread, so no commit in the loop ever waits for the disk.
            cur.execute("PRAGMA wal_autocheckpoint=0")
        else:
            cur.execute("PRAGMA query_only=ON")
            cur.execute("PRAGMA busy_timeout=2000")
        cur.close()

    if writer:

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn: Any) -> None:
            # Take the write lock at BEGIN: a deferred transaction that reads then writes
            # fails at once in WAL mode when another writer got in between.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _is_locked(exc: sqlalchemy.exc.OperationalError) -> bool:
    return "locked" in str(exc.orig) or "busy" in str(exc.orig)


class Database:
    """Where a service's units of work run: one code path for SQLite and PostgreSQL.

    A unit of work is a plain function of a synchronous ORM `Session`, run by `write` (in
    one transaction, with the commit hooks) or `query` (read-only). How it runs depends on
    the database:

    - SQLite: in the event loop, on a synchronous pysqlite connection, the process's
      writers queued on an asyncio lock (SQLite has one writer at a time). A unit takes a
      few hundred microseconds of CPU and never waits for I/O (WAL with synchronous=NORMAL
      does not sync on commit), so this is far cheaper than aiosqlite's thread hops:
      measured on an insert + outbox row, 1.17 ms of CPU per transaction through the
      async ORM over aiosqlite, 0.34 ms here.
    - PostgreSQL: `AsyncSession.run_sync` over asyncpg, which waits for the server
      without holding up the loop.
    """

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.pool_size = pool_size
        self.engine = make_engine(url, pool_size=pool_size)
        sqlite = url.startswith("sqlite")
        self._sync_writer = _sqlite_sync_engine(url, writer=True) if sqlite else None
        self._sync_reader = _sqlite_sync_engine(url, writer=False) if sqlite else None
        # Queue this process's SQLite writers here, in order, rather than in SQLite's busy
        # handler, which sleeps and retries (measured: write p99 over a second and
        # timeouts with 64 concurrent writers).
        self._writer = asyncio.Lock()
        # PostgreSQL: callers wait for a pooled connection in these FIFO queues, not in
        # the pools' own. Waiting in asyncpg's pool lets a newcomer take a connection
        # before a woken waiter does, and the waiter goes to the back: measured on a list
        # route with 64 clients and 10 connections, p50 12 ms but p99 150 ms; gated here,
        # p99 30 ms.
        self._orm_gate = asyncio.Semaphore(2 * pool_size)  # the engine's pool + overflow
        self._raw_gate = asyncio.Semaphore(pool_size)
        self._pool: Any = None
        self._compiled_cache: dict[
            int, tuple[Executable, str, tuple[str, ...], dict[str, Any]]
        ] = {}
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # PostgreSQL: the consumer's own connection, outside the request queue above. A
        # copy that waits behind a burst of requests would hold up every request that
        # waits for the copy (the read barrier): measured, invites waited ~250 ms.
        self._background = (
            None
            if sqlite
            else async_sessionmaker(make_engine(url, connections=1), expire_on_commit=False)
        )
        self._commits = 0
        self._checkpointed: asyncio.Future[None] | None = None
        self._checkpoint_errors = ErrorOnce(log, "SQLite checkpoint")
        self._before_commit: list[Callable[[Session], None]] = []
        self._after_commit: list[Callable[[Session], None]] = []

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def on_before_commit(self, hook: Callable[[Session], None]) -> None:
        """Run `hook(session)` at the end of every unit of work, inside its transaction
        (in the order registered; the unit's result is in `session.info[UNIT_RESULT]`)."""
        self._before_commit.append(hook)

    def on_after_commit(self, hook: Callable[[Session], None]) -> None:
        self._after_commit.append(hook)

    async def write(self, work: Callable[[Session], T], *, background: bool = False) -> T:
        """Run `work` in one transaction: commit on success, roll back on any exception.

        `background`: a consumer's work, which on PostgreSQL has a connection of its own.
        """
        if self._sync_writer is None:
            gate = contextlib.nullcontext() if background else self._orm_gate
            sessions = self._background if background and self._background else self.sessions
            async with gate, sessions() as session:
                async with session.begin():
                    result = await session.run_sync(self._unit, work)
                self._committed(session.sync_session)
            return result
        async with self._writer:
            with Session(self._sync_writer, expire_on_commit=False) as session:
                await self._begin(session)
                try:
                    result = self._unit(session, work)
                    session.commit()
                except BaseException:
                    session.rollback()
                    raise
                self._committed(session)
            self._maybe_checkpoint()
        return result

    async def query(self, work: Callable[[Session], T]) -> T:
        """Run read-only `work` (a WAL reader on SQLite: it never waits for a writer)."""
        if self._sync_reader is None:
            async with self._orm_gate, self.sessions() as session:
                return await session.run_sync(work)
        with Session(self._sync_reader) as session:
            return work(session)

    def _unit(self, session: Session, work: Callable[[Session], T]) -> T:
        result = work(session)
        session.info[UNIT_RESULT] = result
        for hook in self._before_commit:
            hook(session)
        return result

    def _committed(self, session: Session) -> None:
        for hook in self._after_commit:
            hook(session)

    async def _begin(self, session: Session) -> None:
        """BEGIN IMMEDIATE, waiting (without blocking the loop) while another process
        holds SQLite's write lock, e.g. a migration or a second replica."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BUSY_SECONDS
        delay = 0.001
        while True:
            try:
                session.connection()
                return
            except sqlalchemy.exc.OperationalError as exc:
                if not _is_locked(exc) or loop.time() >= deadline:
                    raise
                session.rollback()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def fetch(self, stmt: Executable, **params: Any) -> Sequence[Mapping[str, Any]]:
        """Rows of one read-only Core statement, by the cheapest path to each database.

        The hot list routes read through here (measured on a 20-row list, CPU per call:
        ORM session over aiosqlite ~2.6 ms, Core over aiosqlite ~1.3 ms, this ~0.25 ms;
        on PostgreSQL Core through SQLAlchemy ~0.65 ms, this ~0.16 ms).

        - SQLite: a plain synchronous connection in the event loop. A WAL reader never
          waits for a writer, and an indexed read takes a fraction of the cost of the
          hop to aiosqlite's thread and back.
        - PostgreSQL: the statement compiled once, then run on a raw asyncpg pool in
          autocommit (one round trip: no BEGIN/ROLLBACK around a single SELECT).
        Use bind parameters (`bindparam("name")`) and pass their values as keywords.
        """
        if self._sync_reader is not None:
            with self._sync_reader.connect() as conn:
                return conn.execute(stmt, params).mappings().all()
        sql, names, defaults = self._compiled(stmt)
        values = [params[n] if n in params else defaults[n] for n in names]
        pool = await self._raw_pool()
        async with self._raw_gate, pool.acquire() as conn:
            return await conn.fetch(sql, *values)

    def _compiled(self, stmt: Executable) -> tuple[str, tuple[str, ...], dict[str, Any]]:
        """SQL, parameter order and literal values of a statement, compiled once."""
        cached = self._compiled_cache.get(id(stmt))
        if cached is None or cached[0] is not stmt:
            compiled = stmt.compile(dialect=self.engine.dialect)
            names = tuple(compiled.positiontup or ())
            cached = (stmt, str(compiled), names, dict(compiled.params))
            self._compiled_cache[id(stmt)] = cached
        return cached[1], cached[2], cached[3]

    async def _raw_pool(self) -> Any:
        if self._pool is None:
            import asyncpg

            url = self.engine.url.set(drivername="postgresql")
            self._pool = await asyncpg.create_pool(
                url.render_as_string(hide_password=False), min_size=1, max_size=self.pool_size
            )
        return self._pool

    async def ping(self) -> None:
        if self._sync_reader is not None:
            with self._sync_reader.connect() as conn:
                conn.execute(text("SELECT 1"))
            return
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    def _maybe_checkpoint(self) -> None:
        """Every CHECKPOINT_EVERY commits, copy the WAL back into the database file on a
        worker thread (a PASSIVE checkpoint never blocks readers or writers)."""
        self._commits += 1
        if self._commits % CHECKPOINT_EVERY:
            return
        if self._checkpointed is not None and not self._checkpointed.done():
            return
        self._checkpointed = asyncio.get_running_loop().run_in_executor(None, self._checkpoint)
        self._checkpointed.add_done_callback(self._checkpoint_done)

    def _checkpoint_done(self, future: asyncio.Future[None]) -> None:
        if future.cancelled():
            return
        if (exc := future.exception()) is not None:
            # A failed checkpoint loses nothing (the WAL keeps the pages) but must be seen.
            self._checkpoint_errors.note(exc, expected=isinstance(exc, sqlite3.OperationalError))
        else:
            self._checkpoint_errors.clear()

    def _checkpoint(self) -> None:
        path = make_url(self.url).database
        with contextlib.closing(sqlite3.connect(path or ":memory:", timeout=1)) as conn:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    async def dispose(self) -> None:
        if self._checkpointed is not None:
            with contextlib.suppress(Exception):
                await self._checkpointed
        await self.engine.dispose()
        if self._background is not None:
            await self._background.kw["bind"].dispose()
        for engine in (self._sync_reader, self._sync_writer):
            if engine is not None:
                engine.dispose()
        if self._pool is not None:
            await self._pool.close()
