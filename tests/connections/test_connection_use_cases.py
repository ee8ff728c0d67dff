"""Connections' use cases and user handlers in-process, on a migrated SQLite database: an
invitation binds on verification only, and the professional's view is masked until accepted."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from redis.asyncio import Redis
from sqlalchemy import select

from services.common.db import Database
from services.common.events import UserData
from services.common.mail import Mailer
from services.common.migrations import upgrade
from services.common.outbox import Outbox
from services.common.tokens import Identity
from services.connections.app import MIGRATIONS
from services.connections.service import (
    ConnectionsContext,
    invite_client,
    list_connections,
    on_user_email_verified,
    on_user_registered,
    respond,
)
from services.connections.tables import MailOutbox, OutboxEvent

T0 = dt.datetime(2026, 12, 4, 9, 0, tzinfo=dt.UTC)
PRO = UserData(id=1, name="Dr Ada", email="ada@example.com", role="professional", created_at=T0)


def client(verified: bool, email: str = "bob@example.com") -> UserData:
    return UserData(
        id=2, name="Bob", email=email, role="client", created_at=T0, email_verified=verified
    )


@pytest_asyncio.fixture
async def ctx(tmp_path: Path) -> AsyncIterator[ConnectionsContext]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'connections.db'}"
    await asyncio.to_thread(upgrade, MIGRATIONS, url)
    db = Database(url)
    Outbox(db, Redis(), OutboxEvent, name="connections")  # hooks only; never relays here
    Mailer(db, MailOutbox, smtp_url="smtp://127.0.0.1:1", mail_from="x@hc.example")

    async def caught_up(about: object = None) -> bool:
        return True

    await db.write(on_user_registered(PRO))
    yield ConnectionsContext(db=db, catch_up=caught_up, public_url="https://hc.example")
    await db.dispose()


def who(user: UserData) -> Identity:
    return Identity(user_id=user.id, role=user.role, jti="j", sid="s", expires_at=2_000_000_000)


async def events(ctx: ConnectionsContext) -> list[tuple[str, list[int], dict]]:
    rows = await ctx.db.query(
        lambda s: s.execute(select(OutboxEvent.type, OutboxEvent.payload)).all()
    )
    out = []
    for kind, payload in rows:
        body = json.loads(payload)
        out.append((kind, body["recipient_ids"], body["data"]["connection"]["client"]))
    return out


async def mails(ctx: ConnectionsContext) -> list[tuple[str, str]]:
    rows = await ctx.db.query(
        lambda s: s.execute(select(MailOutbox.to_address, MailOutbox.subject)).all()
    )
    return [tuple(r) for r in rows]


async def test_registration_binds_nothing_verification_binds(ctx: ConnectionsContext) -> None:
    made = await invite_client(ctx, identity=who(PRO), client_email="bob@example.com")
    assert made.client.model_dump() == {"id": None, "name": None, "email": "bob@example.com"}
    assert await mails(ctx) == [("bob@example.com", "Dr Ada invited you to HealthConnect")]
    await ctx.db.write(on_user_registered(client(verified=False)))
    assert (
        await list_connections(ctx, identity=who(client(False)), status=None, limit=50, offset=0)
        == []
    )
    await ctx.db.write(on_user_email_verified(client(verified=True)))
    (mine,) = await list_connections(
        ctx, identity=who(client(True)), status=None, limit=50, offset=0
    )
    assert mine["client"] == {"id": 2, "name": "Bob", "email": "bob@example.com"}
    (theirs,) = await list_connections(ctx, identity=who(PRO), status=None, limit=50, offset=0)
    assert theirs["client"] == {"id": None, "name": None, "email": "bob@example.com"}
    assert [(k, r) for k, r, _ in await events(ctx)] == [
        ("connection.invited", []),
        ("connection.invited", [2]),
    ]
    # Applied again (redelivery), nothing is bound twice.
    await ctx.db.write(on_user_email_verified(client(verified=True)))
    assert len(await events(ctx)) == 2


async def test_an_existing_unverified_client_gets_no_binding_and_no_mail(
    ctx: ConnectionsContext,
) -> None:
    await ctx.db.write(on_user_registered(client(verified=False)))
    made = await invite_client(ctx, identity=who(PRO), client_email="bob@example.com")
    assert made.client.id is None
    assert await mails(ctx) == []
    assert [r for _, r, _ in await events(ctx)] == [[]]


async def test_a_verified_client_is_bound_at_once_but_masked_until_accepting(
    ctx: ConnectionsContext,
) -> None:
    await ctx.db.write(on_user_registered(client(verified=False)))
    await ctx.db.write(on_user_email_verified(client(verified=True)))
    made = await invite_client(ctx, identity=who(PRO), client_email="bob@example.com")
    assert made.client.model_dump() == {"id": None, "name": None, "email": "bob@example.com"}
    ((kind, recipients, shown),) = await events(ctx)
    assert (kind, recipients, shown["id"]) == ("connection.invited", [2], 2)
    rejected = await respond(ctx, identity=who(client(True)), connection_id=made.id, accept=False)
    assert rejected.client.id == 2  # the client sees themself
    kind, recipients, shown = (await events(ctx))[-1]
    assert (kind, recipients, shown["id"], shown["name"]) == (
        "connection.rejected",
        [1],
        None,
        None,
    )
