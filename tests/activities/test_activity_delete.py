"""Deleting an activity: owner only, it leaves the list, every invite becomes cancelled."""

from __future__ import annotations

import asyncio
from urllib.parse import quote, unquote

import pytest

from ..api import Account, Api, assert_problem, eventually
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


async def test_delete_cancels_every_invite_and_hides_activity(api: Api) -> None:
    """API.md, version 3: every invite of it, the declined one included."""
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
    assert statuses[declined.id] == {i_declined["id"]: "cancelled"}
    [kept_listed] = await listing(api, pro)
    assert kept_listed["invites"] == {"pending": 1, "accepted": 0, "declined": 0}


async def test_delete_notifies_only_clients_still_expecting_it(api: Api) -> None:
    """`activity.cancelled` goes to the clients with a pending or accepted invite."""
    pro = await api.signup("professional")
    pending, accepted, declined = await connected_clients(api, pro, 3)
    activity = await create(api, pro, title="Called off")
    invites = {
        c.id: await invite(api, pro, activity["id"], c) for c in (pending, accepted, declined)
    }
    await respond(api, accepted, invites[accepted.id]["id"], "accept")
    await respond(api, declined, invites[declined.id]["id"], "decline")
    await delete(api, pro, activity["id"])

    async def cancelled_for(client: Account) -> list[dict]:
        reply = await api.call("GET", "/api/notifications?limit=200", token=client.token)
        assert reply.status == 200, reply.text
        return [m for m in reply.body if m["type"] == "activity.cancelled"]

    for client in (pending, accepted):
        [message] = await eventually(lambda c=client: cancelled_for(c))
        assert message["data"]["activity"]["id"] == activity["id"]
    await asyncio.sleep(0.3)  # what would have been sent to the declined client is there by now
    assert await cancelled_for(declined) == []
    for client in (pending, accepted, declined):
        [listed] = await listing(api, client)
        assert listed["status"] == "cancelled"


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


@pytest.mark.parametrize(
    "raw",
    [
        "abc",
        "0",
        "-1",
        "1.5",
        "1e3",
        str(2**63),
        "%20",
        "%C2%B9%C2%B2",  # superscript one and two: isdigit() but not int() (was a 500)
        "%E2%91%A0",  # a circled one
        "1" * 4301,  # past int()'s digit limit (was a 500)
        "9" * 20,
        "1_0",
        "+1",
        "%201",
        "0x1",
    ],
)
async def test_delete_non_numeric_id(api: Api, raw: str) -> None:
    pro = await api.signup("professional")
    await create(api, pro)
    reply = await api.call("DELETE", f"/api/activities/{raw}", token=pro.token)
    # `{id}` routes only match ASCII digits: anything else names no route at all.
    digits = unquote(raw).isascii() and unquote(raw).isdigit()
    assert_problem(reply, 404, "activity_not_found" if digits else "not_found")
    assert len(await listing(api, pro)) == 1


async def test_delete_with_other_scripts_digits_deletes_nothing(api: Api) -> None:
    """`/api/activities/\\u0661\\u0660\\u0660\\u0660\\u0661` (Arabic-Indic digits)
    deleted activity 10001."""
    pro = await api.signup("professional")
    activity = await create(api, pro)
    # Arabic-Indic, Extended Arabic-Indic, fullwidth and NKo digits.
    for zero in (0x660, 0x6F0, 0xFF10, 0x7C0):
        spelled = "".join(chr(zero + int(d)) for d in str(activity["id"]))
        reply = await api.call("DELETE", f"/api/activities/{quote(spelled)}", token=pro.token)
        assert_problem(reply, 404, "not_found")  # `{id}` routes only match ASCII digits
        assert [a["id"] for a in await listing(api, pro)] == [activity["id"]]
    await delete(api, pro, activity["id"])


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
