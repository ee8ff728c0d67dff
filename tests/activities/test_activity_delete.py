"""Deleting an activity: owner only, it leaves the list, open invites become cancelled."""

from __future__ import annotations

import pytest

from ..api import Api, assert_problem
from .conftest import (
    UNKNOWN_ID,
    by_id,
    connected_clients,
    create,
    delete,
    invite,
    invite_reply,
    listing,
    respond,
)


async def test_delete_cancels_open_invites_and_hides_activity(api: Api) -> None:
    pro = await api.signup("professional")
    pending, accepted, declined = await connected_clients(api, pro, 3)
    activity = await create(api, pro, title="Doomed")
    kept = await create(api, pro, title="Kept")
    i_pending = await invite(api, pro, activity["id"], pending)
    i_accepted = await invite(api, pro, activity["id"], accepted)
    i_declined = await invite(api, pro, activity["id"], declined)
    i_kept = await invite(api, pro, kept["id"], pending)
    await respond(api, accepted, i_accepted["id"], "accept")
    await respond(api, declined, i_declined["id"], "decline")

    reply = await api.call("DELETE", f"/api/activities/{activity['id']}", token=pro.token)
    assert reply.status == 204, reply.text
    assert reply.text == ""

    assert [a["id"] for a in await listing(api, pro)] == [kept["id"]]
    statuses = {
        client.id: {i["id"]: i["status"] for i in await listing(api, client)}
        for client in (pending, accepted, declined)
    }
    assert statuses[pending.id] == {i_pending["id"]: "cancelled", i_kept["id"]: "pending"}
    assert statuses[accepted.id] == {i_accepted["id"]: "cancelled"}
    assert statuses[declined.id] == {i_declined["id"]: "declined"}
    [kept_listed] = await listing(api, pro)
    assert kept_listed["invites"] == {"pending": 1, "accepted": 0, "declined": 0}


async def test_delete_without_invites(api: Api) -> None:
    pro = await api.signup("professional")
    activity = await create(api, pro)
    await delete(api, pro, activity["id"])
    assert await listing(api, pro) == []


async def test_delete_twice(api: Api) -> None:
    pro = await api.signup("professional")
    activity = await create(api, pro)
    await delete(api, pro, activity["id"])
    reply = await api.call("DELETE", f"/api/activities/{activity['id']}", token=pro.token)
    assert_problem(reply, 404, "activity_not_found")


async def test_delete_another_professionals_activity(api: Api) -> None:
    owner = await api.signup("professional")
    [client] = await connected_clients(api, owner, 1)
    stranger = await api.signup("professional")
    activity = await create(api, owner)
    sent = await invite(api, owner, activity["id"], client)
    reply = await api.call("DELETE", f"/api/activities/{activity['id']}", token=stranger.token)
    assert_problem(reply, 404, "activity_not_found")
    [still] = await listing(api, owner)
    assert still["id"] == activity["id"]
    assert still["invites"]["pending"] == 1
    assert (await listing(api, client))[0] == sent


async def test_delete_unknown_activity(api: Api) -> None:
    pro = await api.signup("professional")
    reply = await api.call("DELETE", f"/api/activities/{UNKNOWN_ID}", token=pro.token)
    assert_problem(reply, 404, "activity_not_found")


@pytest.mark.parametrize("raw", ["abc", "0", "-1", "1.5", "1e3", str(2**63), "%20"])
async def test_delete_non_numeric_id(api: Api, raw: str) -> None:
    pro = await api.signup("professional")
    await create(api, pro)
    reply = await api.call("DELETE", f"/api/activities/{raw}", token=pro.token)
    assert_problem(reply, 404)
    assert len(await listing(api, pro)) == 1


async def test_delete_by_client_is_forbidden(api: Api) -> None:
    pro = await api.signup("professional")
    [client] = await connected_clients(api, pro, 1)
    activity = await create(api, pro)
    sent = await invite(api, pro, activity["id"], client)
    reply = await api.call("DELETE", f"/api/activities/{activity['id']}", token=client.token)
    assert_problem(reply, 403, "forbidden_role")
    # Role comes before visibility: an unknown id is a 403 for a client too.
    reply = await api.call("DELETE", f"/api/activities/{UNKNOWN_ID}", token=client.token)
    assert_problem(reply, 403, "forbidden_role")
    assert (await listing(api, client))[0] == sent
    assert len(await listing(api, pro)) == 1


async def test_delete_without_token(api: Api) -> None:
    pro = await api.signup("professional")
    activity = await create(api, pro)
    reply = await api.call("DELETE", f"/api/activities/{activity['id']}")
    assert_problem(reply, 401)
    assert len(await listing(api, pro)) == 1


async def test_deleted_activity_cannot_take_invites_or_answers(api: Api) -> None:
    pro = await api.signup("professional")
    first, second = await connected_clients(api, pro, 2)
    activity = await create(api, pro)
    sent = await invite(api, pro, activity["id"], first)
    await delete(api, pro, activity["id"])
    assert_problem(
        await invite_reply(api, pro, activity["id"], second.id), 404, "activity_not_found"
    )
    reply = await api.call(
        "POST",
        "/api/activities/respond",
        json={"invite_id": sent["id"], "action": "accept"},
        token=first.token,
    )
    assert_problem(reply, 409, "invite_not_pending")
    listed = by_id(await listing(api, first))
    assert listed[sent["id"]]["status"] == "cancelled"
    assert await listing(api, second) == []
