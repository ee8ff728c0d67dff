"""Object-level authorisation: a stranger gets 404 for another user's activity or invite."""

from __future__ import annotations

from ..api import Api, assert_problem
from .conftest import connected_pair, create, invite, invite_reply, listing, respond_reply


async def test_stranger_gets_404_on_every_id_route(api: Api) -> None:
    owner = await connected_pair(api)
    # The strangers are connected to each other, so only ownership is missing.
    stranger = await connected_pair(api)
    activity = await create(api, owner.professional, title="Private")
    sent = await invite(api, owner.professional, activity["id"], owner.client)

    # Another professional: invite their own client to the owner's activity, delete it.
    reply = await invite_reply(api, stranger.professional, activity["id"], stranger.client.id)
    assert_problem(reply, 404, "activity_not_found")
    reply = await invite_reply(api, stranger.professional, activity["id"], owner.client.id)
    assert_problem(reply, 404, "activity_not_found")
    reply = await api.call(
        "DELETE", f"/api/activities/{activity['id']}", token=stranger.professional.token
    )
    assert_problem(reply, 404, "activity_not_found")

    # Another client: answer the owner's client's invite.
    for action in ("accept", "decline"):
        reply = await respond_reply(api, stranger.client, sent["id"], action)
        assert_problem(reply, 404, "invite_not_found")

    # Nothing leaked into the strangers' lists, nothing changed for the owners.
    assert await listing(api, stranger.professional) == []
    assert await listing(api, stranger.client) == []
    [still] = await listing(api, owner.professional)
    assert still["invites"] == {"pending": 1, "accepted": 0, "declined": 0}
    assert await listing(api, owner.client) == [sent]


async def test_not_found_and_not_yours_look_the_same(api: Api) -> None:
    owner = await connected_pair(api)
    stranger = await connected_pair(api)
    activity = await create(api, owner.professional)
    sent = await invite(api, owner.professional, activity["id"], owner.client)
    unknown = 2**62

    mine_missing = await invite_reply(api, stranger.professional, unknown, stranger.client.id)
    theirs = await invite_reply(api, stranger.professional, activity["id"], stranger.client.id)
    assert (mine_missing.status, mine_missing.body["code"]) == (theirs.status, theirs.body["code"])

    missing = await respond_reply(api, stranger.client, unknown, "accept")
    theirs = await respond_reply(api, stranger.client, sent["id"], "accept")
    assert (missing.status, missing.body["code"]) == (theirs.status, theirs.body["code"])
    assert missing.body["detail"] == theirs.body["detail"]
