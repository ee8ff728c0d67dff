"""Every state x actor x action of a connection, reached through the API, with its outcome."""

from __future__ import annotations

from typing import Any

import pytest

from ..api import Account, Api, assert_problem
from .conn_support import answered, invited, listing, remove, removed, requested, respond

STATES = ["pending-by-client", "pending-by-professional", "accepted", "rejected", "removed"]
ACTORS = ["professional", "client", "stranger"]
ACTIONS = ["accept", "reject", "delete"]

# (state, actor, action) -> (status code, problem code or the new status)
OK_ANSWER = {"accept": (200, "accepted"), "reject": (200, "rejected")}
INITIATOR = (403, "initiator_cannot_respond")
NOT_PENDING = (409, "connection_not_pending")
CLOSED = (409, "connection_closed")
REMOVED = (204, "removed")
NOT_FOUND = (404, "connection_not_found")


def expected(state: str, actor: str, action: str) -> tuple[int, str]:
    if actor == "stranger":
        return NOT_FOUND
    if action == "delete":
        return CLOSED if state in ("rejected", "removed") else REMOVED
    initiator = "professional" if state == "pending-by-professional" else "client"
    if actor == initiator:
        return INITIATOR  # the initiator may never answer, whatever the state
    return OK_ANSWER[action] if state.startswith("pending") else NOT_PENDING


async def reach(api: Api, state: str, client: Account, pro: Account) -> dict[str, Any]:
    if state == "pending-by-professional":
        return await invited(api, pro, client)
    connection = await requested(api, client, pro)
    if state == "accepted":
        return await answered(api, pro, connection["id"], "accept")
    if state == "rejected":
        return await answered(api, pro, connection["id"], "reject")
    if state == "removed":
        await answered(api, pro, connection["id"], "accept")
        await removed(api, pro, connection["id"])
        return {**connection, "status": "removed"}
    return connection


async def current(api: Api, account: Account, connection_id: int) -> dict[str, Any]:
    """The connection as `account` lists it (removed ones only show when asked for)."""
    for query in ("", "?status=removed"):
        found = [c for c in await listing(api, account, query) if c["id"] == connection_id]
        if found:
            (connection,) = found
            return connection
    raise AssertionError(f"connection {connection_id} not in the lists of user {account.id}")


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("actor", ACTORS)
@pytest.mark.parametrize("state", STATES)
async def test_transition(api: Api, state: str, actor: str, action: str) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    connection = await reach(api, state, client, pro)
    before = await current(api, pro, connection["id"])
    assert before["status"] == connection["status"] == state.split("-")[0]
    status, outcome = expected(state, actor, action)

    if actor == "stranger":
        # A stranger of either role: nothing to see.
        callers = [await api.signup("client"), await api.signup("professional")]
    else:
        callers = [pro if actor == "professional" else client]
    for caller in callers:
        if action == "delete":
            reply = await remove(api, caller, connection["id"])
        else:
            reply = await respond(api, caller, connection["id"], action)
        if status < 300:
            assert reply.status == status, reply.text
        else:
            assert_problem(reply, status, outcome)

    after_pro = await current(api, pro, connection["id"])
    after_client = await current(api, client, connection["id"])
    if after_pro["initiated_by"] == "professional" and after_pro["status"] != "accepted":
        # An invitation the client has not accepted shows the professional only the
        # address typed; the rest is the same for both.
        assert after_pro["client"] == {"id": None, "name": None, "email": client.user["email"]}
        assert {**after_pro, "client": after_client["client"]} == after_client
    else:
        assert after_pro == after_client
    if status < 300:
        assert after_pro["status"] == outcome
        assert after_pro["updated_at"] > before["updated_at"]
        if action != "delete":
            assert reply.body == (after_pro if callers[0] is pro else after_client)
        else:
            assert reply.text == ""
    else:
        assert after_pro == before
