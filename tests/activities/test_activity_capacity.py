"""Capacity: accepts past it get 409 activity_full, even when they all arrive at once."""

from __future__ import annotations

import asyncio

from ..api import Api, assert_problem
from .conftest import connected_clients, create, invite, listing, respond, respond_reply


async def test_concurrent_accepts_fill_capacity_exactly(api: Api) -> None:
    pro = await api.signup("professional")
    clients = await connected_clients(api, pro, 10)
    activity = await create(api, pro, title="Small room", capacity=3)
    invites = await asyncio.gather(*(invite(api, pro, activity["id"], c) for c in clients))

    replies = await asyncio.gather(
        *(respond_reply(api, c, i["id"], "accept") for c, i in zip(clients, invites, strict=True))
    )
    ok = [r for r in replies if r.status == 200]
    full = [r for r in replies if r.status != 200]
    assert len(ok) == 3, [(r.status, r.text) for r in replies]
    assert len(full) == 7, [(r.status, r.text) for r in replies]
    for reply in ok:
        assert reply.body["status"] == "accepted"
    for reply in full:
        assert_problem(reply, 409, "activity_full")

    [listed] = await listing(api, pro)
    assert listed["invites"] == {"pending": 7, "accepted": 3, "declined": 0}
    # The refused invites stay pending: each client still sees theirs open.
    for client, sent, reply in zip(clients, invites, replies, strict=True):
        [mine] = await listing(api, client)
        assert mine["id"] == sent["id"]
        assert mine["status"] == ("accepted" if reply.status == 200 else "pending")


async def test_capacity_full_then_decline_still_allowed(api: Api) -> None:
    pro = await api.signup("professional")
    first, second, third = await connected_clients(api, pro, 3)
    activity = await create(api, pro, capacity=1)
    i1, i2, i3 = [await invite(api, pro, activity["id"], c) for c in (first, second, third)]
    await respond(api, first, i1["id"], "accept")
    assert_problem(await respond_reply(api, second, i2["id"], "accept"), 409, "activity_full")
    assert (await respond(api, second, i2["id"], "decline"))["status"] == "declined"
    [listed] = await listing(api, pro)
    assert listed["invites"] == {"pending": 1, "accepted": 1, "declined": 1}
    assert_problem(await respond_reply(api, third, i3["id"], "accept"), 409, "activity_full")


async def test_declines_do_not_take_places(api: Api) -> None:
    pro = await api.signup("professional")
    first, second = await connected_clients(api, pro, 2)
    activity = await create(api, pro, capacity=1)
    i1 = await invite(api, pro, activity["id"], first)
    i2 = await invite(api, pro, activity["id"], second)
    await respond(api, first, i1["id"], "decline")
    assert (await respond(api, second, i2["id"], "accept"))["status"] == "accepted"


async def test_no_capacity_means_unlimited(api: Api) -> None:
    pro = await api.signup("professional")
    clients = await connected_clients(api, pro, 6)
    activity = await create(api, pro)
    invites = await asyncio.gather(*(invite(api, pro, activity["id"], c) for c in clients))
    replies = await asyncio.gather(
        *(respond_reply(api, c, i["id"], "accept") for c, i in zip(clients, invites, strict=True))
    )
    assert [r.status for r in replies] == [200] * 6, [r.text for r in replies]
    [listed] = await listing(api, pro)
    assert listed["invites"]["accepted"] == 6
