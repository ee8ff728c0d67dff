"""Concurrent calls on one pair: the database lets exactly one open connection through."""

from __future__ import annotations

import asyncio
from typing import Any

from ..api import Api, assert_problem, unique_email
from .conn_support import invite_client, listing, remove, request_pro, requested, respond

N = 10


def split(replies: list) -> tuple[list, list]:
    won = [r for r in replies if r.status == 201]
    lost = [r for r in replies if r.status != 201]
    return won, lost


async def test_concurrent_requests_make_one_connection(api: Api) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    replies = await asyncio.gather(*(request_pro(api, client, pro.id) for _ in range(N)))
    won, lost = split(replies)
    assert len(won) == 1, [r.text for r in replies]
    for reply in lost:
        assert_problem(reply, 409, "connection_exists")
    assert await listing(api, pro) == [won[0].body]
    assert await listing(api, client) == [won[0].body]


async def test_concurrent_email_invitations_make_one_connection(api: Api) -> None:
    pro = await api.signup("professional")
    email = unique_email("race")
    spellings = [email if i % 2 else email.upper() for i in range(N)]
    replies = await asyncio.gather(*(invite_client(api, pro, e) for e in spellings))
    won, lost = split(replies)
    assert len(won) == 1, [r.text for r in replies]
    for reply in lost:
        assert_problem(reply, 409, "connection_exists")
    assert await listing(api, pro) == [won[0].body]


async def test_concurrent_request_and_invitation_make_one_connection(api: Api) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    calls = [
        request_pro(api, client, pro.id) if i % 2 else invite_client(api, pro, client.user["email"])
        for i in range(N)
    ]
    won, lost = split(await asyncio.gather(*calls))
    assert len(won) == 1
    for reply in lost:
        assert_problem(reply, 409, "connection_exists")
    assert len(await listing(api, pro)) == 1


async def test_concurrent_answers_apply_once(api: Api) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    created = await requested(api, client, pro)
    actions = ["accept" if i % 2 else "reject" for i in range(N)]
    replies = await asyncio.gather(*(respond(api, pro, created["id"], a) for a in actions))
    ok = [r for r in replies if r.status == 200]
    assert len(ok) == 1, [r.text for r in replies]
    for reply in replies:
        if reply.status != 200:
            assert_problem(reply, 409, "connection_not_pending")
    (final,) = await listing(api, pro, f"?status={ok[0].body['status']}")
    assert final == ok[0].body


async def test_concurrent_removals_apply_once(api: Api) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    created = await requested(api, client, pro)
    replies = await asyncio.gather(
        *(remove(api, client if i % 2 else pro, created["id"]) for i in range(N))
    )
    assert sorted(r.status for r in replies) == [204] + [409] * (N - 1), [r.text for r in replies]
    for reply in replies:
        if reply.status == 409:
            assert_problem(reply, 409, "connection_closed")
    # The pair is free again: exactly one new request goes through.
    again = await asyncio.gather(*(request_pro(api, client, pro.id) for _ in range(N)))
    assert sorted(r.status for r in again) == [201] + [409] * (N - 1)
    assert len(await listing(api, pro)) == 1


async def test_email_invitation_racing_the_sign_up_always_binds(api: Api) -> None:
    """The invite and its addressee's sign-up at (nearly) the same moment, at many offsets:
    the connection is bound to the new client every time, never left unbound."""
    pro = await api.signup("professional")

    async def invite_after(email: str, delay: float) -> Any:
        await asyncio.sleep(delay)
        return await invite_client(api, pro, email)

    for step in range(25):
        email = unique_email("race-bind")
        client, reply = await asyncio.gather(
            api.signup("client", email=email), invite_after(email, step * 0.002)
        )
        assert reply.status == 201, reply.text
        mine = await listing(api, client)
        assert [c["id"] for c in mine] == [reply.body["id"]], (step, reply.body, mine)
        assert mine[0]["client"]["id"] == client.id
