"""Inviting a connected client: the Invite returned, visibility, connection and duplicate rules."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from ..api import Api, assert_problem
from .conftest import (
    UNKNOWN_ID,
    assert_invite_shape,
    connected_pair,
    create,
    delete,
    invite,
    invite_reply,
    listing,
    remove_connection,
    respond,
    summary_of,
)


async def test_invite_returns_invite(api: Api) -> None:
    pair = await connected_pair(api)
    activity = await create(
        api, pair.professional, title="Walk", starts_at="2030-01-01T09:00:00Z", capacity=4
    )
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    reply = await invite_reply(api, pair.professional, activity["id"], pair.client.id)
    assert reply.status == 201, reply.text
    assert reply.headers["Content-Type"].startswith("application/json")
    body = reply.body
    assert_invite_shape(body)
    assert isinstance(body["id"], int) and body["id"] > 0
    assert body == {
        "id": body["id"],
        "status": "pending",
        "client_id": pair.client.id,
        "activity": summary_of(activity),
        "created_at": body["created_at"],
        "updated_at": body["updated_at"],
    }
    assert body["updated_at"] >= body["created_at"]
    assert "invites" not in body["activity"]
    assert dt.datetime.fromisoformat(body["created_at"]) >= before
    # The client sees exactly this invite; the professional's counts show it.
    assert await listing(api, pair.client) == [body]
    [listed] = await listing(api, pair.professional)
    assert listed["invites"] == {"pending": 1, "accepted": 0, "declined": 0}


async def test_invite_right_after_connection_accepted(api: Api) -> None:
    """Read-your-writes: no wait between accepting the connection and inviting."""
    for _ in range(3):
        pair = await connected_pair(api)
        activity = await create(api, pair.professional)
        await invite(api, pair.professional, activity["id"], pair.client)


async def test_invite_another_professionals_activity(api: Api) -> None:
    pair = await connected_pair(api)
    other = await api.signup("professional")
    theirs = await create(api, other)
    reply = await invite_reply(api, pair.professional, theirs["id"], pair.client.id)
    assert_problem(reply, 404, "activity_not_found")
    assert await listing(api, pair.client) == []


async def test_invite_others_activity_and_their_client_is_404(api: Api) -> None:
    """Someone else's activity is not found, even for their own connected client."""
    pair = await connected_pair(api)
    stranger = await api.signup("professional")
    activity = await create(api, pair.professional)
    reply = await invite_reply(api, stranger, activity["id"], pair.client.id)
    assert_problem(reply, 404, "activity_not_found")


async def test_invite_unknown_activity(api: Api) -> None:
    pair = await connected_pair(api)
    reply = await invite_reply(api, pair.professional, UNKNOWN_ID, pair.client.id)
    assert_problem(reply, 404, "activity_not_found")


async def test_invite_deleted_activity(api: Api) -> None:
    pair = await connected_pair(api)
    activity = await create(api, pair.professional)
    await delete(api, pair.professional, activity["id"])
    reply = await invite_reply(api, pair.professional, activity["id"], pair.client.id)
    assert_problem(reply, 404, "activity_not_found")


async def test_invite_client_without_connection(api: Api) -> None:
    pro, client = await asyncio.gather(api.signup("professional"), api.signup("client"))
    activity = await create(api, pro)
    assert_problem(await invite_reply(api, pro, activity["id"], client.id), 403, "not_connected")
    assert await listing(api, client) == []


async def test_invite_client_connected_to_someone_else(api: Api) -> None:
    pair = await connected_pair(api)
    other = await api.signup("professional")
    activity = await create(api, other)
    reply = await invite_reply(api, other, activity["id"], pair.client.id)
    assert_problem(reply, 403, "not_connected")


@pytest.mark.parametrize("initiated_by", ["client", "professional"])
async def test_invite_with_pending_connection(api: Api, initiated_by: str) -> None:
    pro, client = await asyncio.gather(api.signup("professional"), api.signup("client"))
    if initiated_by == "client":
        reply = await api.call(
            "POST",
            "/api/connection/request-pro",
            json={"professional_id": pro.id},
            token=client.token,
        )
    else:
        reply = await api.call(
            "POST",
            "/api/connection/invite-client",
            json={"client_email": client.user["email"]},
            token=pro.token,
        )
    assert reply.status == 201, reply.text
    activity = await create(api, pro)
    assert_problem(await invite_reply(api, pro, activity["id"], client.id), 403, "not_connected")


async def test_invite_with_rejected_connection(api: Api) -> None:
    pro, client = await asyncio.gather(api.signup("professional"), api.signup("client"))
    asked = await api.call(
        "POST", "/api/connection/request-pro", json={"professional_id": pro.id}, token=client.token
    )
    assert asked.status == 201, asked.text
    rejected = await api.call(
        "POST",
        "/api/connection/respond",
        json={"connection_id": asked.body["id"], "action": "reject"},
        token=pro.token,
    )
    assert rejected.status == 200, rejected.text
    activity = await create(api, pro)
    assert_problem(await invite_reply(api, pro, activity["id"], client.id), 403, "not_connected")


@pytest.mark.parametrize("removed_by", ["client", "professional"])
async def test_invite_with_removed_connection(api: Api, removed_by: str) -> None:
    pair = await connected_pair(api)
    activity = await create(api, pair.professional)
    await invite(api, pair.professional, activity["id"], pair.client)  # connected: fine
    second = await create(api, pair.professional, title="Second")
    by = pair.client if removed_by == "client" else pair.professional
    await remove_connection(api, by, pair.connection_id)
    reply = await invite_reply(api, pair.professional, second["id"], pair.client.id)
    assert_problem(reply, 403, "not_connected")


async def test_invite_unknown_client(api: Api) -> None:
    pro = await api.signup("professional")
    activity = await create(api, pro)
    assert_problem(await invite_reply(api, pro, activity["id"], UNKNOWN_ID), 403, "not_connected")


async def test_invite_a_professional(api: Api) -> None:
    pro, other = await asyncio.gather(api.signup("professional"), api.signup("professional"))
    activity = await create(api, pro)
    assert_problem(await invite_reply(api, pro, activity["id"], other.id), 403, "not_connected")
    assert_problem(await invite_reply(api, pro, activity["id"], pro.id), 403, "not_connected")


async def test_invite_by_client_is_forbidden(api: Api) -> None:
    pair = await connected_pair(api)
    activity = await create(api, pair.professional)
    reply = await api.call(
        "POST",
        "/api/activities/invite",
        json={"activity_id": activity["id"], "client_id": pair.client.id},
        token=pair.client.token,
    )
    assert_problem(reply, 403, "forbidden_role")
    # The role is checked before the body.
    reply = await api.call(
        "POST", "/api/activities/invite", json={"activity_id": "x"}, token=pair.client.token
    )
    assert_problem(reply, 403, "forbidden_role")
    assert await listing(api, pair.client) == []


async def test_invite_without_token(api: Api) -> None:
    reply = await api.call(
        "POST", "/api/activities/invite", json={"activity_id": 1, "client_id": 2}
    )
    assert_problem(reply, 401)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"client_id": 1}, "activity_id"),
        ({"activity_id": 1}, "client_id"),
        ({"activity_id": "1", "client_id": 1}, "activity_id"),
        ({"activity_id": 1, "client_id": "1"}, "client_id"),
        ({"activity_id": 0, "client_id": 1}, "activity_id"),
        ({"activity_id": 1, "client_id": -5}, "client_id"),
        ({"activity_id": 1.5, "client_id": 1}, "activity_id"),
        ({"activity_id": True, "client_id": 1}, "activity_id"),
        ({"activity_id": None, "client_id": 1}, "activity_id"),
        ({"activity_id": 2**63, "client_id": 1}, "activity_id"),
    ],
    ids=[
        "no-activity",
        "no-client",
        "str-activity",
        "str-client",
        "zero",
        "negative",
        "float",
        "bool",
        "null",
        "too-big",
    ],
)
async def test_invite_bad_body(api: Api, body: dict[str, Any], field: str) -> None:
    pro = await api.signup("professional")
    reply = await api.call("POST", "/api/activities/invite", json=body, token=pro.token)
    assert_problem(reply, 400, "validation_error")
    assert field in {e["field"] for e in reply.body["errors"]}, reply.body


async def test_invite_twice_while_pending(api: Api) -> None:
    pair = await connected_pair(api)
    activity = await create(api, pair.professional)
    await invite(api, pair.professional, activity["id"], pair.client)
    again = await invite_reply(api, pair.professional, activity["id"], pair.client.id)
    assert_problem(again, 409, "already_invited")
    assert len(await listing(api, pair.client)) == 1


async def test_invite_again_after_accept(api: Api) -> None:
    pair = await connected_pair(api)
    activity = await create(api, pair.professional)
    first = await invite(api, pair.professional, activity["id"], pair.client)
    await respond(api, pair.client, first["id"], "accept")
    again = await invite_reply(api, pair.professional, activity["id"], pair.client.id)
    assert_problem(again, 409, "already_invited")


async def test_invite_again_after_decline(api: Api) -> None:
    pair = await connected_pair(api)
    activity = await create(api, pair.professional)
    first = await invite(api, pair.professional, activity["id"], pair.client)
    await respond(api, pair.client, first["id"], "decline")
    second = await invite(api, pair.professional, activity["id"], pair.client)
    assert second["id"] != first["id"]
    assert second["status"] == "pending"
    listed = await listing(api, pair.client)
    assert [(i["id"], i["status"]) for i in listed] == [
        (second["id"], "pending"),
        (first["id"], "declined"),
    ]
    [mine] = await listing(api, pair.professional)
    assert mine["invites"] == {"pending": 1, "accepted": 0, "declined": 1}
    assert_problem(
        await invite_reply(api, pair.professional, activity["id"], pair.client.id),
        409,
        "already_invited",
    )


async def test_concurrent_invites_of_one_client_create_one(api: Api) -> None:
    pair = await connected_pair(api)
    activity = await create(api, pair.professional)
    replies = await asyncio.gather(
        *(invite_reply(api, pair.professional, activity["id"], pair.client.id) for _ in range(5))
    )
    assert sorted(r.status for r in replies) == [201, 409, 409, 409, 409], [r.text for r in replies]
    for reply in replies:
        if reply.status == 409:
            assert_problem(reply, 409, "already_invited")
    assert len(await listing(api, pair.client)) == 1


async def test_one_client_invited_to_several_activities(api: Api) -> None:
    pair = await connected_pair(api)
    first = await create(api, pair.professional, title="First")
    second = await create(api, pair.professional, title="Second")
    a = await invite(api, pair.professional, first["id"], pair.client)
    b = await invite(api, pair.professional, second["id"], pair.client)
    assert a["activity"]["title"] == "First" and b["activity"]["title"] == "Second"
    assert [i["id"] for i in await listing(api, pair.client)] == [b["id"], a["id"]]
