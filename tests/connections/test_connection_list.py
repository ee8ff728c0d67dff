"""GET /api/connection/list: each side's connections, newest first, status filter, paging."""

from __future__ import annotations

from typing import Any

from ..api import Account, Api, assert_problem
from .conn_support import answered, ids, invited, listing, party, removed, requested

STATUSES = ["pending", "accepted", "rejected", "removed"]


async def one_of_each(
    api: Api, client: Account
) -> tuple[dict[str, dict[str, Any]], dict[str, Account]]:
    """Four connections of `client`, one per status, each with a new professional."""
    pros = [await api.signup("professional") for _ in STATUSES]
    made = {s: await requested(api, client, p) for s, p in zip(STATUSES, pros, strict=True)}
    made["accepted"] = await answered(api, pros[1], made["accepted"]["id"], "accept")
    made["rejected"] = await answered(api, pros[2], made["rejected"]["id"], "reject")
    await answered(api, pros[3], made["removed"]["id"], "accept")
    await removed(api, client, made["removed"]["id"])
    return made, dict(zip(STATUSES, pros, strict=True))


async def test_list_is_empty_for_a_new_user(api: Api) -> None:
    for role in ("client", "professional"):
        account = await api.signup(role)
        assert await listing(api, account) == []
        for status in STATUSES:
            assert await listing(api, account, f"?status={status}") == []


async def test_each_side_sees_its_connections_newest_first(api: Api) -> None:
    client = await api.signup("client")
    pros = [await api.signup("professional") for _ in range(3)]
    made = [await requested(api, client, p) for p in pros]
    mine = await listing(api, client)
    assert mine == list(reversed(made))
    for pro, connection in zip(pros, made, strict=True):
        assert await listing(api, pro) == [connection]

    pro = pros[0]
    clients = [await api.signup("client") for _ in range(2)]
    offered = [await invited(api, pro, c) for c in clients]
    assert await listing(api, pro) == [*reversed(offered), made[0]]
    for c, connection in zip(clients, offered, strict=True):
        # The professional's answer showed only the address typed; the client sees themself.
        assert await listing(api, c) == [{**connection, "client": party(c)}]


async def test_list_leaves_removed_out_unless_asked(api: Api) -> None:
    client = await api.signup("client")
    made, _ = await one_of_each(api, client)
    shown = await listing(api, client)
    assert ids(shown) == [made["rejected"]["id"], made["accepted"]["id"], made["pending"]["id"]]
    assert [c["status"] for c in shown] == ["rejected", "accepted", "pending"]
    assert made["removed"]["id"] not in ids(shown)


async def test_list_status_filter(api: Api) -> None:
    client = await api.signup("client")
    made, pros = await one_of_each(api, client)
    for status in STATUSES:
        (only,) = await listing(api, client, f"?status={status}")
        assert only["id"] == made[status]["id"]
        assert only["status"] == status
        # The professional's side of the same connection, with every filter.
        for other in STATUSES:
            theirs = await listing(api, pros[status], f"?status={other}")
            assert theirs == ([only] if other == status else [])


async def test_list_status_filter_on_the_professional_side(api: Api) -> None:
    pro = await api.signup("professional")
    clients = [await api.signup("client") for _ in STATUSES]
    made = {s: await invited(api, pro, c) for s, c in zip(STATUSES, clients, strict=True)}
    await answered(api, clients[1], made["accepted"]["id"], "accept")
    await answered(api, clients[2], made["rejected"]["id"], "reject")
    await removed(api, pro, made["removed"]["id"])
    for status in STATUSES:
        (only,) = await listing(api, pro, f"?status={status}")
        assert (only["id"], only["status"]) == (made[status]["id"], status)
    assert ids(await listing(api, pro)) == [
        made["rejected"]["id"],
        made["accepted"]["id"],
        made["pending"]["id"],
    ]


BAD_STATUS_QUERIES = [
    "?status=",
    "?status=PENDING",
    "?status=declined",
    "?status=open",
    "?status=pending,accepted",
]


async def test_list_bad_status(api: Api) -> None:
    client = await api.signup("client")
    for query in BAD_STATUS_QUERIES:
        reply = await api.call("GET", f"/api/connection/list{query}", token=client.token)
        assert_problem(reply, 400, "invalid_query")
        assert "status" in {e["field"] for e in reply.body["errors"]}, query


async def test_list_pagination(api: Api) -> None:
    client = await api.signup("client")
    pros = [await api.signup("professional") for _ in range(5)]
    made = [await requested(api, client, p) for p in pros]
    newest_first = list(reversed(ids(made)))
    assert ids(await listing(api, client)) == newest_first
    assert ids(await listing(api, client, "?limit=2")) == newest_first[:2]
    assert ids(await listing(api, client, "?limit=2&offset=2")) == newest_first[2:4]
    assert ids(await listing(api, client, "?limit=2&offset=4")) == newest_first[4:]
    assert ids(await listing(api, client, "?offset=3")) == newest_first[3:]
    assert ids(await listing(api, client, "?offset=5")) == []
    assert ids(await listing(api, client, "?offset=1000000")) == []
    assert ids(await listing(api, client, "?limit=1")) == newest_first[:1]
    assert ids(await listing(api, client, "?limit=200")) == newest_first
    assert ids(await listing(api, client, "?status=pending&limit=3&offset=1")) == newest_first[1:4]


BAD_PAGING_QUERIES = [
    "?limit=0",
    "?limit=201",
    "?limit=-1",
    "?limit=abc",
    "?limit=",
    "?limit=1.5",
    "?offset=-1",
    "?offset=abc",
    "?offset=1.5",
    "?limit=99999999999999999999",
    "?status=pending&limit=0",
]


async def test_list_bad_paging(api: Api) -> None:
    client = await api.signup("client")
    for query in BAD_PAGING_QUERIES:
        reply = await api.call("GET", f"/api/connection/list{query}", token=client.token)
        assert_problem(reply, 400, "invalid_query")
        assert reply.body["errors"], query


async def test_list_needs_a_token(api: Api) -> None:
    for token in (None, "garbage"):
        assert_problem(await api.call("GET", "/api/connection/list", token=token), 401)


async def test_list_never_shows_other_peoples_connections(api: Api) -> None:
    client, pro = await api.signup("client"), await api.signup("professional")
    other_client, other_pro = await api.signup("client"), await api.signup("professional")
    await requested(api, client, pro)
    offered = await invited(api, pro, other_client)
    await answered(api, other_client, offered["id"], "accept")
    mine = await listing(api, client)
    assert [c["professional"]["id"] for c in mine] == [pro.id]
    assert {c["client"]["id"] for c in await listing(api, pro)} == {client.id, other_client.id}
    assert [c["professional"]["id"] for c in await listing(api, other_client)] == [pro.id]
    for status in ("", *(f"?status={s}" for s in STATUSES)):
        assert await listing(api, other_pro, status) == []
