"""Each notification type reaches exactly the users API.md names, on every socket, in order."""

from __future__ import annotations

import asyncio
from typing import Any

from ..api import Account, Api, unique_email
from ..mailbox import verify
from ..stack import Stack
from .live_support import (
    SETTLE,
    LiveSocket,
    Sockets,
    activities_of,
    answer_connection,
    answer_invite,
    assert_increasing,
    assert_notification,
    connect_pair,
    connections_of,
    create_activity,
    delete_activity,
    full_log,
    invite,
    invite_client,
    remove_connection,
    request_pro,
)


def kinds(messages: list[dict[str, Any]]) -> list[str]:
    return [m["type"] for m in messages]


async def marks(api: Api, *accounts: Account) -> dict[int, str | None]:
    """The newest notification id of each account now (None: an empty log)."""
    logs = await asyncio.gather(*(full_log(api, a) for a in accounts))
    return {a.id: (log[-1]["id"] if log else None) for a, log in zip(accounts, logs, strict=True)}


async def settle_and_check(
    api: Api,
    expected: dict[LiveSocket, tuple[Account, list[tuple[str, dict[str, Any]]]]],
    since: dict[int, str | None] | None = None,
) -> None:
    """Each socket got exactly its expected notifications, and the log holds the same
    after `since` (the account's mark when the sockets opened; the whole log by default)."""
    for sock, (_, wanted) in expected.items():
        await sock.wait_count(len(wanted))
    await asyncio.sleep(SETTLE)  # anything unexpected would have arrived by now
    logs: dict[int, list[dict[str, Any]]] = {}
    for sock, (account, wanted) in expected.items():
        assert len(sock.messages) == len(wanted), (sock.label, kinds(sock.messages), wanted)
        for message, (kind, data) in zip(sock.messages, wanted, strict=True):
            assert_notification(message, kind, data)
        assert_increasing(sock.messages)
        if account.id not in logs:
            logs[account.id] = await full_log(api, account, (since or {}).get(account.id))
        assert logs[account.id] == sock.messages, sock.label


async def test_request_accept_remove_reach_the_named_party(
    api: Api, stack: Stack, sockets: Sockets
) -> None:
    pro, client, bystander = await asyncio.gather(
        api.signup("professional"), api.signup("client"), api.signup("client")
    )
    url = stack.gateway_url
    pro_a = await sockets.open(url, pro, label="pro-a")
    pro_b = await sockets.open(url, pro, how="protocol", label="pro-b")
    client_a = await sockets.open(url, client, label="client-a")
    client_b = await sockets.open(url, client, how="query", label="client-b")
    other = await sockets.open(url, bystander, label="bystander")

    requested = await request_pro(api, client, pro)
    await pro_a.wait_count(1)
    accepted = await answer_connection(api, pro, requested["id"], "accept")
    await client_a.wait_count(1)
    await remove_connection(api, pro, requested["id"])
    [removed] = await connections_of(api, client, "removed")
    assert removed["status"] == "removed" and removed["id"] == requested["id"]

    pro_gets = [("connection.requested", {"connection": requested})]
    client_gets = [
        ("connection.accepted", {"connection": accepted}),
        ("connection.removed", {"connection": removed}),
    ]
    await settle_and_check(
        api,
        {
            pro_a: (pro, pro_gets),
            pro_b: (pro, pro_gets),
            client_a: (client, client_gets),
            client_b: (client, client_gets),
            other: (bystander, []),
        },
    )
    # Both sockets of one user got the very same notifications.
    assert pro_a.messages == pro_b.messages and client_a.messages == client_b.messages


async def test_invite_reject_and_removal_by_the_client(
    api: Api, stack: Stack, sockets: Sockets
) -> None:
    pro, client, bystander = await asyncio.gather(
        api.signup("professional"), api.signup("client"), api.signup("professional")
    )
    url = stack.gateway_url
    pro_s = await sockets.open(url, pro, label="pro")
    client_s = await sockets.open(url, client, label="client")
    other = await sockets.open(url, bystander, label="bystander")

    # An invitation of an existing (verified) client reaches that client at once; the
    # professional sees the client only as the address typed until they accept.
    me = {"id": client.id, "name": client.user["name"], "email": client.user["email"]}
    typed = {"id": None, "name": None, "email": client.user["email"]}
    invited = await invite_client(api, pro, client.user["email"])
    assert invited["client"] == typed
    await client_s.wait_count(1)
    rejected = await answer_connection(api, client, invited["id"], "reject")
    assert rejected["client"] == me
    await pro_s.wait_count(1)
    # Invited again, accepted by the client, then removed by the client: the professional
    # (the initiator, then the other party) is told both.
    again = await invite_client(api, pro, client.user["email"])
    await client_s.wait_count(2)
    accepted = await answer_connection(api, client, again["id"], "accept")
    await pro_s.wait_count(2)
    await remove_connection(api, client, again["id"])
    removed = next(c for c in await connections_of(api, pro, "removed") if c["id"] == again["id"])

    await settle_and_check(
        api,
        {
            client_s: (
                client,
                [
                    ("connection.invited", {"connection": {**invited, "client": me}}),
                    ("connection.invited", {"connection": {**again, "client": me}}),
                ],
            ),
            pro_s: (
                pro,
                [
                    ("connection.rejected", {"connection": {**rejected, "client": typed}}),
                    ("connection.accepted", {"connection": accepted}),
                    ("connection.removed", {"connection": removed}),
                ],
            ),
            other: (bystander, []),
        },
    )


async def test_email_invitation_notifies_once_the_client_verifies(
    api: Api, stack: Stack, sockets: Sockets
) -> None:
    pro, bystander = await asyncio.gather(api.signup("professional"), api.signup("client"))
    url = stack.gateway_url
    pro_s = await sockets.open(url, pro, label="pro")
    other = await sockets.open(url, bystander, label="bystander")
    email = unique_email("invitee")
    invited = await invite_client(api, pro, email)
    assert invited["client"] == {"id": None, "name": None, "email": email}

    newcomer = await api.signup("client", email=email, verified=False)
    # Signed up but not verified: nothing yet, whoever signed up with the address.
    fresh = await sockets.open(url, newcomer, since="0", label="newcomer")
    await asyncio.sleep(0.3)
    assert fresh.messages == [] and await connections_of(api, newcomer) == []
    # Verified (from the code mailed to the address): bound, and told at once.
    await verify(api, api.inbox, newcomer)
    [message] = await fresh.wait_count(1, within=10)
    [bound] = await connections_of(api, newcomer)
    assert bound["id"] == invited["id"]
    assert bound["client"] == {
        "id": newcomer.id,
        "name": newcomer.user["name"],
        "email": email,
    }
    assert_notification(message, "connection.invited", {"connection": bound})
    wanted = [("connection.invited", {"connection": bound})]
    await settle_and_check(
        api, {fresh: (newcomer, wanted), pro_s: (pro, []), other: (bystander, [])}
    )


async def test_activity_invites_answers_and_cancellation(
    api: Api, stack: Stack, sockets: Sockets
) -> None:
    pro = await api.signup("professional")
    pending, accepting, declining, uninvited = clients = await asyncio.gather(
        *(api.signup("client") for _ in range(4))
    )
    await asyncio.gather(*(connect_pair(api, pro, c) for c in clients))
    url = stack.gateway_url
    pro_s = await sockets.open(url, pro, label="pro")
    socks = {c.id: await sockets.open(url, c, label=f"client{c.id}") for c in clients}
    accepting_b = await sockets.open(url, accepting, how="protocol", label="accepting-2nd")
    before = await marks(api, pro, *clients)

    activity = await create_activity(api, pro, title="Yoga", capacity=5)
    invites = {}
    for client in (pending, accepting, declining):
        invites[client.id] = await invite(api, pro, activity["id"], client)
        await socks[client.id].wait_count(1)
    accepted = await answer_invite(api, accepting, invites[accepting.id]["id"], "accept")
    await pro_s.wait_count(1)
    declined = await answer_invite(api, declining, invites[declining.id]["id"], "decline")
    await pro_s.wait_count(2)

    [listed] = [a for a in await activities_of(api, pro) if a["id"] == activity["id"]]
    assert listed["invites"] == {"pending": 1, "accepted": 1, "declined": 1}
    await delete_activity(api, pro, activity["id"])

    cancelled = ("activity.cancelled", {"activity": {**listed, "status": "cancelled"}})
    accepting_gets = [("activity.invited", {"invite": invites[accepting.id]}), cancelled]
    await settle_and_check(
        api,
        {
            socks[pending.id]: (
                pending,
                [("activity.invited", {"invite": invites[pending.id]}), cancelled],
            ),
            socks[accepting.id]: (accepting, accepting_gets),
            accepting_b: (accepting, accepting_gets),
            # The client who declined is not told of the cancellation.
            socks[declining.id]: (
                declining,
                [("activity.invited", {"invite": invites[declining.id]})],
            ),
            socks[uninvited.id]: (uninvited, []),
            pro_s: (
                pro,
                [
                    ("activity.invite_accepted", {"invite": accepted}),
                    ("activity.invite_declined", {"invite": declined}),
                ],
            ),
        },
        before,
    )


async def test_connection_removal_cancels_pending_invites(
    api: Api, stack: Stack, sockets: Sockets
) -> None:
    pro, client, bystander = await asyncio.gather(
        api.signup("professional"), api.signup("client"), api.signup("client")
    )
    connection_id = await connect_pair(api, pro, client)
    await connect_pair(api, pro, bystander)
    first, second = await asyncio.gather(
        create_activity(api, pro, title="Pending one"),
        create_activity(api, pro, title="Accepted one"),
    )
    waiting = await invite(api, pro, first["id"], client)
    kept = await invite(api, pro, second["id"], client)
    await answer_invite(api, client, kept["id"], "accept")
    await invite(api, pro, first["id"], bystander)  # stays pending: another connection

    url = stack.gateway_url
    pro_s = await sockets.open(url, pro, label="pro")
    client_s = await sockets.open(url, client, label="client")
    other = await sockets.open(url, bystander, label="bystander")
    before = await marks(api, pro, client, bystander)
    await remove_connection(api, pro, connection_id)
    await client_s.wait_count(2)

    [removed] = [c for c in await connections_of(api, client, "removed")]
    listed = {i["id"]: i for i in await activities_of(api, client)}
    assert listed[waiting["id"]]["status"] == "cancelled"
    assert listed[kept["id"]]["status"] == "accepted"
    await settle_and_check(
        api,
        {
            client_s: (
                client,
                [
                    ("connection.removed", {"connection": removed}),
                    ("activity.invite_cancelled", {"invite": listed[waiting["id"]]}),
                ],
            ),
            pro_s: (pro, []),
            other: (bystander, []),
        },
        before,
    )


async def test_changes_in_a_row_arrive_in_order(api: Api, stack: Stack, sockets: Sockets) -> None:
    """A run of changes across both streams: the order of the calls, ids increasing."""
    pro, client = await asyncio.gather(api.signup("professional"), api.signup("client"))
    url = stack.gateway_url
    pro_s = await sockets.open(url, pro, label="pro")
    client_s = await sockets.open(url, client, label="client")
    pro_gets: list[tuple[str, dict[str, Any]]] = []
    client_gets: list[tuple[str, dict[str, Any]]] = []

    first = await request_pro(api, client, pro)
    pro_gets.append(("connection.requested", {"connection": first}))
    rejected = await answer_connection(api, pro, first["id"], "reject")
    client_gets.append(("connection.rejected", {"connection": rejected}))
    second = await request_pro(api, client, pro)
    pro_gets.append(("connection.requested", {"connection": second}))
    accepted = await answer_connection(api, pro, second["id"], "accept")
    client_gets.append(("connection.accepted", {"connection": accepted}))
    activities = [await create_activity(api, pro, title=f"Session {n}") for n in range(4)]
    invites = []
    for activity in activities:
        invites.append(await invite(api, pro, activity["id"], client))
        client_gets.append(("activity.invited", {"invite": invites[-1]}))
    for made, action in zip(invites[:3], ["accept", "decline", "accept"], strict=True):
        answered = await answer_invite(api, client, made["id"], action)
        kind = "activity.invite_accepted" if action == "accept" else "activity.invite_declined"
        pro_gets.append((kind, {"invite": answered}))
    for activity in activities[:2]:
        [listed] = [a for a in await activities_of(api, pro) if a["id"] == activity["id"]]
        await delete_activity(api, pro, activity["id"])
        if activity is activities[0]:  # accepted: told; the second was declined: not told
            client_gets.append(
                ("activity.cancelled", {"activity": {**listed, "status": "cancelled"}})
            )
    await remove_connection(api, pro, second["id"])
    [removed] = await connections_of(api, client, "removed")
    client_gets.append(("connection.removed", {"connection": removed}))
    pending_invite = next(
        i for i in await activities_of(api, client) if i["id"] == invites[3]["id"]
    )
    client_gets.append(("activity.invite_cancelled", {"invite": pending_invite}))

    await settle_and_check(api, {pro_s: (pro, pro_gets), client_s: (client, client_gets)})
