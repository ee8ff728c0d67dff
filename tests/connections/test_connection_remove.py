"""DELETE /api/connection/{id}: either party removes, closed ones conflict, others get 404."""

from __future__ import annotations

import pytest

from ..api import Api, assert_problem
from .conn_support import (
    answered,
    assert_connection,
    assert_not_found,
    invite_client,
    invited,
    listing,
    remove,
    removed,
    requested,
)


@pytest.mark.parametrize("by", ["client", "professional"])
@pytest.mark.parametrize("accepted_first", [False, True], ids=["pending", "accepted"])
async def test_either_party_removes(api: Api, by: str, accepted_first: bool) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    created = await requested(api, client, pro)
    before = await answered(api, pro, created["id"], "accept") if accepted_first else created
    reply = await remove(api, client if by == "client" else pro, created["id"])
    assert reply.status == 204, reply.text
    assert reply.text == ""
    for account in (client, pro):
        assert await listing(api, account) == []
        (gone,) = await listing(api, account, "?status=removed")
        assert_connection(
            gone, status="removed", initiated_by="client", professional=pro, client=client
        )
        assert gone["id"] == created["id"]
        assert gone["updated_at"] > before["updated_at"]


async def test_professional_removes_an_unbound_email_invitation(api: Api) -> None:
    pro = await api.signup("professional")
    created = (await invite_client(api, pro, f"withdrawn-{pro.id}@example.com")).body
    assert (await remove(api, pro, created["id"])).status == 204
    (gone,) = await listing(api, pro, "?status=removed")
    assert gone["status"] == "removed" and gone["client"]["id"] is None


@pytest.mark.parametrize("closed_by", ["remove", "reject"])
async def test_removing_a_closed_connection_conflicts(api: Api, closed_by: str) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    created = await invited(api, pro, client)
    if closed_by == "remove":
        await removed(api, pro, created["id"])
    else:
        await answered(api, client, created["id"], "reject")
    for account in (client, pro):
        assert_problem(await remove(api, account, created["id"]), 409, "connection_closed")
    status = "removed" if closed_by == "remove" else "rejected"
    (still,) = await listing(api, pro, f"?status={status}")
    assert still["id"] == created["id"]


async def test_stranger_cannot_remove(api: Api) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    stranger_client, stranger_pro = await api.signup("client"), await api.signup("professional")
    created = await requested(api, client, pro)
    accepted = await answered(api, pro, created["id"], "accept")
    for stranger in (stranger_client, stranger_pro):
        assert_not_found(await remove(api, stranger, created["id"]))
    assert await listing(api, pro) == [accepted]


UNNAMED_IDS = ["abc", "0", "-1", "1.5", "1e3", "%20", "00x1", str(2**63), str(2**64), "9" * 40]


async def test_remove_ids_that_name_nothing(api: Api) -> None:
    client = await api.signup("client")
    for path_id in UNNAMED_IDS:
        assert_problem(await remove(api, client, path_id), 404)


async def test_remove_unknown_id(api: Api) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    for account in (client, pro):
        for connection_id in (2**62, 2**63 - 1):
            assert_not_found(await remove(api, account, connection_id))


async def test_remove_needs_a_token(api: Api) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    created = await requested(api, client, pro)
    for token in (None, "garbage"):
        reply = await api.call("DELETE", f"/api/connection/{created['id']}", token=token)
        assert_problem(reply, 401)
    # Unknown ids answer 401 too: the token is checked first.
    assert_problem(await api.call("DELETE", "/api/connection/1"), 401)
    assert_problem(await api.call("DELETE", "/api/connection/abc"), 401)
    assert await listing(api, pro) == [created]


# --- BOLA: every id-taking route, someone else's connection -----------------------------


async def test_stranger_learns_nothing_about_other_peoples_connections(api: Api) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    stranger_client, stranger_pro = await api.signup("client"), await api.signup("professional")
    asked = await requested(api, client, pro)
    offered_to = await api.signup("client")
    offered = await invited(api, pro, offered_to)
    email_invite = (await invite_client(api, pro, f"unbound-{pro.id}@example.com")).body
    accepted = await answered(api, offered_to, offered["id"], "accept")
    for stranger in (stranger_client, stranger_pro):
        for connection in (asked, accepted, email_invite):
            for action in ("accept", "reject"):
                reply = await api.call(
                    "POST",
                    "/api/connection/respond",
                    json={"connection_id": connection["id"], "action": action},
                    token=stranger.token,
                )
                assert_not_found(reply)
            assert_not_found(await remove(api, stranger, connection["id"]))
        # A missing id answers exactly the same.
        missing = await remove(api, stranger, 2**62)
        seen = await remove(api, stranger, asked["id"])
        assert (missing.status, missing.body["code"]) == (seen.status, seen.body["code"])
        for query in ("", "?status=pending", "?status=accepted", "?limit=200"):
            assert await listing(api, stranger, query) == []
    # Nothing changed for the parties.
    assert await listing(api, pro) == [email_invite, accepted, asked]
