"""Read-your-writes through the gateway: an invite right after an accept, by the other party."""

from __future__ import annotations

import asyncio

from ..api import Api
from .conftest import connect, create, invite_reply


async def test_invite_right_after_the_clients_accept_is_never_refused(api: Api) -> None:
    """The client accepts an email invitation; the professional invites at once. Many
    pairs at the same time: none is refused, whichever side made the last change."""
    pro = await api.signup("professional")
    activity = await create(api, pro, title="Group")

    async def one() -> int:
        client = await api.signup("client")
        invited = await api.call(
            "POST",
            "/api/connection/invite-client",
            json={"client_email": client.user["email"]},
            token=pro.token,
        )
        assert invited.status == 201, invited.text
        answered = await api.call(
            "POST",
            "/api/connection/respond",
            json={"connection_id": invited.body["id"], "action": "accept"},
            token=client.token,
        )
        assert answered.status == 200, answered.text
        reply = await invite_reply(api, pro, activity["id"], client.id)
        return reply.status

    statuses = await asyncio.gather(*(one() for _ in range(12)))
    assert statuses == [201] * 12


async def test_positions_are_the_gateways_own(api: Api) -> None:
    """The outbox position a service answers with stays between it and the gateway, and a
    client cannot make a service wait by sending one (the gateway sets X-Read-After)."""
    pro = await api.signup("professional")
    client = await api.signup("client")
    await connect(api, pro, client)
    activity = await api.call("POST", "/api/activities/", json={"title": "Group"}, token=pro.token)
    assert activity.status == 201
    assert "X-Outbox-Row" not in activity.headers
    reply = await api.call(
        "POST",
        "/api/activities/invite",
        json={"activity_id": activity.body["id"], "client_id": client.id},
        token=pro.token,
        headers={"X-Read-After": "connections.events=999999999999"},
    )
    # Held for a row that will never come, the barrier would give up after 1 s and the
    # answer would be 503: the gateway dropped the client's header.
    assert reply.status == 201, reply.text


async def test_a_notification_is_listed_as_soon_as_its_change_returned(api: Api) -> None:
    """No polling: the list right after the reply holds the notification it caused."""
    for _ in range(5):
        pro = await api.signup("professional")
        client = await api.signup("client")
        await connect(api, pro, client)
        activity = await create(api, pro, title="Group")
        invited = await invite_reply(api, pro, activity["id"], client.id)
        assert invited.status == 201, invited.text
        listed = await api.call("GET", "/api/notifications", token=client.token)
        assert listed.status == 200
        assert [n["type"] for n in listed.body][-1] == "activity.invited", listed.body
