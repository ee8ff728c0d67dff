"""Event lag, REST commit -> projection applied: `python -m bench.lag_bench [sqlite|postgres]`."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from sqlalchemy.engine import make_url

from services.common.consumer import decode_entry
from services.common.events import CONNECTIONS_STREAM
from tests.stack import Stack

from .harness import log_findings, running_stack

CHANGES = 1000
PAIRS = 20
IN_FLIGHT = 20
POLL_S = 0.001
TARGET_P99_MS = 50.0
SETTLE_TIMEOUT_S = 5.0
GROUPS = ("activities", "auth")  # the other services' projections of connection.*
RANK = {"pending": 0, "accepted": 1, "removed": 2}  # a connection only moves forward


def entry_key(entry_id: Any) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Change:
    conn_id: int
    status: str
    sent: float
    returned: float


class Projection:
    """Read-only view of the activities service's `connections` table (its copy)."""

    def __init__(self, stack: Stack) -> None:
        self.url = stack.databases["activities"]
        self.sqlite: sqlite3.Connection | None = None
        self.pg: Any = None

    async def open(self) -> None:
        url = make_url(self.url)
        if url.get_backend_name() == "sqlite":
            # WAL: a reader neither blocks nor is blocked by the service's writer.
            uri = f"file:{url.database}?mode=ro"
            self.sqlite = sqlite3.connect(uri, uri=True, isolation_level=None)
        else:
            import asyncpg

            dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
            self.pg = await asyncpg.connect(dsn)

    async def rows(self, low: int) -> list[tuple[int, str]]:
        sql = "SELECT connection_id, status FROM connections WHERE connection_id >= "
        if self.sqlite is not None:
            return self.sqlite.execute(sql + "?", (low,)).fetchall()
        return [tuple(r) for r in await self.pg.fetch(sql + "$1", low)]

    async def close(self) -> None:
        if self.sqlite is not None:
            self.sqlite.close()
        if self.pg is not None:
            await self.pg.close()


@dataclass
class Watch:
    """Two ~1 ms pollers: the projection rows, and the stream plus its consumer groups."""

    projection: Projection
    redis: aioredis.Redis
    changes: list[Change] = field(default_factory=list)
    open_conns: set[int] = field(default_factory=set)  # may still change: keep polling them
    max_conn: int = 0
    seen_db: dict[int, dict[int, float]] = field(default_factory=dict)  # conn -> rank -> t
    on_stream: dict[tuple[int, str], tuple[tuple[int, int], float]] = field(default_factory=dict)
    duplicates: int = 0
    unacked: dict[str, set[tuple[int, int]]] = field(
        default_factory=lambda: {g: set() for g in GROUPS}
    )
    acked: dict[str, dict[tuple[int, int], float]] = field(
        default_factory=lambda: {g: {} for g in GROUPS}
    )
    db_polls: list[float] = field(default_factory=list)
    redis_polls: list[float] = field(default_factory=list)
    stopped: bool = False

    def note_conn(self, conn_id: int) -> None:
        self.open_conns.add(conn_id)
        self.max_conn = max(self.max_conn, conn_id)

    async def poll_db(self) -> None:
        while not self.stopped:
            # New connections get higher ids, so `>= max_conn + 1` also catches one whose
            # request has not returned yet.
            low = min(self.open_conns, default=self.max_conn + 1)
            low = min(low, self.max_conn + 1)
            rows = await self.projection.rows(low)
            now = time.perf_counter()
            self.db_polls.append(now)
            for conn_id, status in rows:
                rank = RANK.get(status)
                if rank is None:
                    continue
                self.seen_db.setdefault(conn_id, {}).setdefault(rank, now)
                if rank == RANK["removed"]:
                    self.open_conns.discard(conn_id)
            await asyncio.sleep(POLL_S)

    async def poll_redis(self) -> None:
        last = "0-0"
        while not self.stopped:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xread({CONNECTIONS_STREAM: last}, count=1000)
                pipe.xinfo_groups(CONNECTIONS_STREAM)
                for group in GROUPS:
                    pipe.xpending_range(CONNECTIONS_STREAM, group, "-", "+", 10_000)
                replies = await pipe.execute(raise_on_error=False)
            now = time.perf_counter()
            self.redis_polls.append(now)
            read, groups, *pendings = replies
            for _stream, entries in read if isinstance(read, list) else []:
                for entry_id, fields in entries:
                    last = entry_id
                    event = decode_entry(fields)
                    if not event.type.startswith("connection."):
                        continue
                    conn = event.data.connection
                    key = (conn.id, conn.status)
                    if key in self.on_stream:
                        self.duplicates += 1
                        continue
                    self.on_stream[key] = (entry_key(entry_id), now)
                    for group in GROUPS:
                        self.unacked[group].add(entry_key(entry_id))
            if isinstance(groups, Exception):
                await asyncio.sleep(POLL_S)
                continue
            delivered = {_text(g["name"]): entry_key(g["last-delivered-id"]) for g in groups}
            for group, pending in zip(GROUPS, pendings, strict=True):
                if group not in delivered or isinstance(pending, Exception):
                    continue
                waiting = {entry_key(p["message_id"]) for p in pending}
                done = {
                    e for e in self.unacked[group] if e <= delivered[group] and e not in waiting
                }
                for e in done:
                    self.acked[group][e] = now
                self.unacked[group] -= done
            await asyncio.sleep(POLL_S)

    def applied_at(self, change: Change) -> float | None:
        """First poll that saw this change or a later one of the same connection."""
        seen = self.seen_db.get(change.conn_id, {})
        return min((t for rank, t in seen.items() if rank >= RANK[change.status]), default=None)

    def settled(self, change: Change) -> bool:
        if self.applied_at(change) is None:
            return False
        entry = self.on_stream.get((change.conn_id, change.status))
        return entry is not None and all(entry[0] in self.acked[g] for g in GROUPS)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Pair:
    """A professional and a client cycling request-pro -> accept -> DELETE."""

    def __init__(self, http: aiohttp.ClientSession, base: str, pro: dict, client: dict) -> None:
        self.http, self.base, self.pro, self.client = http, base, pro, client
        self.conn_id: int | None = None
        self.status: str | None = None

    async def change(self, watch: Watch) -> Change:
        sent = time.perf_counter()
        if self.status in (None, "removed"):
            status, conn = (
                "pending",
                await self._call(
                    "POST",
                    "/api/connection/request-pro",
                    self.client,
                    {"professional_id": self.pro["user"]["id"]},
                    201,
                ),
            )
            self.conn_id = conn["id"]
        elif self.status == "pending":
            status, _ = (
                "accepted",
                await self._call(
                    "POST",
                    "/api/connection/respond",
                    self.pro,
                    {"connection_id": self.conn_id, "action": "accept"},
                    200,
                ),
            )
        else:
            status, _ = (
                "removed",
                await self._call(
                    "DELETE", f"/api/connection/{self.conn_id}", self.client, None, 204
                ),
            )
        returned = time.perf_counter()
        assert self.conn_id is not None
        watch.note_conn(self.conn_id)
        self.status = status
        change = Change(self.conn_id, status, sent, returned)
        watch.changes.append(change)
        return change

    async def _call(self, method: str, path: str, who: dict, body: Any, expect: int) -> Any:
        headers = {"Authorization": f"Bearer {who['token']}"}
        async with self.http.request(method, self.base + path, json=body, headers=headers) as r:
            if r.status != expect:
                raise RuntimeError(f"{method} {path} -> {r.status}: {await r.text()}")
            return await r.json() if r.status != 204 else None


async def make_pairs(http: aiohttp.ClientSession, base: str, n: int) -> list[Pair]:
    gate = asyncio.Semaphore(16)
    tag = uuid.uuid4().hex[:8]

    async def signup(role: str, i: int) -> dict:
        body = {
            "name": f"Lag {role} {i}",
            "email": f"lag-{role}-{i}-{tag}@bench.example.com",
            "password": "bench password",
            "role": role,
        }
        async with gate, http.post(base + "/api/auth/signup", json=body) as resp:
            if resp.status != 201:
                raise RuntimeError(f"signup -> {resp.status}: {await resp.text()}")
            return await resp.json()

    pros = await asyncio.gather(*(signup("professional", i) for i in range(n)))
    clients = await asyncio.gather(*(signup("client", i) for i in range(n)))
    return [Pair(http, base, p, c) for p, c in zip(pros, clients, strict=True)]


async def measure(stack: Stack, label: str, in_flight: int) -> dict[str, Any]:
    """CHANGES connection changes, `in_flight` at a time, each timed to its projection."""
    projection = Projection(stack)
    await projection.open()
    redis = aioredis.Redis.from_url(stack.redis_url)
    watch = Watch(projection, redis)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        pairs = await make_pairs(http, stack.gateway_url, max(PAIRS, in_flight))
        pollers = [asyncio.create_task(watch.poll_db()), asyncio.create_task(watch.poll_redis())]
        await asyncio.sleep(0.1)
        started = time.perf_counter()
        if in_flight == 1:
            for i in range(CHANGES):
                change = await pairs[i % len(pairs)].change(watch)
                deadline = time.perf_counter() + SETTLE_TIMEOUT_S
                while not watch.settled(change) and time.perf_counter() < deadline:
                    await asyncio.sleep(0.0005)
        else:
            quota = [CHANGES // in_flight + (w < CHANGES % in_flight) for w in range(in_flight)]

            async def worker(pair: Pair, n: int) -> None:
                for _ in range(n):
                    await pair.change(watch)

            await asyncio.gather(*(worker(pairs[w], quota[w]) for w in range(in_flight)))
        elapsed = time.perf_counter() - started
        deadline = time.perf_counter() + 3 * SETTLE_TIMEOUT_S
        while time.perf_counter() < deadline and not all(watch.settled(c) for c in watch.changes):
            await asyncio.sleep(0.01)
        watch.stopped = True
        await asyncio.gather(*pollers)
    dead = await redis.xlen(CONNECTIONS_STREAM + ".dead")
    await redis.aclose()
    await projection.close()
    return summarise(label, watch, elapsed, dead)


def summarise(label: str, watch: Watch, elapsed: float, dead: int) -> dict[str, Any]:
    series: dict[str, list[float]] = {"activities projection row": []}
    series |= {f"acked by group {g}": [] for g in GROUPS}
    series["on connections.events"] = []
    early = dict.fromkeys(series, 0)
    rest_ms = [(c.returned - c.sent) * 1000 for c in watch.changes]

    def add(name: str, at: float | None, change: Change) -> None:
        if at is None:
            return
        if at < change.returned:
            early[name] += 1
        series[name].append(max(0.0, at - change.returned) * 1000)

    for change in watch.changes:
        add("activities projection row", watch.applied_at(change), change)
        entry = watch.on_stream.get((change.conn_id, change.status))
        add("on connections.events", entry[1] if entry else None, change)
        for group in GROUPS:
            at = watch.acked[group].get(entry[0]) if entry else None
            add(f"acked by group {group}", at, change)
    mix = {s: sum(c.status == s for c in watch.changes) for s in RANK}
    return {
        "label": label,
        "changes": len(watch.changes),
        "mix": mix,
        "elapsed": elapsed,
        "series": series,
        "early": early,
        "rest_ms": rest_ms,
        "duplicates": watch.duplicates,
        "dead": dead,
        "db_poll_ms": _intervals(watch.db_polls),
        "redis_poll_ms": _intervals(watch.redis_polls),
    }


def _intervals(stamps: list[float]) -> tuple[float, float]:
    gaps = [(b - a) * 1000 for a, b in itertools.pairwise(stamps)]
    return (pct(gaps, 0.5), pct(gaps, 0.99)) if gaps else (0.0, 0.0)


def report(backend: str, runs: list[dict[str, Any]]) -> None:
    print(
        f"\nevent lag on {backend}: REST call returned (upper bound on the commit) -> "
        f"the change seen applied elsewhere, {CHANGES} connection changes per run"
    )
    for run in runs:
        n = run["changes"]
        mix = ", ".join(f"{v} {k}" for k, v in run["mix"].items())
        print(
            f"\n{run['label']}: {n} changes ({mix}) in {run['elapsed']:.1f} s "
            f"= {n / run['elapsed']:.0f} changes/s"
        )
        db, rd = run["db_poll_ms"], run["redis_poll_ms"]
        print(
            f"  poll interval p50/p99: projection {db[0]:.2f}/{db[1]:.2f} ms, "
            f"redis {rd[0]:.2f}/{rd[1]:.2f} ms"
        )
        rest = run["rest_ms"]
        print(
            f"  the REST call itself: p50 {pct(rest, 0.5):.1f} ms, p99 {pct(rest, 0.99):.1f} ms, "
            f"max {max(rest):.1f} ms"
        )
        print(
            f"  {'seen':<40} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'seen':>10} "
            f"{'by return':>10}"
        )
        for name, lags in run["series"].items():
            if not lags:
                print(f"  {name:<40} {'-':>8} {'-':>8} {'-':>8} {0:>5}/{n:<4}")
                continue
            print(
                f"  {name:<40} {pct(lags, 0.5):>8.2f} {pct(lags, 0.99):>8.2f} "
                f"{max(lags):>8.2f} {len(lags):>5}/{n:<4} {run['early'][name]:>10}"
            )
        applied = run["series"]["activities projection row"]
        ok_all = all(len(v) == n for v in run["series"].values())
        p99 = pct(applied, 0.99) if applied else float("inf")
        print(
            f"  events on the stream {len(run['series']['on connections.events'])}/{n}, "
            f"applied in the activities projection {len(applied)}/{n}, duplicates on the stream "
            f"{run['duplicates']}, dead letters {run['dead']}: "
            f"{'all there' if ok_all else 'SOME MISSING'}"
        )
        print(
            f"  target: projection p99 < {TARGET_P99_MS:.0f} ms -> {p99:.2f} ms: "
            f"{'met' if p99 < TARGET_P99_MS else 'NOT MET'}"
        )
    print(
        "\n  ('by return' = already seen when the REST call returned, counted as 0 ms; "
        "acks come after the projection's commit, so they bound it from above)"
    )


async def run(stack: Stack) -> list[dict[str, Any]]:
    sequential = await measure(stack, "sequential, 1 change in flight", 1)
    loaded = await measure(stack, f"under load, {IN_FLIGHT} changes in flight", IN_FLIGHT)
    return [sequential, loaded]


def main() -> None:
    backend = sys.argv[1] if len(sys.argv) > 1 else "sqlite"
    if backend not in ("sqlite", "postgres"):
        raise SystemExit("usage: python -m bench.lag_bench [sqlite|postgres]")
    with running_stack(backend) as stack:
        runs = asyncio.run(run(stack))
        report(backend, runs)
        print("\nprocess logs:")
        log_findings(stack)


if __name__ == "__main__":
    main()
