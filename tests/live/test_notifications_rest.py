"""GET /api/notifications: the caller's log oldest first, `since` and `limit`, and their bounds."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import pytest
import redis.asyncio as aioredis

from ..api import Api, assert_problem
from .live_support import (
    assert_increasing,
    full_log,
    id_key,
    log_of,
    publish,
    synthetic_invite,
    wait_log,
)


async def test_needs_a_valid_token(api: Api) -> None:
    assert_problem(await api.call("GET", "/api/notifications"), 401)
    assert_problem(await api.call("GET", "/api/notifications", token="garbage"), 401)
    user = await api.signup("client")
    await api.call("POST", "/api/auth/logout", token=user.token)
    assert_problem(await api.call("GET", "/api/notifications", token=user.token), 401)


async def test_new_user_has_an_empty_log(api: Api) -> None:
    user = await api.signup("client")
    reply = await api.call("GET", "/api/notifications", token=user.token)
    assert reply.status == 200, reply.text
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.body == []


async def test_since_and_limit_page_through_the_log(api: Api, shared_redis: aioredis.Redis) -> None:
    user, other = await asyncio.gather(api.signup("client"), api.signup("client"))
    await publish(shared_redis, [synthetic_invite([user.id], n) for n in range(60)])
    log = await wait_log(api, user, 60)
    assert [m["data"]["invite"]["id"] for m in log] == list(range(60))  # oldest first
    assert_increasing(log)
    assert all(m["type"] == "activity.invited" for m in log)

    assert await log_of(api, user) == log[:50]  # default limit 50
    assert await log_of(api, user, limit=200) == log
    assert await log_of(api, user, limit=1) == log[:1]
    assert await log_of(api, user, since=log[9]["id"]) == log[10:60]
    assert await log_of(api, user, since=log[9]["id"], limit=5) == log[10:15]
    assert await log_of(api, user, since=log[-1]["id"]) == []
    assert await log_of(api, user, since="0") == log[:50]
    # A bare millisecond part means `<ms>-0`.
    ms, _ = id_key(log[20]["id"])
    after = [m for m in log if id_key(m["id"]) > (ms, 0)]
    assert await log_of(api, user, since=str(ms), limit=200) == after
    paged, cursor = [], None
    while page := await log_of(api, user, since=cursor, limit=7):
        paged += page
        cursor = page[-1]["id"]
    assert paged == log
    # Nobody else sees these.
    assert await full_log(api, other) == []


@pytest.mark.parametrize("limit", ["0", "201", "abc", "-1", "1.5", "", "1e3"])
async def test_limit_out_of_range_is_400(api: Api, limit: str) -> None:
    user = await api.signup("client")
    reply = await api.call("GET", f"/api/notifications?limit={limit}", token=user.token)
    assert_problem(reply, 400)
    assert any(e["field"] == "limit" for e in reply.body.get("errors", [])), reply.body


@pytest.mark.parametrize("limit", ["1", "200"])
async def test_limit_bounds_accepted(api: Api, limit: str) -> None:
    user = await api.signup("client")
    reply = await api.call("GET", f"/api/notifications?limit={limit}", token=user.token)
    assert reply.status == 200, reply.text


@pytest.mark.parametrize(
    "since",
    [
        "abc",
        "1-2-3",
        "-1",
        "1-",
        "1.5",
        "123456789012345678901",
        "18446744073709551616-0",
        "18446744073709551615-18446744073709551615",
    ],
)
async def test_bad_since_is_400(api: Api, since: str) -> None:
    user = await api.signup("client")
    reply = await api.call("GET", f"/api/notifications?since={since}", token=user.token)
    assert_problem(reply, 400)
    assert any(e["field"] == "since" for e in reply.body.get("errors", [])), reply.body


async def test_offset_counts_after_since(api: Api, shared_redis: aioredis.Redis) -> None:
    """API.md, version 3: `?offset=` like every list, counted after `since` if given."""
    user = await api.signup("client")
    await publish(shared_redis, [synthetic_invite([user.id], n) for n in range(30)])
    log = await wait_log(api, user, 30)

    async def listed(query: str) -> list[dict]:
        reply = await api.call("GET", f"/api/notifications?{query}", token=user.token)
        assert reply.status == 200, reply.text
        return reply.body

    assert await listed("offset=0") == log
    assert await listed("offset=10") == log[10:]
    assert await listed("offset=10&limit=5") == log[10:15]
    assert await listed(f"since={log[4]['id']}&offset=3&limit=2") == log[8:10]
    assert await listed("offset=30") == []
    assert await listed("offset=1000000000") == []


@pytest.mark.parametrize(
    "offset",
    ["-1", "abc", "1.5", "", "1e3", "1_0", "+1", " 1", "1000000001", "\u0661", "\u00b9"],
)
async def test_bad_offset_is_400(api: Api, offset: str) -> None:
    user = await api.signup("client")
    reply = await api.call("GET", f"/api/notifications?offset={quote(offset)}", token=user.token)
    assert_problem(reply, 400, "invalid_query")
    assert any(e["field"] == "offset" for e in reply.body.get("errors", [])), reply.body


@pytest.mark.parametrize("since", ["\u0661\u0660", "\u0661-\u0660", "1_0", "\u00b9"])
async def test_since_in_other_digits_is_400(api: Api, since: str) -> None:
    user = await api.signup("client")
    reply = await api.call("GET", f"/api/notifications?since={quote(since)}", token=user.token)
    assert_problem(reply, 400)
