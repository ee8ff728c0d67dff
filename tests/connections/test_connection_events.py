"""Each connection change puts exactly one event on `connections.events`, to the right people."""

from __future__ import annotations

from ..api import Api, unique_email
from .conn_support import (
    StreamWatch,
    answered,
    invite_client,
    invited,
    remove,
    removed,
    request_pro,
    requested,
    respond,
)


async def test_request_accept_remove_by_client(api: Api, events: StreamWatch) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    created = await requested(api, client, pro)
    assert await events.wait_for(created["id"], 1) == [("connection.requested", [pro.id])]
    (event,) = await events.of_connection(created["id"])
    assert event.producer == "connections"
    assert event.data.connection.model_dump(mode="json") == created

    accepted = await answered(api, pro, created["id"], "accept")
    assert (await events.wait_for(created["id"], 2))[1] == ("connection.accepted", [client.id])
    assert (await events.of_connection(created["id"]))[1].data.connection.model_dump(
        mode="json"
    ) == accepted

    await removed(api, client, created["id"])
    assert await events.wait_for(created["id"], 3) == [
        ("connection.requested", [pro.id]),
        ("connection.accepted", [client.id]),
        ("connection.removed", [pro.id]),
    ]
    statuses = [e.data.connection.status for e in await events.of_connection(created["id"])]
    assert statuses == ["pending", "accepted", "removed"]


async def test_request_rejected(api: Api, events: StreamWatch) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    created = await requested(api, client, pro)
    await answered(api, pro, created["id"], "reject")
    assert await events.wait_for(created["id"], 2) == [
        ("connection.requested", [pro.id]),
        ("connection.rejected", [client.id]),
    ]


async def test_invitation_accepted_then_removed_by_professional(
    api: Api, events: StreamWatch
) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    created = await invited(api, pro, client)
    assert await events.wait_for(created["id"], 1) == [("connection.invited", [client.id])]
    await answered(api, client, created["id"], "accept")
    await removed(api, pro, created["id"])
    assert await events.wait_for(created["id"], 3) == [
        ("connection.invited", [client.id]),
        ("connection.accepted", [pro.id]),
        ("connection.removed", [client.id]),
    ]


async def test_invitation_rejected(api: Api, events: StreamWatch) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    created = await invited(api, pro, client)
    await answered(api, client, created["id"], "reject")
    assert await events.wait_for(created["id"], 2) == [
        ("connection.invited", [client.id]),
        ("connection.rejected", [pro.id]),
    ]


async def test_email_invitation_notifies_the_client_once_they_sign_up(
    api: Api, events: StreamWatch
) -> None:
    pro = await api.signup("professional")
    email = unique_email("notify-later")
    created = (await invite_client(api, pro, email)).body
    assert await events.wait_for(created["id"], 1) == [("connection.invited", [])]
    client = await api.signup("client", email=email)
    assert await events.wait_for(created["id"], 2) == [
        ("connection.invited", []),
        ("connection.invited", [client.id]),
    ]
    bound = (await events.of_connection(created["id"]))[1].data.connection
    assert bound.client.id == client.id and bound.client.name == client.user["name"]
    assert bound.status == "pending"
    await answered(api, client, created["id"], "accept")
    await removed(api, client, created["id"])
    assert (await events.wait_for(created["id"], 4))[2:] == [
        ("connection.accepted", [pro.id]),
        ("connection.removed", [pro.id]),
    ]


async def test_removing_an_unbound_email_invitation_notifies_nobody(
    api: Api, events: StreamWatch
) -> None:
    pro = await api.signup("professional")
    created = (await invite_client(api, pro, unique_email("unbound"))).body
    await removed(api, pro, created["id"])
    assert await events.wait_for(created["id"], 2) == [
        ("connection.invited", []),
        ("connection.removed", []),
    ]


async def test_refused_calls_make_no_events(api: Api, events: StreamWatch) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    stranger = await api.signup("client")
    created = await requested(api, client, pro)
    assert (await request_pro(api, client, pro.id)).status == 409
    assert (await invite_client(api, pro, client.user["email"])).status == 409
    assert (await respond(api, client, created["id"], "accept")).status == 403
    assert (await respond(api, stranger, created["id"], "accept")).status == 404
    assert (await remove(api, stranger, created["id"])).status == 404
    await answered(api, pro, created["id"], "reject")
    assert (await respond(api, pro, created["id"], "accept")).status == 409
    assert (await remove(api, pro, created["id"])).status == 409
    # The reject is the last change: once it is on the stream, anything else would be too.
    assert await events.wait_for(created["id"], 2) == [
        ("connection.requested", [pro.id]),
        ("connection.rejected", [client.id]),
    ]
    mine = [
        e
        for e in await events.all()
        if e.type.startswith("connection.")
        and {e.data.connection.client.id, e.data.connection.professional.id}
        & {client.id, pro.id, stranger.id}
    ]
    assert len(mine) == 2
