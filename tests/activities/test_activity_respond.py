"""Answering an invite: only the invitee may, once, with accept or decline."""

from __future__ import annotations

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
    listing,
    respond,
    respond_reply,
)


@pytest.mark.parametrize(("action", "status"), [("accept", "accepted"), ("decline", "declined")])
async def test_respond_returns_invite_with_new_status(api: Api, action: str, status: str) -> None:
    pair = await connected_pair(api)
    activity = await create(api, pair.professional)
    sent = await invite(api, pair.professional, activity["id"], pair.client)
    reply = await respond_reply(api, pair.client, sent["id"], action)
    assert reply.status == 200, reply.text
    answered = reply.body
    assert_invite_shape(answered)
    assert answered == {**sent, "status": status, "updated_at": answered["updated_at"]}
    updated = dt.datetime.fromisoformat(answered["updated_at"])
    assert updated >= dt.datetime.fromisoformat(sent["created_at"])
    assert await listing(api, pair.client) == [answered]
    [mine] = await listing(api, pair.professional)
    expected = {"pending": 0, "accepted": 0, "declined": 0} | {status: 1}
    assert mine["invites"] == expected


async def test_respond_by_another_client(api: Api) -> None:
    pair = await connected_pair(api)
    other = await connected_pair(api, pair.professional)  # even one of the same professional
    activity = await create(api, pair.professional)
    sent = await invite(api, pair.professional, activity["id"], pair.client)
    for action in ("accept", "decline"):
        reply = await respond_reply(api, other.client, sent["id"], action)
        assert_problem(reply, 404, "invite_not_found")
    stranger = await api.signup("client")
    assert_problem(
        await respond_reply(api, stranger, sent["id"], "accept"), 404, "invite_not_found"
    )
    assert (await listing(api, pair.client))[0]["status"] == "pending"


async def test_respond_by_the_professional(api: Api) -> None:
    pair = await connected_pair(api)
    activity = await create(api, pair.professional)
    sent = await invite(api, pair.professional, activity["id"], pair.client)
    reply = await respond_reply(api, pair.professional, sent["id"], "accept")
    assert_problem(reply, 403, "forbidden_role")
    # Role before body.
    reply = await respond_reply(api, pair.professional, sent["id"], "maybe")
    assert_problem(reply, 403, "forbidden_role")
    assert (await listing(api, pair.client))[0]["status"] == "pending"


async def test_respond_unknown_invite(api: Api) -> None:
    client = await api.signup("client")
    assert_problem(await respond_reply(api, client, UNKNOWN_ID, "accept"), 404, "invite_not_found")


async def test_respond_without_token(api: Api) -> None:
    reply = await api.call(
        "POST", "/api/activities/respond", json={"invite_id": 1, "action": "accept"}
    )
    assert_problem(reply, 401)


@pytest.mark.parametrize(
    ("first", "second"),
    [("accept", "accept"), ("accept", "decline"), ("decline", "accept"), ("decline", "decline")],
)
async def test_respond_twice(api: Api, first: str, second: str) -> None:
    pair = await connected_pair(api)
    activity = await create(api, pair.professional)
    sent = await invite(api, pair.professional, activity["id"], pair.client)
    answered = await respond(api, pair.client, sent["id"], first)
    assert_problem(
        await respond_reply(api, pair.client, sent["id"], second), 409, "invite_not_pending"
    )
    assert await listing(api, pair.client) == [answered]


async def test_respond_to_cancelled_invite(api: Api) -> None:
    pair = await connected_pair(api)
    activity = await create(api, pair.professional)
    sent = await invite(api, pair.professional, activity["id"], pair.client)
    await delete(api, pair.professional, activity["id"])
    for action in ("accept", "decline"):
        reply = await respond_reply(api, pair.client, sent["id"], action)
        assert_problem(reply, 409, "invite_not_pending")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"invite_id": 1, "action": "maybe"}, "action"),
        ({"invite_id": 1, "action": "ACCEPT"}, "action"),
        ({"invite_id": 1, "action": "reject"}, "action"),
        ({"invite_id": 1, "action": ""}, "action"),
        ({"invite_id": 1, "action": 1}, "action"),
        ({"invite_id": 1, "action": None}, "action"),
        ({"invite_id": 1}, "action"),
        ({"action": "accept"}, "invite_id"),
        ({"invite_id": "1", "action": "accept"}, "invite_id"),
        ({"invite_id": 0, "action": "accept"}, "invite_id"),
    ],
    ids=[
        "maybe",
        "upper",
        "reject",
        "empty",
        "int",
        "null",
        "no-action",
        "no-invite",
        "str-invite",
        "zero-invite",
    ],
)
async def test_respond_bad_body(api: Api, body: dict[str, Any], field: str) -> None:
    pair = await connected_pair(api)
    activity = await create(api, pair.professional)
    sent = await invite(api, pair.professional, activity["id"], pair.client)
    if body.get("invite_id") == 1:
        body = {**body, "invite_id": sent["id"]}
    reply = await api.call("POST", "/api/activities/respond", json=body, token=pair.client.token)
    assert_problem(reply, 400, "validation_error")
    assert field in {e["field"] for e in reply.body["errors"]}, reply.body
    assert (await listing(api, pair.client))[0]["status"] == "pending"


async def test_respond_bad_body_for_someone_elses_invite_is_400(api: Api) -> None:
    """Body checks come before visibility: a bad action is a 400 whatever the invite."""
    client = await api.signup("client")
    reply = await respond_reply(api, client, UNKNOWN_ID, "maybe")
    assert_problem(reply, 400, "validation_error")
