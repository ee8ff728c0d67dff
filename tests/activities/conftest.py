"""Fixtures and helpers of the activities tests: accounts, connections, activities, events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from redis.asyncio import Redis

from services.activities.app import MIGRATIONS
from services.activities.tables import OutboxEvent
from services.common.consumer import decode_entry
from services.common.db import Database
from services.common.events import ACTIVITIES_STREAM, Event
from services.common.migrations import upgrade
from services.common.outbox import Outbox

from ..api import Account, Api, Reply
from ..stack import Stack

ACTIVITY_KEYS = {
    "id",
    "professional_id",
    "title",
    "description",
    "starts_at",
    "capacity",
    "created_at",
    "duration_minutes",
    "waitlist",
    "places_left",
    "status",
    "invites",
}
SUMMARY_KEYS = ACTIVITY_KEYS - {"invites"}
INVITE_KEYS = {"id", "status", "client_id", "activity", "created_at", "updated_at"}
UNKNOWN_ID = 2**62


@pytest.fixture
def api(http: aiohttp.ClientSession, stack: Stack) -> Api:
    """The system through the gateway."""
    return Api(http, stack.gateway_url, stack.inbox)


@pytest_asyncio.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    """The activities database, migrated, on a SQLite file, for in-process use cases."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'activities.db'}"
    await asyncio.to_thread(upgrade, MIGRATIONS, url)
    database = Database(url)
    # The outbox's commit hooks write staged events into the table (its relay never runs
    # here, and the client never connects).
    Outbox(database, Redis(), OutboxEvent, name="activities")
    yield database
    await database.dispose()


@dataclass
class Pair:
    professional: Account
    client: Account
    connection_id: int


async def connect(api: Api, professional: Account, client: Account) -> int:
    """The client asks, the professional accepts; returns the connection id."""
    asked = await api.call(
        "POST",
        "/api/connection/request-pro",
        json={"professional_id": professional.id},
        token=client.token,
    )
    assert asked.status == 201, asked.text
    connection_id = asked.body["id"]
    answered = await api.call(
        "POST",
        "/api/connection/respond",
        json={"connection_id": connection_id, "action": "accept"},
        token=professional.token,
    )
    assert answered.status == 200, answered.text
    assert answered.body["status"] == "accepted"
    return connection_id


async def connected_pair(api: Api, professional: Account | None = None) -> Pair:
    """A fresh client with an accepted connection to `professional` (fresh if None)."""
    if professional is None:
        professional, client = await asyncio.gather(
            api.signup("professional"), api.signup("client")
        )
    else:
        client = await api.signup("client")
    return Pair(professional, client, await connect(api, professional, client))


async def connected_clients(api: Api, professional: Account, n: int) -> list[Account]:
    """`n` fresh clients, each with an accepted connection to `professional`."""
    pairs = await asyncio.gather(*(connected_pair(api, professional) for _ in range(n)))
    return [p.client for p in pairs]


async def remove_connection(api: Api, by: Account, connection_id: int) -> None:
    reply = await api.call("DELETE", f"/api/connection/{connection_id}", token=by.token)
    assert reply.status == 204, reply.text


async def create(api: Api, professional: Account, **body: Any) -> dict[str, Any]:
    """A new activity of `professional` (title defaulted); returns the Activity."""
    body.setdefault("title", "Morning Workout")
    reply = await api.call("POST", "/api/activities/", json=body, token=professional.token)
    assert reply.status == 201, reply.text
    return reply.body


async def invite_reply(api: Api, professional: Account, activity_id: int, client_id: int) -> Reply:
    return await api.call(
        "POST",
        "/api/activities/invite",
        json={"activity_id": activity_id, "client_id": client_id},
        token=professional.token,
    )


async def invite(
    api: Api, professional: Account, activity_id: int, client: Account
) -> dict[str, Any]:
    """A new invite; returns the Invite."""
    reply = await invite_reply(api, professional, activity_id, client.id)
    assert reply.status == 201, reply.text
    return reply.body


async def respond_reply(api: Api, client: Account, invite_id: int, action: str) -> Reply:
    return await api.call(
        "POST",
        "/api/activities/respond",
        json={"invite_id": invite_id, "action": action},
        token=client.token,
    )


async def respond(api: Api, client: Account, invite_id: int, action: str) -> dict[str, Any]:
    reply = await respond_reply(api, client, invite_id, action)
    assert reply.status == 200, reply.text
    return reply.body


async def delete(api: Api, professional: Account, activity_id: int) -> None:
    reply = await api.call("DELETE", f"/api/activities/{activity_id}", token=professional.token)
    assert reply.status == 204, reply.text


async def listing(api: Api, account: Account, query: str = "") -> list[dict[str, Any]]:
    """GET /api/activities/list as `account`."""
    reply = await api.call("GET", f"/api/activities/list{query}", token=account.token)
    assert reply.status == 200, reply.text
    assert isinstance(reply.body, list), reply.body
    return reply.body


def by_id(items: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {item["id"]: item for item in items}


def summary_of(activity: dict[str, Any]) -> dict[str, Any]:
    """An Activity as embedded in an Invite (without "invites")."""
    return {k: v for k, v in activity.items() if k != "invites"}


def assert_timestamp(value: Any) -> None:
    assert isinstance(value, str) and value.endswith("Z"), value


def assert_activity_shape(activity: dict[str, Any]) -> None:
    assert set(activity) == ACTIVITY_KEYS, activity
    assert set(activity["invites"]) == {"pending", "accepted", "declined"}, activity
    assert_timestamp(activity["created_at"])


def assert_invite_shape(invite: dict[str, Any]) -> None:
    # A waitlisted invite also says where it is in the line.
    extra = {"waitlist_position"} if invite["status"] == "waitlisted" else set()
    assert set(invite) == INVITE_KEYS | extra, invite
    assert set(invite["activity"]) == SUMMARY_KEYS, invite
    assert_timestamp(invite["created_at"])
    assert_timestamp(invite["updated_at"])


# --- the activities.events stream --------------------------------------------------------


async def stream_mark(redis: aioredis.Redis, stream: str = ACTIVITIES_STREAM) -> str:
    """The id of the last entry on `stream` now ("0-0" when empty)."""
    last = await redis.xrevrange(stream, count=1)
    return last[0][0].decode() if last else "0-0"


async def events_after(
    redis: aioredis.Redis, mark: str, stream: str = ACTIVITIES_STREAM
) -> list[Event]:
    """Every event on `stream` after entry `mark`, oldest first."""
    return [decode_entry(fields) for _, fields in await redis.xrange(stream, min=f"({mark}")]


async def wait_events(
    redis: aioredis.Redis,
    mark: str,
    match: Callable[[Event], bool],
    count: int,
    *,
    within: float = 2.0,
) -> list[Event]:
    """Poll until at least `count` events after `mark` match; returns all that match."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        found = [e for e in await events_after(redis, mark) if match(e)]
        if len(found) >= count or loop.time() >= deadline:
            return found
        await asyncio.sleep(0.01)


def activity_id_of(event: Event) -> int | None:
    """The activity an activities event is about."""
    data = event.data
    if hasattr(data, "activity"):
        return data.activity.id
    if hasattr(data, "invite"):
        return data.invite.activity.id
    return None


def about(*activity_ids: int) -> Callable[[Event], bool]:
    wanted = set(activity_ids)
    return lambda event: activity_id_of(event) in wanted
