"""Idempotency records in-process, on both databases: the record commits with the change,
replicas racing on one key, expiry, and the header's syntax."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel
from sqlalchemy import String, func, insert, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from services.common.db import Database, utcnow
from services.common.idempotency import Idempotency, IdempotencyMixin, parse_key
from services.common.openapi import Route
from services.common.problems import Problem, error_middleware
from services.common.tables import Id
from services.common.tokens import TokenIssuer, TokenVerifier
from services.common.web import authenticate, read_json, verifier_key


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))


class IdempotencyKey(IdempotencyMixin, Base):
    pass


class ItemIn(BaseModel):
    name: str


class ItemOut(BaseModel):
    id: int
    name: str


@dataclass
class Replica:
    """One service process: its app, its database handle, and test controls."""

    client: TestClient
    db: Database
    idempotency: Idempotency
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # a request reached the gate
    crash_after_commit: bool = False
    pings: int = 0

    async def post(self, token: str, key: str, name: str) -> tuple[int, dict[str, str], str]:
        resp = await self.client.post(
            "/items",
            json={"name": name},
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key},
        )
        return resp.status, dict(resp.headers), await resp.text()


KEY = Ed25519PrivateKey.generate()
ISSUER = TokenIssuer(KEY, issuer="t", audience="t", ttl=dt.timedelta(minutes=5))


def token(user_id: int) -> str:
    return ISSUER.issue(user_id=user_id, role="client", session_id="s")[0]


def replica_app(db: Database, secret: bytes | None = None) -> tuple[web.Application, Replica]:
    holder: dict[str, Replica] = {}

    async def create(request: web.Request) -> web.Response:
        await authenticate(request)
        body = await read_json(request, ItemIn)
        replica = holder["r"]
        replica.arrived.set()
        await replica.gate.wait()

        def add(session: Session) -> ItemOut:
            item_id = session.scalar(insert(Item).values(name=body.name).returning(Item.id))
            return ItemOut(id=item_id, name=body.name)

        item = await db.write(add)
        if replica.crash_after_commit:
            # What the caller sees when the process dies between the commit and the reply.
            raise ConnectionResetError("reply lost")
        return web.Response(
            status=201, body=item.model_dump_json().encode(), content_type="application/json"
        )

    async def anonymous(request: web.Request) -> web.Response:
        """An anonymous create (like signup): its answer is stored sealed."""
        body = await read_json(request, ItemIn)

        def add(session: Session) -> ItemOut:
            item_id = session.scalar(insert(Item).values(name=body.name).returning(Item.id))
            return ItemOut(id=item_id, name=body.name)

        item = await db.write(add)
        return web.Response(
            status=201, body=item.model_dump_json().encode(), content_type="application/json"
        )

    async def ping(request: web.Request) -> web.Response:
        """A 2xx that writes nothing to the database."""
        await authenticate(request)
        holder["r"].pings += 1
        return web.Response(status=204)

    routes = [
        Route("POST", "/items", create, "Create", status=201, body=ItemIn, response=ItemOut),
        Route("POST", "/ping", ping, "Ping", status=204),
        Route("POST", "/anonymous", anonymous, "Create", status=201, body=ItemIn,
              response=ItemOut, auth=False),
    ]  # fmt: skip
    idempotency = Idempotency(db, IdempotencyKey, routes, secret=secret)

    @web.middleware
    async def idempotent(request: web.Request, handler: Callable[..., Any]) -> Any:
        return await idempotency.middleware(request, handler)

    app = web.Application(middlewares=[error_middleware, idempotent])
    app[verifier_key] = TokenVerifier(KEY.public_key(), issuer="t", audience="t")
    app.router.add_post("/items", create)
    app.router.add_post("/ping", ping)
    app.router.add_post("/anonymous", anonymous)
    replica = Replica(client=None, db=db, idempotency=idempotency)  # type: ignore[arg-type]
    holder["r"] = replica
    replica.gate.set()
    return app, replica


@pytest_asyncio.fixture
async def replicas(fresh_url: str) -> AsyncIterator[list[Replica]]:
    """Two replicas of one service on one database (SQLite file or PostgreSQL)."""
    setup = Database(fresh_url)
    async with setup.engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    await setup.dispose()
    made: list[Replica] = []
    try:
        for _ in range(2):
            db = Database(fresh_url)
            app, replica = replica_app(db)
            replica.client = TestClient(TestServer(app))
            await replica.client.start_server()
            made.append(replica)
        yield made
    finally:
        for replica in made:
            await replica.client.close()
            await replica.db.dispose()


async def count_items(db: Database) -> int:
    return await db.query(lambda s: s.scalar(select(func.count()).select_from(Item)))


async def test_a_reply_lost_after_the_commit_is_replayed(replicas: list[Replica]) -> None:
    one = replicas[0]
    one.crash_after_commit = True
    status, _, _ = await one.post(token(1), "k1", "first")
    assert status in (500, 503)  # the change committed; the caller never saw it
    one.crash_after_commit = False
    status, headers, text = await one.post(token(1), "k1", "first")
    assert status == 201, text
    assert headers["Idempotent-Replayed"] == "true"
    assert ItemOut.model_validate_json(text).name == "first"
    assert await count_items(one.db) == 1


async def test_replicas_racing_on_one_key_apply_it_once(replicas: list[Replica]) -> None:
    a, b = replicas
    a.gate.clear()
    b.gate.clear()
    first = asyncio.create_task(a.post(token(7), "race", "x"))
    second = asyncio.create_task(b.post(token(7), "race", "x"))
    # Both past their lookup (which found nothing), held before their change.
    await asyncio.wait_for(asyncio.gather(a.arrived.wait(), b.arrived.wait()), 10)
    assert not first.done() and not second.done()
    a.gate.set()
    won = await first
    assert won[0] == 201 and "Idempotent-Replayed" not in won[1]
    b.gate.set()  # b now applies its change too, meets a's record, and rolls back
    lost = await second
    assert lost[0] == 201, lost[2]
    assert lost[1]["Idempotent-Replayed"] == "true"
    assert lost[2] == won[2]
    assert await count_items(a.db) == 1


async def test_keys_are_per_user_and_reuse_is_422(replicas: list[Replica]) -> None:
    one = replicas[0]
    assert (await one.post(token(1), "same", "a"))[0] == 201
    theirs = await one.post(token(2), "same", "a")
    assert theirs[0] == 201 and "Idempotent-Replayed" not in theirs[1]
    reused = await one.post(token(1), "same", "b")
    assert reused[0] == 422 and '"idempotency_key_reused"' in reused[2]
    assert await count_items(one.db) == 2


async def test_an_expired_record_is_a_new_request_and_is_purged(replicas: list[Replica]) -> None:
    one = replicas[0]
    assert (await one.post(token(1), "old", "a"))[0] == 201
    stale = utcnow() - dt.timedelta(hours=25)
    table = IdempotencyKey.__table__

    await one.db.write(lambda s: s.execute(table.update().values(created_at=stale)))
    again = await one.post(token(1), "old", "b")  # another body, but the key expired
    assert again[0] == 201 and "Idempotent-Replayed" not in again[1]
    assert await count_items(one.db) == 2
    await one.db.write(lambda s: s.execute(table.update().values(created_at=stale)))
    await one.idempotency.purge()
    rows = await one.db.query(lambda s: s.scalar(select(func.count()).select_from(table)))
    assert rows == 0


async def test_a_2xx_that_wrote_nothing_is_recorded_on_its_own(replicas: list[Replica]) -> None:
    one = replicas[0]
    headers = {"Authorization": f"Bearer {token(3)}", "Idempotency-Key": "p"}
    first = await one.client.post("/ping", headers=headers)
    again = await one.client.post("/ping", headers=headers)
    assert (first.status, again.status) == (204, 204)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert one.pings == 1


async def test_anonymous_answers_are_sealed_and_a_new_secret_starts_afresh(
    fresh_url: str, replicas: list[Replica]
) -> None:
    db = replicas[0].db
    apps = [replica_app(db, secret=s)[0] for s in (b"one" * 11, b"two" * 11)]
    clients = [TestClient(TestServer(app)) for app in apps]
    for client in clients:
        await client.start_server()
    try:
        post = {"json": {"name": "secret answer"}, "headers": {"Idempotency-Key": "a"}}
        first = await clients[0].post("/anonymous", **post)
        again = await clients[0].post("/anonymous", **post)
        assert (first.status, again.status) == (201, 201)
        assert again.headers["Idempotent-Replayed"] == "true"
        assert await again.text() == await first.text()
        stored = await db.query(lambda s: s.scalar(select(IdempotencyKey.body)))
        assert "secret answer" not in stored
        other = await clients[0].post(
            "/anonymous", json={"name": "other"}, headers={"Idempotency-Key": "a"}
        )
        assert other.status == 422
        # Under another secret the record cannot be opened: a new request, not a 409.
        rotated = await clients[1].post("/anonymous", **post)
        assert rotated.status == 201 and "Idempotent-Replayed" not in rotated.headers
        assert await count_items(db) == 2
    finally:
        for client in clients:
            await client.close()


@pytest.mark.parametrize(
    ("raw", "key"), [("abc", "abc"), ('"abc"', "abc"), ("a" * 255, "a" * 255), ("!#~", "!#~")]
)
def test_keys_that_parse(raw: str, key: str) -> None:
    assert parse_key([raw]) == key


@pytest.mark.parametrize(
    "raw", ["", '""', "a" * 256, '"' + "a" * 256 + '"', "a b", 'a"b', "\u00e9", '"abc']
)
def test_keys_that_do_not(raw: str) -> None:
    with pytest.raises(Problem) as caught:
        parse_key([raw])
    assert caught.value.status == 400


def test_two_key_headers_are_refused() -> None:
    with pytest.raises(Problem):
        parse_key(["a", "b"])
