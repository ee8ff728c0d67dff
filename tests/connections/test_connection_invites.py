"""POST /api/connection/invite-client: existing clients, email invitations and their binding.

The clients here verify their address at sign-up (the api fixture reads the mailed code):
an email invitation binds to verified addresses only (test_connection_oracle.py covers the
unverified ones). Until the client accepts, the professional sees only the address typed.
"""

from __future__ import annotations

from typing import Any

from ..api import Api, assert_problem, unique_email
from .conn_support import (
    answered,
    assert_connection,
    ids,
    invite_client,
    invited,
    listing,
    party,
    remove,
    request_pro,
    requested,
)


def unbound(email: str) -> dict[str, Any]:
    return {"id": None, "name": None, "email": email}


async def test_invite_existing_client(api: Api) -> None:
    pro, client = await api.signup("professional"), await api.signup("client")
    reply = await invite_client(api, pro, client.user["email"])
    assert reply.status == 201, reply.text
    assert reply.headers.get("Content-Type", "").startswith("application/json")
    body = assert_connection(
        reply.body,
        status="pending",
        initiated_by="professional",
        professional=pro,
        client=unbound(client.user["email"]),
    )
    assert body["created_at"] == body["updated_at"]
    # It is bound all the same: the client sees it, as theirs.
    (mine,) = await listing(api, client)
    assert mine["id"] == body["id"] and mine["client"] == party(client)


async def test_invite_existing_client_by_mixed_case_address(api: Api) -> None:
    pro, client = await api.signup("professional"), await api.signup("client")
    reply = await invite_client(api, pro, client.user["email"].upper())
    assert reply.status == 201, reply.text
    assert_connection(
        reply.body,
        status="pending",
        initiated_by="professional",
        professional=pro,
        client=unbound(client.user["email"]),
    )
    assert ids(await listing(api, client)) == [reply.body["id"]]


async def test_invite_client_right_after_their_verification(api: Api) -> None:
    """No wait between the client's verification and the invitation: it binds at once."""
    pro = await api.signup("professional")
    for _ in range(3):
        client = await api.signup("client")
        reply = await invite_client(api, pro, client.user["email"])
        assert reply.status == 201, reply.text
        assert reply.body["client"] == unbound(client.user["email"])
        (mine,) = await listing(api, client)
        assert mine["client"] == party(client)


async def test_invite_unknown_email_is_lower_cased_and_unbound(api: Api) -> None:
    pro = await api.signup("professional")
    email = unique_email("Invitee.Mixed")
    reply = await invite_client(api, pro, email.upper())
    assert reply.status == 201, reply.text
    assert_connection(
        reply.body,
        status="pending",
        initiated_by="professional",
        professional=pro,
        client=unbound(email.lower()),
    )
    listed = await listing(api, pro)
    assert listed == [reply.body]


async def test_email_invitation_binds_at_verification(api: Api) -> None:
    pro = await api.signup("professional")
    email = unique_email("later")
    created = (await invite_client(api, pro, email)).body
    assert created["client"] == unbound(email)
    # The invited person signs up and verifies; their list shows the invitation at once.
    client = await api.signup("client", email=email)
    mine = await listing(api, client)
    assert len(mine) == 1, mine
    bound = assert_connection(
        mine[0], status="pending", initiated_by="professional", professional=pro, client=client
    )
    assert bound["id"] == created["id"]
    assert bound["created_at"] == created["created_at"]
    # The professional still sees only the address typed, until the client accepts.
    (theirs,) = await listing(api, pro)
    assert theirs == {**bound, "client": unbound(email)}
    # The client can answer it; then the professional sees who they are.
    accepted = await answered(api, client, created["id"], "accept")
    assert_connection(
        accepted, status="accepted", initiated_by="professional", professional=pro, client=client
    )
    assert (await listing(api, pro, "?status=accepted")) == [accepted]


async def test_email_invitation_binds_case_insensitively(api: Api) -> None:
    pro = await api.signup("professional")
    email = unique_email("case")
    created = (await invite_client(api, pro, email.upper())).body
    client = await api.signup("client", email=email.title())
    mine = await listing(api, client)
    assert ids(mine) == [created["id"]]
    assert mine[0]["client"] == party(client)


async def test_email_invitation_with_a_non_ascii_address_binds(api: Api) -> None:
    pro = await api.signup("professional")
    email = "Élodie-" + unique_email("Ünï")
    created = (await invite_client(api, pro, email.upper())).body
    assert created["client"] == unbound(email.lower())
    client = await api.signup("client", email=email)
    assert client.user["email"] == email.lower()
    (mine,) = await listing(api, client)
    assert mine["id"] == created["id"] and mine["client"] == party(client)


async def test_email_invitations_from_several_professionals_all_bind(api: Api) -> None:
    pros = [await api.signup("professional") for _ in range(3)]
    email = unique_email("popular")
    created = [(await invite_client(api, p, email)).body for p in pros]
    client = await api.signup("client", email=email)
    mine = await listing(api, client)
    assert ids(mine) == sorted((c["id"] for c in created), reverse=True)
    for item, pro in zip(reversed(mine), pros, strict=True):
        assert_connection(
            item, status="pending", initiated_by="professional", professional=pro, client=client
        )
        (theirs,) = await listing(api, pro)
        assert theirs["client"] == unbound(email)


async def test_email_invitation_does_not_bind_to_a_professional(api: Api) -> None:
    pro = await api.signup("professional")
    email = unique_email("becomes-pro")
    created = (await invite_client(api, pro, email)).body
    other_pro = await api.signup("professional", email=email)
    assert await listing(api, other_pro) == []
    (still,) = await listing(api, pro)
    assert still["id"] == created["id"]
    assert still["client"] == unbound(email)


async def test_removed_email_invitation_does_not_bind(api: Api) -> None:
    pro = await api.signup("professional")
    email = unique_email("withdrawn")
    created = (await invite_client(api, pro, email)).body
    assert (await remove(api, pro, created["id"])).status == 204
    client = await api.signup("client", email=email)
    assert await listing(api, client) == []
    assert await listing(api, client, "?status=removed") == []


async def test_invite_a_professional_is_not_a_client(api: Api) -> None:
    pro, other = await api.signup("professional"), await api.signup("professional")
    for email in (other.user["email"], other.user["email"].upper(), pro.user["email"]):
        assert_problem(await invite_client(api, pro, email), 400, "not_a_client")
    assert await listing(api, pro) == []


async def test_invite_by_a_client_is_forbidden(api: Api) -> None:
    client, other = await api.signup("client"), await api.signup("client")
    assert_problem(await invite_client(api, client, other.user["email"]), 403, "forbidden_role")
    assert_problem(await invite_client(api, client, "not an email"), 403, "forbidden_role")
    assert_problem(await invite_client(api, client, unique_email()), 403, "forbidden_role")


async def test_invite_needs_a_token(api: Api) -> None:
    for token in (None, "garbage"):
        reply = await api.call(
            "POST",
            "/api/connection/invite-client",
            json={"client_email": unique_email()},
            token=token,
        )
        assert_problem(reply, 401)


BAD_EMAILS: list[Any] = [
    "",
    "not-an-email",
    "@example.com",
    "user@",
    "user@@example.com",
    "user name@example.com",
    "x" * 250 + "@example.com",
    "Someone <someone@example.com>",
    None,
    42,
    True,
    ["a@example.com"],
    {"email": "a@example.com"},
]


async def test_invite_invalid_email(api: Api) -> None:
    pro = await api.signup("professional")
    for value in BAD_EMAILS:
        reply = await invite_client(api, pro, value)
        assert_problem(reply, 400, "validation_error")
        assert "client_email" in {e["field"] for e in reply.body["errors"]}, (value, reply.body)
    missing = await api.call("POST", "/api/connection/invite-client", json={}, token=pro.token)
    assert_problem(missing, 400, "validation_error")
    assert "client_email" in {e["field"] for e in missing.body["errors"]}
    assert await listing(api, pro) == []


async def test_second_invite_to_the_same_address_conflicts(api: Api) -> None:
    pro = await api.signup("professional")
    email = unique_email("twice")
    assert (await invite_client(api, pro, email)).status == 201
    for again in (email, email.upper(), email.capitalize()):
        assert_problem(await invite_client(api, pro, again), 409, "connection_exists")
    assert len(await listing(api, pro)) == 1


async def test_second_invite_to_an_existing_client_conflicts(api: Api) -> None:
    pro, client = await api.signup("professional"), await api.signup("client")
    created = await invited(api, pro, client)
    assert_problem(await invite_client(api, pro, client.user["email"]), 409, "connection_exists")
    assert_problem(
        await invite_client(api, pro, client.user["email"].upper()), 409, "connection_exists"
    )
    await answered(api, client, created["id"], "accept")
    assert_problem(await invite_client(api, pro, client.user["email"]), 409, "connection_exists")


async def test_invite_conflicts_with_the_clients_own_request(api: Api) -> None:
    pro, client = await api.signup("professional"), await api.signup("client")
    await requested(api, client, pro)
    assert_problem(await invite_client(api, pro, client.user["email"]), 409, "connection_exists")


async def test_email_invitation_then_the_client_requests_the_same_professional(api: Api) -> None:
    pro = await api.signup("professional")
    email = unique_email("both-ways")
    await invite_client(api, pro, email)
    client = await api.signup("client", email=email)
    assert_problem(await request_pro(api, client, pro.id), 409, "connection_exists")


async def test_invite_again_after_rejected(api: Api) -> None:
    pro, client = await api.signup("professional"), await api.signup("client")
    first = await invited(api, pro, client)
    await answered(api, client, first["id"], "reject")
    again = await invite_client(api, pro, client.user["email"])
    assert again.status == 201, again.text
    assert again.body["id"] != first["id"]


async def test_two_professionals_may_invite_the_same_address(api: Api) -> None:
    pro, other = await api.signup("professional"), await api.signup("professional")
    email = unique_email("shared")
    assert (await invite_client(api, pro, email)).status == 201
    assert (await invite_client(api, other, email)).status == 201
