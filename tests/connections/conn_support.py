"""Helpers of the connections tests: calls, the Connection shape check, and stream reading."""

from __future__ import annotations

import re
from typing import Any

import redis.asyncio as aioredis

from services.common.consumer import decode_entry
from services.common.events import Event

from ..api import Account, Api, Reply, assert_problem, eventually

CONNECTION_KEYS = {
    "id",
    "status",
    "initiated_by",
    "professional",
    "client",
    "created_at",
    "updated_at",
}
PARTY_KEYS = {"id", "name", "email"}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def party(account: Account) -> dict[str, Any]:
    return {"id": account.id, "name": account.user["name"], "email": account.user["email"]}


def masked(connection: dict[str, Any]) -> dict[str, Any]:
    """`connection` as the professional who invited sees it until the client accepts: the
    client only as the address typed."""
    email = connection["client"]["email"]
    return {**connection, "client": {"id": None, "name": None, "email": email}}


def assert_connection(
    body: Any,
    *,
    status: str,
    initiated_by: str,
    professional: Account,
    client: Account | dict[str, Any],
) -> dict[str, Any]:
    """`body` is exactly a Connection object (API.md) with these values."""
    assert isinstance(body, dict), body
    assert set(body) == CONNECTION_KEYS, body
    assert isinstance(body["id"], int) and not isinstance(body["id"], bool) and body["id"] > 0
    assert body["status"] == status, body
    assert body["initiated_by"] == initiated_by, body
    assert set(body["professional"]) == PARTY_KEYS and set(body["client"]) == PARTY_KEYS, body
    assert body["professional"] == party(professional), body
    expected_client = client if isinstance(client, dict) else party(client)
    assert body["client"] == expected_client, body
    for key in ("created_at", "updated_at"):
        assert isinstance(body[key], str) and TIMESTAMP.match(body[key]), body
    assert body["updated_at"] >= body["created_at"], body
    return body


async def request_pro(api: Api, client: Account, professional_id: Any) -> Reply:
    return await api.call(
        "POST",
        "/api/connection/request-pro",
        json={"professional_id": professional_id},
        token=client.token,
    )


async def invite_client(api: Api, pro: Account, email: Any) -> Reply:
    return await api.call(
        "POST", "/api/connection/invite-client", json={"client_email": email}, token=pro.token
    )


async def respond(api: Api, account: Account, connection_id: Any, action: Any) -> Reply:
    return await api.call(
        "POST",
        "/api/connection/respond",
        json={"connection_id": connection_id, "action": action},
        token=account.token,
    )


async def remove(api: Api, account: Account, connection_id: Any) -> Reply:
    return await api.call("DELETE", f"/api/connection/{connection_id}", token=account.token)


async def listing(api: Api, account: Account, query: str = "") -> list[dict[str, Any]]:
    reply = await api.call("GET", f"/api/connection/list{query}", token=account.token)
    assert reply.status == 200, reply.text
    assert reply.headers.get("Content-Type", "").startswith("application/json")
    assert isinstance(reply.body, list), reply.body
    for item in reply.body:
        assert set(item) == CONNECTION_KEYS, item
    return reply.body


def ids(items: list[dict[str, Any]]) -> list[int]:
    return [item["id"] for item in items]


async def requested(api: Api, client: Account, pro: Account) -> dict[str, Any]:
    """A pending connection the client asked for."""
    reply = await request_pro(api, client, pro.id)
    assert reply.status == 201, reply.text
    return reply.body


async def invited(api: Api, pro: Account, client: Account) -> dict[str, Any]:
    """A pending connection the professional invited an existing client to."""
    reply = await invite_client(api, pro, client.user["email"])
    assert reply.status == 201, reply.text
    return reply.body


async def answered(api: Api, account: Account, connection_id: int, action: str) -> dict[str, Any]:
    reply = await respond(api, account, connection_id, action)
    assert reply.status == 200, reply.text
    return reply.body


async def removed(api: Api, account: Account, connection_id: int) -> None:
    reply = await remove(api, account, connection_id)
    assert reply.status == 204, reply.text


def assert_not_found(reply: Reply) -> None:
    """404 for a connection the caller cannot see (no difference from a missing one)."""
    assert_problem(reply, 404, "connection_not_found")


class StreamWatch:
    """Reads one stream from a mark taken at creation; decodes entries into Events."""

    def __init__(self, redis: aioredis.Redis, stream: str, mark: str) -> None:
        self.redis = redis
        self.stream = stream
        self.mark = mark

    @classmethod
    async def start(cls, redis: aioredis.Redis, stream: str) -> StreamWatch:
        last = await redis.xrevrange(stream, count=1)
        mark = last[0][0].decode() if last else "0-0"
        return cls(redis, stream, mark)

    async def entries(self) -> list[tuple[str, dict[bytes, bytes]]]:
        raw = await self.redis.xrange(self.stream, min=f"({self.mark}", max="+")
        return [(entry_id.decode(), fields) for entry_id, fields in raw]

    async def all(self) -> list[Event]:
        return [decode_entry(fields) for _, fields in await self.entries()]

    async def of_connection(self, connection_id: int) -> list[Event]:
        return [
            e
            for e in await self.all()
            if e.type.startswith("connection.") and e.data.connection.id == connection_id
        ]

    async def wait_for(
        self, connection_id: int, count: int, *, within: float = 2.0
    ) -> list[tuple[str, list[int]]]:
        """(type, recipient_ids) of the connection's events, once there are `count` of them.

        Waits up to `within` seconds for the count to be reached, and returns at once
        when it is; more than `count` fails (each change makes exactly one event).
        """

        async def enough() -> list[Event] | None:
            found = await self.of_connection(connection_id)
            return found if len(found) >= count else None

        found = await eventually(enough, within=within)
        summary = [(e.type, list(e.recipient_ids)) for e in found]
        assert len(found) == count, summary
        return summary
