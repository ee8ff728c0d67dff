"""POST /api/connection/respond: who may answer, validation, and the answered states."""

from __future__ import annotations

from typing import Any

import pytest

from ..api import Api, assert_problem
from .conn_support import (
    answered,
    assert_connection,
    assert_not_found,
    invited,
    listing,
    masked,
    removed,
    requested,
    respond,
)


@pytest.mark.parametrize("action", ["accept", "reject"])
async def test_professional_answers_a_request(api: Api, action: str) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    created = await requested(api, client, pro)
    reply = await respond(api, pro, created["id"], action)
    assert reply.status == 200, reply.text
    status = "accepted" if action == "accept" else "rejected"
    body = assert_connection(
        reply.body, status=status, initiated_by="client", professional=pro, client=client
    )
    assert body["id"] == created["id"]
    assert body["created_at"] == created["created_at"]
    assert body["updated_at"] > created["updated_at"]
    assert await listing(api, client, f"?status={status}") == [body]
    assert await listing(api, pro, f"?status={status}") == [body]


@pytest.mark.parametrize("action", ["accept", "reject"])
async def test_client_answers_an_invitation(api: Api, action: str) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    created = await invited(api, pro, client)
    reply = await respond(api, client, created["id"], action)
    assert reply.status == 200, reply.text
    status = "accepted" if action == "accept" else "rejected"
    body = assert_connection(
        reply.body, status=status, initiated_by="professional", professional=pro, client=client
    )
    assert body["updated_at"] > created["updated_at"]
    # Accepted, the professional sees the client; rejected, still only the address typed.
    seen = body if action == "accept" else masked(body)
    assert await listing(api, pro, f"?status={status}") == [seen]


@pytest.mark.parametrize("action", ["accept", "reject"])
async def test_initiator_cannot_answer(api: Api, action: str) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    asked = await requested(api, client, pro)
    assert_problem(await respond(api, client, asked["id"], action), 403, "initiator_cannot_respond")
    other = await api.signup("client")
    offered = await invited(api, pro, other)
    assert_problem(await respond(api, pro, offered["id"], action), 403, "initiator_cannot_respond")
    # Nothing changed.
    assert [c["status"] for c in await listing(api, pro)] == ["pending", "pending"]


async def test_initiator_cannot_answer_an_unbound_email_invitation(api: Api) -> None:
    pro = await api.signup("professional")
    created = (
        await api.call(
            "POST",
            "/api/connection/invite-client",
            json={"client_email": "nobody-yet-" + str(pro.id) + "@example.com"},
            token=pro.token,
        )
    ).body
    assert_problem(
        await respond(api, pro, created["id"], "accept"), 403, "initiator_cannot_respond"
    )


async def test_stranger_cannot_answer(api: Api) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    stranger_client, stranger_pro = await api.signup("client"), await api.signup("professional")
    asked = await requested(api, client, pro)
    for stranger in (stranger_client, stranger_pro):
        for action in ("accept", "reject"):
            assert_not_found(await respond(api, stranger, asked["id"], action))
    # Still pending, and the rightful party can still answer.
    await answered(api, pro, asked["id"], "accept")


async def test_unknown_connection(api: Api) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    for account in (client, pro):
        for connection_id in (2**62, 2**63 - 1):
            assert_not_found(await respond(api, account, connection_id, "accept"))


@pytest.mark.parametrize("first", ["accept", "reject"])
async def test_answering_twice_conflicts(api: Api, first: str) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    created = await requested(api, client, pro)
    done = await answered(api, pro, created["id"], first)
    for action in ("accept", "reject"):
        assert_problem(
            await respond(api, pro, created["id"], action), 409, "connection_not_pending"
        )
    (still,) = await listing(api, pro, f"?status={done['status']}")
    assert still == done


async def test_answering_a_removed_connection_conflicts(api: Api) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    created = await requested(api, client, pro)
    await removed(api, client, created["id"])
    assert_problem(await respond(api, pro, created["id"], "accept"), 409, "connection_not_pending")


BAD_ACTIONS: list[Any] = ["maybe", "", "Accept", "ACCEPT", "accepted", "decline", 1, True, None]


async def test_bad_action(api: Api) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    created = await requested(api, client, pro)
    for action in BAD_ACTIONS:
        reply = await respond(api, pro, created["id"], action)
        assert_problem(reply, 400, "validation_error")
        assert "action" in {e["field"] for e in reply.body["errors"]}, (action, reply.body)
    missing = await api.call(
        "POST", "/api/connection/respond", json={"connection_id": created["id"]}, token=pro.token
    )
    assert_problem(missing, 400, "validation_error")
    assert "action" in {e["field"] for e in missing.body["errors"]}
    assert [c["status"] for c in await listing(api, pro)] == ["pending"]


async def test_bad_connection_id(api: Api) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    created = await requested(api, client, pro)
    for value in [0, -1, str(created["id"]), 1.5, True, None, [created["id"]], 2**63]:
        reply = await respond(api, pro, value, "accept")
        assert_problem(reply, 400, "validation_error")
        assert "connection_id" in {e["field"] for e in reply.body["errors"]}, (value, reply.body)
    missing = await api.call(
        "POST", "/api/connection/respond", json={"action": "accept"}, token=pro.token
    )
    assert_problem(missing, 400, "validation_error")
    empty = await api.call("POST", "/api/connection/respond", json={}, token=pro.token)
    assert_problem(empty, 400, "validation_error")
    assert {"connection_id", "action"} <= {e["field"] for e in empty.body["errors"]}


async def test_validation_comes_before_visibility(api: Api) -> None:
    """A stranger with a bad body learns nothing: 400, as for anyone."""
    client, pro = await api.signup("client"), await api.signup("professional")
    created = await requested(api, client, pro)
    stranger = await api.signup("client")
    assert_problem(await respond(api, stranger, created["id"], "maybe"), 400, "validation_error")
    assert_problem(await respond(api, stranger, 2**62, "maybe"), 400, "validation_error")


async def test_respond_needs_a_token(api: Api) -> None:
    for token in (None, "garbage"):
        reply = await api.call(
            "POST",
            "/api/connection/respond",
            json={"connection_id": 1, "action": "accept"},
            token=token,
        )
        assert_problem(reply, 401)
