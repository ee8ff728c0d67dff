"""GET /api/users follows connections at once: accepted clients only, gone once removed."""

from __future__ import annotations

from typing import Any

from ..api import Account, Api, unique_email
from .conn_support import answered, invite_client, invited, listing, removed, requested

USER_KEYS = {"id", "name", "email", "role", "created_at", "email_verified", "mfa_enabled"}


async def users(api: Api, account: Account, query: str = "") -> list[dict[str, Any]]:
    reply = await api.call("GET", f"/api/users{query}", token=account.token)
    assert reply.status == 200, reply.text
    for user in reply.body:
        assert set(user) == USER_KEYS, user
    return reply.body


async def client_ids_seen_by(api: Api, account: Account) -> set[int]:
    """Every client `account` can see, with and without the role filter."""
    filtered = {u["id"] for u in await users(api, account, "?role=client&limit=200")}
    unfiltered = {u["id"] for u in await users(api, account, "?limit=200") if u["role"] == "client"}
    assert filtered == unfiltered
    return filtered


async def test_client_visible_to_the_professional_only_while_accepted(api: Api) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    assert client.id not in await client_ids_seen_by(api, pro)
    created = await requested(api, client, pro)
    assert client.id not in await client_ids_seen_by(api, pro)  # pending
    await answered(api, pro, created["id"], "accept")
    # Right after the accept, no wait.
    assert await client_ids_seen_by(api, pro) == {client.id}
    assert client.user in await users(api, pro, "?role=client")
    await removed(api, client, created["id"])
    assert await client_ids_seen_by(api, pro) == set()


async def test_client_disappears_when_the_professional_removes(api: Api) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    created = await invited(api, pro, client)
    await answered(api, client, created["id"], "accept")
    assert await client_ids_seen_by(api, pro) == {client.id}
    await removed(api, pro, created["id"])
    assert await client_ids_seen_by(api, pro) == set()


async def test_rejected_client_stays_invisible(api: Api) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    created = await requested(api, client, pro)
    await answered(api, pro, created["id"], "reject")
    assert await client_ids_seen_by(api, pro) == set()
    again = await requested(api, client, pro)
    await answered(api, pro, again["id"], "accept")
    assert await client_ids_seen_by(api, pro) == {client.id}


async def test_email_invited_client_visible_once_they_accept(api: Api) -> None:
    pro = await api.signup("professional")
    email = unique_email("visible-later")
    created = (await invite_client(api, pro, email)).body
    client = await api.signup("client", email=email)
    assert client.id not in await client_ids_seen_by(api, pro)
    await answered(api, client, created["id"], "accept")
    assert await client_ids_seen_by(api, pro) == {client.id}


async def test_only_the_connected_professional_sees_the_client(api: Api) -> None:
    client, pro, other_pro = (
        await api.signup("client"),
        await api.signup("professional"),
        await api.signup("professional"),
    )
    created = await requested(api, client, pro)
    await answered(api, pro, created["id"], "accept")
    assert await client_ids_seen_by(api, pro) == {client.id}
    assert client.id not in await client_ids_seen_by(api, other_pro)


async def test_client_never_sees_other_clients(api: Api) -> None:
    pro = await api.signup("professional")
    first, second = await api.signup("client"), await api.signup("client")
    for client in (first, second):
        created = await requested(api, client, pro)
        await answered(api, pro, created["id"], "accept")
    assert await client_ids_seen_by(api, pro) == {first.id, second.id}
    for client in (first, second):
        assert await client_ids_seen_by(api, client) == {client.id}
        assert await users(api, client, "?role=client") == [client.user]


async def test_professionals_visible_to_everyone(api: Api) -> None:
    pro = await api.signup("professional")
    connected, stranger, other_pro = (
        await api.signup("client"),
        await api.signup("client"),
        await api.signup("professional"),
    )
    created = await requested(api, connected, pro)
    for phase in ("pending", "accepted", "removed"):
        if phase == "accepted":
            await answered(api, pro, created["id"], "accept")
        elif phase == "removed":
            await removed(api, connected, created["id"])
        for viewer in (connected, stranger, other_pro, pro):
            listed = await users(api, viewer, "?role=professional&limit=200")
            assert pro.user in listed, (phase, viewer.id)
            assert all(u["role"] == "professional" for u in listed)
    assert await listing(api, pro) == []
