"""Cascades: a connection removal cancels the pair's pending invites; a deletion notifies."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from ..api import Api, assert_problem
from .conftest import (
    about,
    by_id,
    connect,
    connected_pair,
    create,
    delete,
    invite,
    invite_reply,
    listing,
    remove_connection,
    respond,
    respond_reply,
    stream_mark,
    wait_events,
)


@pytest.mark.parametrize("removed_by", ["client", "professional"])
async def test_connection_removal_cancels_pending_invites_of_the_pair(
    api: Api, stack_redis: aioredis.Redis, removed_by: str
) -> None:
    pair = await connected_pair(api)
    pro, client = pair.professional, pair.client
    neighbour = (await connected_pair(api, pro)).client
    elsewhere = await api.signup("professional")
    await connect(api, elsewhere, client)

    a1 = await create(api, pro, title="A1")
    a2 = await create(api, pro, title="A2")
    a3 = await create(api, pro, title="A3")
    other_pro_activity = await create(api, elsewhere, title="Elsewhere")
    c1 = await invite(api, pro, a1["id"], client)
    c2 = await invite(api, pro, a2["id"], client)
    c3 = await invite(api, pro, a3["id"], client)
    n1 = await invite(api, pro, a1["id"], neighbour)
    n2 = await invite(api, pro, a2["id"], neighbour)
    e1 = await invite(api, elsewhere, other_pro_activity["id"], client)
    await respond(api, client, c3["id"], "accept")
    await respond(api, neighbour, n2["id"], "accept")

    mark = await stream_mark(stack_redis)
    by = client if removed_by == "client" else pro
    await remove_connection(api, by, pair.connection_id)

    # Read-your-writes: the client's list shows the cancellations at once.
    mine = by_id(await listing(api, client))
    assert {i: mine[i]["status"] for i in mine} == {
        c1["id"]: "cancelled",
        c2["id"]: "cancelled",
        c3["id"]: "accepted",
        e1["id"]: "pending",
    }
    assert mine[c1["id"]]["activity"] == c1["activity"]
    assert mine[c1["id"]]["updated_at"] >= c1["updated_at"]
    theirs = by_id(await listing(api, neighbour))
    assert {i: theirs[i]["status"] for i in theirs} == {n1["id"]: "pending", n2["id"]: "accepted"}
    counts = {a["id"]: a["invites"] for a in await listing(api, pro)}
    assert counts == {
        a1["id"]: {"pending": 1, "accepted": 0, "declined": 0},
        a2["id"]: {"pending": 0, "accepted": 1, "declined": 0},
        a3["id"]: {"pending": 0, "accepted": 1, "declined": 0},
    }

    # One activity.invite_cancelled per cancelled invite, to the client only.
    ids = (a1["id"], a2["id"], a3["id"], other_pro_activity["id"])
    events = await wait_events(stack_redis, mark, about(*ids), 2)
    assert sorted((e.type, e.data.invite.id) for e in events) == sorted(
        [("activity.invite_cancelled", c1["id"]), ("activity.invite_cancelled", c2["id"])]
    )
    for event in events:
        assert event.recipient_ids == [client.id]
        assert event.data.invite.status == "cancelled"
        assert event.data.invite.client_id == client.id
    # The cancelled invites cannot be answered any more.
    assert_problem(await respond_reply(api, client, c1["id"], "accept"), 409, "invite_not_pending")


async def test_answer_right_after_connection_removal_is_refused(api: Api) -> None:
    """Once DELETE /api/connection answered 204, the pair's pending invites are cancelled."""
    pair = await connected_pair(api)
    activity = await create(api, pair.professional)
    sent = await invite(api, pair.professional, activity["id"], pair.client)
    await remove_connection(api, pair.professional, pair.connection_id)
    reply = await respond_reply(api, pair.client, sent["id"], "accept")
    assert_problem(reply, 409, "invite_not_pending")
    [listed] = await listing(api, pair.client)
    assert listed["status"] == "cancelled"


async def test_professional_list_right_after_connection_removal(api: Api) -> None:
    pair = await connected_pair(api)
    activity = await create(api, pair.professional)
    await invite(api, pair.professional, activity["id"], pair.client)
    await remove_connection(api, pair.client, pair.connection_id)
    [listed] = await listing(api, pair.professional)
    assert listed["invites"] == {"pending": 0, "accepted": 0, "declined": 0}


async def test_reconnected_pair_can_be_invited_again(api: Api) -> None:
    pair = await connected_pair(api)
    activity = await create(api, pair.professional)
    first = await invite(api, pair.professional, activity["id"], pair.client)
    await remove_connection(api, pair.client, pair.connection_id)
    assert_problem(
        await invite_reply(api, pair.professional, activity["id"], pair.client.id),
        403,
        "not_connected",
    )
    await connect(api, pair.professional, pair.client)
    second = await invite(api, pair.professional, activity["id"], pair.client)
    assert second["id"] != first["id"]
    statuses = {i["id"]: i["status"] for i in await listing(api, pair.client)}
    assert statuses == {first["id"]: "cancelled", second["id"]: "pending"}


async def test_deletion_notifies_open_invitees_once(api: Api, stack_redis: aioredis.Redis) -> None:
    pro = await api.signup("professional")
    pending, accepted, declined = [(await connected_pair(api, pro)).client for _ in range(3)]
    activity = await create(api, pro, title="Cancelled class")
    sent = {c.id: await invite(api, pro, activity["id"], c) for c in (pending, accepted, declined)}
    await respond(api, accepted, sent[accepted.id]["id"], "accept")
    await respond(api, declined, sent[declined.id]["id"], "decline")

    mark = await stream_mark(stack_redis)
    await delete(api, pro, activity["id"])
    [event] = await wait_events(stack_redis, mark, about(activity["id"]), 1)
    assert event.type == "activity.cancelled"
    assert sorted(event.recipient_ids) == sorted([pending.id, accepted.id])
    assert len(event.recipient_ids) == 2
    assert event.data.activity.id == activity["id"]
    assert event.data.activity.title == "Cancelled class"
    assert event.data.activity.professional_id == pro.id
    # Nothing else about this activity (no per-invite cancellations on a deletion).
    assert len(await wait_events(stack_redis, mark, about(activity["id"]), 1)) == 1


async def test_deletion_without_open_invites_notifies_nobody(
    api: Api, stack_redis: aioredis.Redis
) -> None:
    pro = await api.signup("professional")
    [declined] = [(await connected_pair(api, pro)).client]
    activity = await create(api, pro)
    sent = await invite(api, pro, activity["id"], declined)
    await respond(api, declined, sent["id"], "decline")
    mark = await stream_mark(stack_redis)
    await delete(api, pro, activity["id"])
    [event] = await wait_events(stack_redis, mark, about(activity["id"]), 1)
    assert event.type == "activity.cancelled"
    assert event.recipient_ids == []


async def test_an_invite_racing_the_removal_ends_cancelled_or_refused(api: Api) -> None:
    """Sent at the same moment as the removal, the invite is either refused (403) or made
    and then cancelled by it: never left pending for a client no longer connected."""
    for _ in range(6):
        pair = await connected_pair(api)
        activity = await create(api, pair.professional)
        invited, _ = await asyncio.gather(
            invite_reply(api, pair.professional, activity["id"], pair.client.id),
            remove_connection(api, pair.client, pair.connection_id),
        )
        statuses = {i["id"]: i["status"] for i in await listing(api, pair.client)}
        if invited.status == 201:
            assert statuses == {invited.body["id"]: "cancelled"}
        else:
            assert_problem(invited, 403, "not_connected")
            assert statuses == {}
