"""Listing: a professional's activities with invite counts, a client's invites, pagination."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ..api import Api, assert_problem
from .conftest import (
    assert_activity_shape,
    assert_invite_shape,
    by_id,
    connect,
    connected_clients,
    connected_pair,
    create,
    delete,
    invite,
    listing,
    respond,
    summary_of,
)


async def test_professional_lists_own_activities_newest_first(api: Api) -> None:
    pro, other = await asyncio.gather(api.signup("professional"), api.signup("professional"))
    assert await listing(api, pro) == []
    first = await create(api, pro, title="First")
    theirs = await create(api, other, title="Theirs")
    second = await create(api, pro, title="Second", capacity=2)
    third = await create(api, pro, title="Third", starts_at="2031-02-03T04:05:06Z")
    listed = await listing(api, pro)
    assert listed == [third, second, first]
    for activity in listed:
        assert_activity_shape(activity)
    assert await listing(api, other) == [theirs]


async def test_professional_list_counts_invites(api: Api) -> None:
    pro = await api.signup("professional")
    clients = await connected_clients(api, pro, 5)
    busy = await create(api, pro, title="Busy")
    quiet = await create(api, pro, title="Quiet")
    invites = [await invite(api, pro, busy["id"], c) for c in clients]
    await respond(api, clients[0], invites[0]["id"], "accept")
    await respond(api, clients[1], invites[1]["id"], "accept")
    await respond(api, clients[2], invites[2]["id"], "decline")
    await invite(api, pro, quiet["id"], clients[0])
    listed = by_id(await listing(api, pro))
    assert listed[busy["id"]]["invites"] == {"pending": 2, "accepted": 2, "declined": 1}
    assert listed[quiet["id"]]["invites"] == {"pending": 1, "accepted": 0, "declined": 0}
    assert summary_of(listed[busy["id"]]) == summary_of(busy)


async def test_professional_list_ignores_other_professionals_invites(api: Api) -> None:
    pair = await connected_pair(api)
    other = await connected_pair(api)
    mine = await create(api, pair.professional)
    theirs = await create(api, other.professional)
    await invite(api, other.professional, theirs["id"], other.client)
    [listed] = await listing(api, pair.professional)
    assert listed == mine
    [their_listed] = await listing(api, other.professional)
    assert their_listed["invites"] == {"pending": 1, "accepted": 0, "declined": 0}


async def test_client_lists_own_invites_newest_first(api: Api) -> None:
    pair = await connected_pair(api)
    other_pair = await connected_pair(api)
    neighbour = await connected_pair(api, pair.professional)
    assert await listing(api, pair.client) == []
    a1 = await create(api, pair.professional, title="One", capacity=3)
    a2 = await create(api, other_pair.professional, title="Elsewhere")
    await connect(api, other_pair.professional, pair.client)
    i1 = await invite(api, pair.professional, a1["id"], pair.client)
    await invite(api, pair.professional, a1["id"], neighbour.client)
    i2 = await invite(api, other_pair.professional, a2["id"], pair.client)
    i1 = await respond(api, pair.client, i1["id"], "accept")
    listed = await listing(api, pair.client)
    assert listed == [i2, i1]
    for item in listed:
        assert_invite_shape(item)
        assert item["client_id"] == pair.client.id
    assert listed[0]["activity"] == summary_of(a2)
    # The accept took one of its 3 places.
    assert listed[1]["activity"] == {**summary_of(a1), "places_left": 2}
    assert [i["client_id"] for i in await listing(api, neighbour.client)] == [neighbour.client.id]


async def test_client_keeps_cancelled_invite_after_activity_deleted(api: Api) -> None:
    pair = await connected_pair(api)
    activity = await create(api, pair.professional, title="Gone", description="Was here")
    sent = await invite(api, pair.professional, activity["id"], pair.client)
    await delete(api, pair.professional, activity["id"])
    [listed] = await listing(api, pair.client)
    assert listed["id"] == sent["id"]
    assert listed["status"] == "cancelled"
    assert listed["activity"] == {**summary_of(activity), "status": "cancelled"}
    assert listed["created_at"] == sent["created_at"]
    assert listed["updated_at"] >= sent["updated_at"]
    assert await listing(api, pair.professional) == []


async def test_list_without_token(api: Api) -> None:
    assert_problem(await api.call("GET", "/api/activities/list"), 401)


def ids(items: list[dict[str, Any]]) -> list[int]:
    return [item["id"] for item in items]


async def test_professional_list_pagination(api: Api) -> None:
    pro = await api.signup("professional")
    made = [await create(api, pro, title=f"A{i}") for i in range(5)]
    newest_first = [a["id"] for a in reversed(made)]
    assert ids(await listing(api, pro)) == newest_first
    assert ids(await listing(api, pro, "?limit=2")) == newest_first[:2]
    assert ids(await listing(api, pro, "?limit=2&offset=2")) == newest_first[2:4]
    assert ids(await listing(api, pro, "?limit=2&offset=4")) == newest_first[4:]
    assert ids(await listing(api, pro, "?offset=3")) == newest_first[3:]
    assert await listing(api, pro, "?offset=5") == []
    assert ids(await listing(api, pro, "?limit=200&offset=0")) == newest_first


async def test_client_list_pagination(api: Api) -> None:
    pair = await connected_pair(api)
    activities = [await create(api, pair.professional, title=f"A{i}") for i in range(3)]
    sent = [await invite(api, pair.professional, a["id"], pair.client) for a in activities]
    newest_first = [i["id"] for i in reversed(sent)]
    assert ids(await listing(api, pair.client, "?limit=1")) == newest_first[:1]
    assert ids(await listing(api, pair.client, "?limit=1&offset=1")) == newest_first[1:2]
    assert ids(await listing(api, pair.client, "?offset=2")) == newest_first[2:]
    assert await listing(api, pair.client, "?offset=3") == []


@pytest.mark.parametrize(
    "query",
    [
        "?limit=0",
        "?limit=201",
        "?limit=-1",
        "?limit=abc",
        "?limit=",
        "?limit=1.5",
        "?offset=-1",
        "?offset=x",
        "?offset=1e3",
        "?limit=99999999999999999999",
    ],
)
@pytest.mark.parametrize("role", ["professional", "client"])
async def test_list_bad_pagination(api: Api, role: str, query: str) -> None:
    account = await api.signup(role)
    reply = await api.call("GET", f"/api/activities/list{query}", token=account.token)
    assert_problem(reply, 400)
