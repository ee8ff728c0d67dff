"""invite-client is no lookup oracle, and email invitations bind only to verified addresses.

- The same answer (status, fields, their order) for an address with no account, with an
  unverified account and with a verified client's; the client shown only as the address
  typed until they accept, in the answer, the list and every notification.
- The squatting attack: someone signs up with an invited address and never verifies it: they
  never see or answer the invitation; once the address is verified it binds, and
  `connection.invited` reaches its owner's socket then.
- The invitation mail to an address with no account: who invites, and a sign-up link.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import uuid

import aiohttp

from ..api import Account, Api, assert_problem, unique_email
from ..live.live_support import Sockets, wait_log
from ..mailbox import Inbox, link_value, text_of, verify
from .conn_support import (
    answered,
    invite_client,
    listing,
    masked,
    party,
    remove,
    respond,
)


def unbound(email: str) -> dict:
    return {"id": None, "name": None, "email": email}


def shape(body: dict) -> list:
    """Every key, in order, and every value except the ids and times that differ."""
    return [
        (k, v if k not in ("id", "created_at", "updated_at") else type(v).__name__)
        for k, v in body.items()
    ]


async def raw_invite(http: aiohttp.ClientSession, api: Api, pro: Account, email: str) -> tuple:
    """Status, headers that matter, and the body's raw text of an invitation."""
    started = time.perf_counter()
    async with http.post(
        api.base + "/api/connection/invite-client",
        json={"client_email": email},
        headers={"Authorization": f"Bearer {pro.token}"},
    ) as resp:
        text = await resp.text()
        return resp.status, resp.headers["Content-Type"], text, time.perf_counter() - started


async def test_the_three_kinds_of_address_get_the_same_answer(
    api: Api, http: aiohttp.ClientSession
) -> None:
    pro = await api.signup("professional")
    nobody = unique_email("nobody")
    unverified = await api.signup("client", verified=False)
    verified = await api.signup("client")
    answers = {}
    for label, email in (
        ("none", nobody),
        ("unverified", unverified.user["email"]),
        ("verified", verified.user["email"]),
    ):
        status, content_type, text, _ = await raw_invite(http, api, pro, email.upper())
        body = json.loads(text)
        assert status == 201 and content_type == "application/json", text
        assert body["client"] == unbound(email.lower())
        assert body["professional"] == party(pro)
        answers[label] = (status, content_type, shape(body), list(body["client"]))
    assert answers["none"][:2] == answers["unverified"][:2] == answers["verified"][:2]
    # Field order and every value apart from the connection's own id and times.
    differ = [dict(a[2]) for a in answers.values()]
    for d in differ:
        d.pop("client")
    assert differ[0] == differ[1] == differ[2]
    assert [k for k, _ in answers["none"][2]] == [k for k, _ in answers["verified"][2]]
    assert answers["none"][3] == answers["unverified"][3] == answers["verified"][3]
    # The professional's list shows all three alike.
    listed = await listing(api, pro)
    assert [c["client"] for c in listed] == [
        unbound(verified.user["email"]),
        unbound(unverified.user["email"]),
        unbound(nobody),
    ]


async def test_the_three_kinds_of_address_take_similar_time(
    api: Api, http: aiohttp.ClientSession
) -> None:
    pro = await api.signup("professional")
    unverified = [await api.signup("client", verified=False) for _ in range(5)]
    verified = [await api.signup("client") for _ in range(5)]
    times: dict[str, list[float]] = {"none": [], "unverified": [], "verified": []}
    for i in range(5):  # interleaved, so load changes hit every kind alike
        for label, email in (
            ("none", unique_email("nobody")),
            ("unverified", unverified[i].user["email"]),
            ("verified", verified[i].user["email"]),
        ):
            status, *_, took = await raw_invite(http, api, pro, email)
            assert status == 201
            times[label].append(took)
    medians = {k: sorted(v)[2] for k, v in times.items()}
    fastest = min(medians.values())
    assert max(medians.values()) - fastest < 0.05 + 0.5 * fastest, medians


async def test_a_professionals_address_is_still_not_a_client(api: Api) -> None:
    pro, other = await api.signup("professional"), await api.signup("professional")
    assert_problem(await invite_client(api, pro, other.user["email"]), 400, "not_a_client")


async def test_the_squatter_never_sees_the_invitation_the_owner_does(
    api: Api, inbox: Inbox, http: aiohttp.ClientSession
) -> None:
    pro = await api.signup("professional")
    email = unique_email("alice")
    created = (await invite_client(api, pro, email)).body
    # Someone signs up with the invited address and does not (cannot) verify it.
    squatter = await api.signup("client", email=email, verified=False)
    sockets = Sockets(http)
    try:
        sock = await sockets.open(api.base, squatter)
        await asyncio.sleep(0.5)
        assert await listing(api, squatter) == []
        assert await listing(api, squatter, "?status=removed") == []
        for action in ("accept", "reject"):
            reply = await respond(api, squatter, created["id"], action)
            assert_problem(reply, 404, "connection_not_found")
        assert_problem(await remove(api, squatter, created["id"]), 404, "connection_not_found")
        assert sock.messages == []
        log = await api.call("GET", "/api/notifications", token=squatter.token)
        assert log.body == []
        (theirs,) = await listing(api, pro)
        assert theirs["client"] == unbound(email)
        # The owner of the address verifies it (from the mail only they receive): the
        # invitation binds, and `connection.invited` reaches their open socket now.
        await verify(api, inbox, squatter)
        (message,) = await sock.wait_count(1, within=5)
    finally:
        await sockets.close_all()
    assert message["type"] == "connection.invited"
    assert message["data"]["connection"]["id"] == created["id"]
    assert message["data"]["connection"]["client"] == party(squatter)
    (mine,) = await listing(api, squatter)
    assert mine["id"] == created["id"]
    accepted = await answered(api, squatter, created["id"], "accept")
    # Accepted: now the professional sees who the client is.
    (theirs,) = await listing(api, pro, "?status=accepted")
    assert theirs == accepted and theirs["client"] == party(squatter)


async def test_an_invitation_to_an_unverified_account_binds_when_it_verifies(
    api: Api, inbox: Inbox
) -> None:
    pro = await api.signup("professional")
    client = await api.signup("client", verified=False)
    created = (await invite_client(api, pro, client.user["email"])).body
    assert await listing(api, client) == []
    await verify(api, inbox, client)
    (mine,) = await listing(api, client)  # at once after the verification returned
    assert mine["id"] == created["id"] and mine["client"] == party(client)
    notified = await wait_log(api, client, 1)
    assert [n["type"] for n in notified] == ["connection.invited"]


async def test_every_notification_to_the_professional_shows_only_the_address(
    api: Api,
) -> None:
    pro = await api.signup("professional")
    rejecting, removing = await api.signup("client"), await api.signup("client")
    first = (await invite_client(api, pro, rejecting.user["email"])).body
    second = (await invite_client(api, pro, removing.user["email"])).body
    rejected = await answered(api, rejecting, first["id"], "reject")
    assert rejected["client"] == party(rejecting)  # the client sees themself
    assert (await remove(api, removing, second["id"])).status == 204
    log = await wait_log(api, pro, 2)
    by_type = {n["type"]: n["data"]["connection"] for n in log}
    assert by_type["connection.rejected"] == masked(rejected)
    assert by_type["connection.removed"]["client"] == unbound(removing.user["email"])
    assert by_type["connection.removed"]["status"] == "removed"
    # And in the list, removed ones included.
    listed = await listing(api, pro, "?status=rejected") + await listing(
        api, pro, "?status=removed"
    )
    assert {c["client"]["id"] for c in listed} == {None}


async def test_an_accepted_invitation_reveals_the_client_for_good(api: Api) -> None:
    pro, client = await api.signup("professional"), await api.signup("client")
    created = (await invite_client(api, pro, client.user["email"])).body
    await answered(api, client, created["id"], "accept")
    (note,) = await wait_log(api, pro, 1)
    assert note["type"] == "connection.accepted"
    assert note["data"]["connection"]["client"] == party(client)
    assert (await remove(api, client, created["id"])).status == 204
    (removed,) = await listing(api, pro, "?status=removed")
    assert removed["client"] == party(client)
    log = await wait_log(api, pro, 2)
    assert log[-1]["data"]["connection"]["client"] == party(client)


async def test_an_address_with_no_account_gets_an_invitation_mail(api: Api, inbox: Inbox) -> None:
    pro = await api.signup("professional", name="Dr Ada Lovelace")
    email = "new+patient." + unique_email("x")
    assert (await invite_client(api, pro, email.upper())).status == 201
    message = await inbox.latest(email)
    assert "Dr Ada Lovelace" in message["Subject"]
    text = text_of(message)
    assert "Dr Ada Lovelace" in text and pro.user["email"] in text
    # The sign-up link names the address (URL-encoded), in a fragment.
    assert f"http://hc.test.example/#signup={urllib.parse.quote(email, safe='')}" in text
    assert link_value(message, "signup") == email
    # The newcomer follows it, signs up and verifies: the invitation is theirs.
    client = await api.signup("client", email=email)
    (mine,) = await listing(api, client)
    assert mine["professional"] == party(pro)


async def test_no_invitation_mail_for_an_address_with_an_account(api: Api, inbox: Inbox) -> None:
    pro = await api.signup("professional")
    client = await api.signup("client")
    before = len(inbox.messages(client.user["email"]))
    assert (await invite_client(api, pro, client.user["email"])).status == 201
    await asyncio.sleep(0.5)
    assert len(inbox.messages(client.user["email"])) == before


def longest_address(tag: str) -> str:
    """A valid address of 254 characters, the longest accepted."""
    local = (tag + "a" * 64)[:64]
    domain = "b" * 63 + "." + "c" * 63 + "." + "d" * 57 + ".com"
    address = f"{local}@{domain}"
    assert len(address) == 254
    return address


async def test_the_longest_name_and_address_fit_the_mail(api: Api, inbox: Inbox) -> None:
    """varchar limits of the mail outbox on PostgreSQL: a 100-character non-ASCII name in
    the subject, a 254-character address."""
    name = "É" * 100
    pro = await api.signup("professional", name=name)
    email = longest_address(uuid.uuid4().hex)
    reply = await invite_client(api, pro, email)
    assert reply.status == 201, reply.text
    message = await inbox.latest(email)
    assert name in message["Subject"]
    client = await api.signup("client", email=email, name=name)
    (mine,) = await listing(api, client)
    assert mine["client"] == party(client)
