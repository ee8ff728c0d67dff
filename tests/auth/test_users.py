"""GET /api/users: who sees whom, the role filter, pagination, order, and the trailing slash."""

from __future__ import annotations

import asyncio

import pytest

from ..api import Account, Api, assert_problem
from .auth_support import USER_KEYS, assert_validation, gather_limited


async def users(api: Api, account: Account, query: str = "", path: str = "/api/users") -> list:
    reply = await api.call("GET", f"{path}{query}", token=account.token)
    assert reply.status == 200, reply.text
    assert isinstance(reply.body, list)
    for user in reply.body:
        assert set(user) == USER_KEYS, user
    return reply.body


def ids(items: list) -> list[int]:
    return [u["id"] for u in items]


async def clients_seen_by(api: Api, pro: Account, expected: list, within: float = 2.0) -> list:
    """`?role=client` as seen by `pro`, polled until it equals `expected` or time runs out.

    Auth learns about connections from events relayed a few milliseconds after the
    connections call returns, so a change may take that long to show in the directory.
    """
    deadline = asyncio.get_running_loop().time() + within
    while True:
        seen = await users(api, pro, "?role=client")
        if seen == expected or asyncio.get_running_loop().time() > deadline:
            return seen
        await asyncio.sleep(0.02)


async def test_users_needs_a_token(api: Api, auth_api: Api) -> None:
    for target in (api, auth_api):
        for path in ("/api/users", "/api/users/", "/api/users?role=client"):
            assert_problem(await target.call("GET", path), 401)
        assert_problem(await target.call("GET", "/api/users", token="garbage"), 401)


async def test_client_sees_professionals_and_themself_only(api: Api) -> None:
    me, other_a, other_b = [await api.signup("client") for _ in range(3)]
    pro_a, pro_b = await api.signup("professional"), await api.signup("professional")
    listed = await users(api, me, "?limit=200")
    assert me.user in listed
    assert pro_a.user in listed and pro_b.user in listed
    assert other_a.id not in ids(listed) and other_b.id not in ids(listed)
    clients = [u for u in listed if u["role"] == "client"]
    assert clients == [me.user]


async def test_professional_sees_professionals_and_themself_but_no_clients(api: Api) -> None:
    client = await api.signup("client")
    pro, other_pro = await api.signup("professional"), await api.signup("professional")
    listed = await users(api, pro, "?limit=200")
    assert pro.user in listed and other_pro.user in listed
    assert client.id not in ids(listed)
    assert all(u["role"] == "professional" for u in listed)


async def test_role_filter_for_a_client(api: Api) -> None:
    me = await api.signup("client")
    await api.signup("client")
    pro = await api.signup("professional")
    professionals = await users(api, me, "?role=professional&limit=200")
    assert professionals and all(u["role"] == "professional" for u in professionals)
    assert pro.user in professionals and me.id not in ids(professionals)
    assert await users(api, me, "?role=client&limit=200") == [me.user]


async def test_role_filter_for_a_professional(api: Api) -> None:
    pro = await api.signup("professional")
    await api.signup("client")
    professionals = await users(api, pro, "?role=professional&limit=200")
    assert pro.user in professionals
    assert all(u["role"] == "professional" for u in professionals)
    assert await users(api, pro, "?role=client&limit=200") == []


async def test_accepted_connection_makes_a_client_visible_to_that_professional(
    api: Api,
) -> None:
    client, stranger = await api.signup("client"), await api.signup("client")
    pro, other_pro = await api.signup("professional"), await api.signup("professional")
    asked = await api.call(
        "POST", "/api/connection/request-pro", token=client.token, json={"professional_id": pro.id}
    )
    assert asked.status == 201, asked.text
    # Pending is not enough.
    assert await users(api, pro, "?role=client") == []
    answered = await api.call(
        "POST",
        "/api/connection/respond",
        token=pro.token,
        json={"connection_id": asked.body["id"], "action": "accept"},
    )
    assert answered.status == 200, answered.text
    assert await clients_seen_by(api, pro, [client.user]) == [client.user]
    assert client.user in await users(api, pro, "?limit=200")
    # Nobody else gains anything: not the other professional, not another client.
    assert await users(api, other_pro, "?role=client") == []
    assert await users(api, stranger, "?role=client") == [stranger.user]
    assert await users(api, client, "?role=client") == [client.user]
    removed = await api.call("DELETE", f"/api/connection/{asked.body['id']}", token=client.token)
    assert removed.status == 204, removed.text
    assert await clients_seen_by(api, pro, []) == []


@pytest.mark.parametrize("role", ["bad", "", "Professional", "CLIENT", "admin", "client,x"])
async def test_bad_role_is_400(api: Api, role: str) -> None:
    account = await api.signup()
    reply = await api.call("GET", f"/api/users?role={role}", token=account.token)
    assert_validation(reply, "role", code="invalid_query")


async def test_newest_first(api: Api) -> None:
    me = await api.signup("client")
    first, second = await api.signup("professional"), await api.signup("professional")
    listed = await users(api, me, "?limit=200")
    order = ids(listed)
    assert order == sorted(order, reverse=True)
    assert len(set(order)) == len(order)
    assert order[:3] == [second.id, first.id, me.id]


async def test_default_limit_is_50_and_max_is_200(api: Api) -> None:
    viewer = await api.signup("client")
    visible = await users(api, viewer, "?limit=200")
    missing = 51 - len(visible)
    if missing > 0:
        await gather_limited(api.signup("professional") for _ in range(missing))
        visible = await users(api, viewer, "?limit=200")
    assert len(visible) > 50
    default = await users(api, viewer)
    assert len(default) == 50
    assert default == visible[:50]
    assert len(await users(api, viewer, "?limit=200")) == min(len(visible), 200)
    assert len(await users(api, viewer, "?limit=1")) == 1


async def test_offset_pages_through_the_same_order(api: Api) -> None:
    viewer = await api.signup("client")
    await gather_limited(api.signup("professional") for _ in range(4))
    full = await users(api, viewer, "?limit=200")
    assert len(full) >= 5
    size = 2
    paged: list = []
    for offset in range(0, 6, size):
        paged += await users(api, viewer, f"?limit={size}&offset={offset}")
    assert paged == full[:6]
    # Past the end is empty (the session's stack may hold more than one page of users).
    total = 0
    while len(page := await users(api, viewer, f"?offset={total}&limit=200")) == 200:
        total += 200
    total += len(page)
    assert await users(api, viewer, f"?offset={total}&limit=200") == []
    assert await users(api, viewer, "?offset=1000000000") == []
    assert await users(api, viewer, "?offset=0&limit=200") == full


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=201",
        "limit=-1",
        "limit=abc",
        "limit=1.5",
        "limit=",
        "limit=1e2",
        "limit=%205",
        "limit=99999999999999999999",
        "offset=-1",
        "offset=abc",
        "offset=1.5",
        "offset=",
        "offset=1000000001",
        "offset=99999999999999999999",
    ],
)
async def test_bad_pagination_is_400(api: Api, query: str) -> None:
    account = await api.signup()
    reply = await api.call("GET", f"/api/users?{query}", token=account.token)
    assert_validation(reply, query.split("=")[0], code="invalid_query")


async def test_pagination_bounds_are_accepted(api: Api) -> None:
    account = await api.signup()
    for query in ("limit=1", "limit=200", "offset=0", "limit=200&offset=0"):
        await users(api, account, f"?{query}")


@pytest.mark.parametrize("query", ["", "?role=professional", "?role=client", "?limit=3&offset=1"])
async def test_trailing_slash_is_the_same_route(api: Api, query: str) -> None:
    account = await api.signup("client")
    plain = await users(api, account, query)
    slashed = await users(api, account, query, path="/api/users/")
    assert slashed == plain


async def test_directly_at_auth_is_the_same(api: Api, auth_api: Api) -> None:
    account = await api.signup("professional")
    assert await users(auth_api, account, "?limit=20") == await users(api, account, "?limit=20")
