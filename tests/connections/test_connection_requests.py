"""POST /api/connection/request-pro: the Connection shape, roles, validation, duplicates."""

from __future__ import annotations

from typing import Any

import pytest

from ..api import Api, assert_problem
from .conn_support import (
    answered,
    assert_connection,
    invited,
    party,
    remove,
    removed,
    request_pro,
    requested,
)


async def test_request_pro_returns_the_connection(api: Api) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    reply = await request_pro(api, client, pro.id)
    assert reply.status == 201, reply.text
    assert reply.headers.get("Content-Type", "").startswith("application/json")
    body = assert_connection(
        reply.body, status="pending", initiated_by="client", professional=pro, client=client
    )
    assert body["created_at"] == body["updated_at"]
    assert body["professional"] == {
        "id": pro.id,
        "name": pro.user["name"],
        "email": pro.user["email"],
    }
    assert body["client"] == party(client)


async def test_request_pro_takes_an_id_spelled_as_a_whole_float(api: Api) -> None:
    # JSON has one number type: 7.0 is the integer 7 to JSON Schema, hence to the OpenAPI.
    client, pro = await api.signup("client"), await api.signup("professional")
    reply = await request_pro(api, client, float(pro.id))
    assert reply.status == 201, reply.text
    assert reply.body["professional"]["id"] == pro.id


async def test_request_pro_right_after_the_professional_signed_up(api: Api) -> None:
    """No wait between the professional's sign-up and the request (read-your-writes)."""
    client = await api.signup("client")
    for _ in range(3):
        pro = await api.signup("professional")
        reply = await request_pro(api, client, pro.id)
        assert reply.status == 201, reply.text


async def test_request_pro_right_after_the_client_signed_up(api: Api) -> None:
    pro = await api.signup("professional")
    for _ in range(3):
        client = await api.signup("client")
        reply = await request_pro(api, client, pro.id)
        assert reply.status == 201, reply.text


async def test_request_pro_by_a_professional_is_forbidden(api: Api) -> None:
    pro, other = await api.signup("professional"), await api.signup("professional")
    assert_problem(await request_pro(api, pro, other.id), 403, "forbidden_role")
    assert_problem(await request_pro(api, pro, pro.id), 403, "forbidden_role")
    # The role is checked before the body.
    reply = await api.call("POST", "/api/connection/request-pro", json={}, token=pro.token)
    assert_problem(reply, 403, "forbidden_role")


async def test_request_pro_needs_a_token(api: Api) -> None:
    pro = await api.signup("professional")
    for token in (None, "garbage", "a.b.c"):
        reply = await api.call(
            "POST", "/api/connection/request-pro", json={"professional_id": pro.id}, token=token
        )
        assert_problem(reply, 401)
    # The token is checked before the body.
    assert_problem(await api.call("POST", "/api/connection/request-pro", json={}), 401)


async def test_request_pro_unknown_professional(api: Api) -> None:
    client, other_client = await api.signup("client"), await api.signup("client")
    for target in (2**62, 2**63 - 1, other_client.id, client.id):
        assert_problem(await request_pro(api, client, target), 404, "professional_not_found")


# Not 1.0: JSON Schema (and JSON itself) reads it as the integer 1, so it is accepted as 1.
BAD_IDS: list[Any] = [0, -1, -(2**62), "1", "abc", "", 1.5, 0.0, True, False, None, [1], {"id": 1}]


async def test_request_pro_bad_professional_id(api: Api) -> None:
    client = await api.signup("client")
    for value in [*BAD_IDS, 2**63]:
        reply = await request_pro(api, client, value)
        assert_problem(reply, 400, "validation_error")
        fields = {e["field"] for e in reply.body["errors"]}
        assert "professional_id" in fields, (value, reply.body)


async def test_request_pro_id_beyond_64_bits(api: Api) -> None:
    client = await api.signup("client")
    for value in (2**64, 2**70, 10**30):
        assert_problem(await request_pro(api, client, value), 400)


async def test_request_pro_missing_professional_id(api: Api) -> None:
    client = await api.signup("client")
    for body in ({}, {"professional": 1}):
        reply = await api.call("POST", "/api/connection/request-pro", json=body, token=client.token)
        assert_problem(reply, 400, "validation_error")
        assert "professional_id" in {e["field"] for e in reply.body["errors"]}
    empty = await api.call(
        "POST",
        "/api/connection/request-pro",
        data=b"",
        headers={"Content-Type": "application/json"},
        token=client.token,
    )
    assert_problem(empty, 400, "validation_error")
    not_json = await api.call(
        "POST",
        "/api/connection/request-pro",
        data=b"{",
        headers={"Content-Type": "application/json"},
        token=client.token,
    )
    assert_problem(not_json, 400, "malformed_json")


async def test_request_pro_extra_fields_are_ignored(api: Api) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    reply = await api.call(
        "POST",
        "/api/connection/request-pro",
        json={"professional_id": pro.id, "status": "accepted", "client_id": 1, "id": 5},
        token=client.token,
    )
    assert reply.status == 201, reply.text
    assert_connection(
        reply.body, status="pending", initiated_by="client", professional=pro, client=client
    )


async def test_request_pro_conflicts_while_pending_and_while_accepted(api: Api) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    first = await requested(api, client, pro)
    assert_problem(await request_pro(api, client, pro.id), 409, "connection_exists")
    await answered(api, pro, first["id"], "accept")
    assert_problem(await request_pro(api, client, pro.id), 409, "connection_exists")


async def test_request_pro_conflicts_with_an_invitation_from_that_professional(api: Api) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    await invited(api, pro, client)
    assert_problem(await request_pro(api, client, pro.id), 409, "connection_exists")


async def test_request_pro_allowed_again_after_rejected(api: Api) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    first = await requested(api, client, pro)
    await answered(api, pro, first["id"], "reject")
    again = await request_pro(api, client, pro.id)
    assert again.status == 201, again.text
    assert again.body["id"] != first["id"]
    assert_connection(
        again.body, status="pending", initiated_by="client", professional=pro, client=client
    )


@pytest.mark.parametrize("by", ["client", "professional"])
@pytest.mark.parametrize("accepted_first", [False, True], ids=["pending", "accepted"])
async def test_request_pro_allowed_again_after_removed(
    api: Api, by: str, accepted_first: bool
) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    first = await requested(api, client, pro)
    if accepted_first:
        await answered(api, pro, first["id"], "accept")
    await removed(api, client if by == "client" else pro, first["id"])
    again = await request_pro(api, client, pro.id)
    assert again.status == 201, again.text
    assert again.body["id"] != first["id"]
    # ...and that one is open again, so a third is refused.
    assert_problem(await request_pro(api, client, pro.id), 409, "connection_exists")
    assert (await remove(api, client, again.body["id"])).status == 204


async def test_request_pro_pairs_are_independent(api: Api) -> None:
    client, other_client = await api.signup("client"), await api.signup("client")
    pro, other_pro = await api.signup("professional"), await api.signup("professional")
    for c, p in ((client, pro), (client, other_pro), (other_client, pro)):
        reply = await request_pro(api, c, p.id)
        assert reply.status == 201, reply.text
        assert_connection(
            reply.body, status="pending", initiated_by="client", professional=p, client=c
        )
