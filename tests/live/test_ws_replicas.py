"""Two gateway replicas: both deliver, either may hold the lease, revocation reaches both."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator

import aiohttp
import pytest
import redis.asyncio as aioredis

from ..api import Api
from .conftest import LiveStack
from .live_support import (
    SETTLE,
    Replica,
    Sockets,
    answer_connection,
    assert_increasing,
    assert_notification,
    connect_pair,
    create_activity,
    full_log,
    invite,
    leader,
    publish,
    request_pro,
    stack_lease,
    synthetic_invite,
    wait_log,
)


@pytest.fixture(scope="module")
def replica(live_stack: LiveStack) -> Iterator[Replica]:
    """Replica B of the extra stack's gateway (A is the stack's own)."""
    second = Replica(live_stack.stack, "b")
    second.start()
    yield second
    second.stop()


@pytest.fixture
def replica_b(replica: Replica, live: LiveStack) -> Replica:
    """Replica B, running (restarted if a previous test killed it)."""
    if replica.proc is None or replica.proc.poll() is not None:
        replica.start()
    return replica


async def test_a_user_on_both_replicas_gets_every_notification(
    live: LiveStack, replica_b: Replica, http: aiohttp.ClientSession, sockets: Sockets
) -> None:
    via_a, via_b = Api(http, live.url, live.stack.inbox), Api(http, replica_b.url)
    pro, client = await asyncio.gather(via_a.signup("professional"), via_b.signup("client"))
    pro_a = await sockets.open(live.url, pro, label="pro@A")
    pro_b = await sockets.open(replica_b.url, pro, label="pro@B")
    client_a = await sockets.open(live.url, client, label="client@A")
    client_b = await sockets.open(replica_b.url, client, how="protocol", label="client@B")

    asked = await request_pro(via_a, client, pro)  # through A
    await answer_connection(via_b, pro, asked["id"], "accept")  # through B
    activity = await create_activity(via_b, pro)
    made = await invite(via_a, pro, activity["id"], client)

    await pro_a.wait_count(1)
    await client_a.wait_count(2)
    await pro_b.wait_count(1)
    await client_b.wait_count(2)
    await asyncio.sleep(SETTLE)
    assert pro_a.messages == pro_b.messages == await full_log(via_b, pro)
    assert client_a.messages == client_b.messages == await full_log(via_a, client)
    assert_notification(pro_a.messages[0], "connection.requested", {"connection": asked})
    assert [m["type"] for m in client_a.messages] == ["connection.accepted", "activity.invited"]
    assert_notification(client_b.messages[1], "activity.invited", {"invite": made})


async def test_the_replica_without_the_lease_delivers(
    live: LiveStack,
    replica_b: Replica,
    http: aiohttp.ClientSession,
    sockets: Sockets,
    live_redis: aioredis.Redis,
) -> None:
    holder = await leader(live_redis)
    assert holder in (stack_lease(live.stack), replica_b.lease), holder
    standby = replica_b.url if holder == stack_lease(live.stack) else live.url
    active = live.url if standby == replica_b.url else replica_b.url
    for url in (standby, active):  # both ready; which one leads is not public
        health = await Api(http, url).call("GET", "/api/health")
        assert health.body == {"status": "ok"}, health.text

    api = Api(http, active)
    pro, client = await asyncio.gather(api.signup("professional"), api.signup("client"))
    sock = await sockets.open(standby, pro, label="pro@standby")
    asked = await request_pro(api, client, pro)
    [message] = await sock.wait_count(1)
    assert_notification(message, "connection.requested", {"connection": asked})


async def test_logout_closes_that_tokens_sockets_on_both_replicas(
    live: LiveStack, replica_b: Replica, http: aiohttp.ClientSession, sockets: Sockets
) -> None:
    api = Api(http, live.url, live.stack.inbox)
    pro = await api.signup("professional")
    login = await api.login(pro.user["email"], pro.password)
    assert login.status == 200, login.text
    other_token = login.body["token"]
    first_a = await sockets.open(live.url, pro, label="session1@A")
    first_b = await sockets.open(replica_b.url, pro, how="protocol", label="session1@B")
    first_b2 = await sockets.open(replica_b.url, pro, how="query", label="session1@B-2")
    second_a = await sockets.open(live.url, other_token, label="session2@A")
    second_b = await sockets.open(replica_b.url, other_token, label="session2@B")

    loop = asyncio.get_running_loop()
    started = loop.time()
    reply = await Api(http, replica_b.url).call(
        "POST", "/api/auth/logout", json={"refresh_token": pro.refresh_token}, token=pro.token
    )
    assert reply.status == 204, reply.text
    for sock in (first_a, first_b, first_b2):
        assert await sock.wait_closed(within=5.5) == 4001, sock.label
        assert sock.closed_at is not None and sock.closed_at - started <= 5.0, sock.label
    # The other session's sockets stay open and keep receiving.
    client = await api.signup("client")
    asked = await request_pro(api, client, pro)
    for sock in (second_a, second_b):
        [message] = await sock.wait_count(1)
        assert not sock.closed, sock.label
        assert_notification(message, "connection.requested", {"connection": asked})


async def test_killing_the_leader_hands_over_without_loss(
    live: LiveStack,
    replica_b: Replica,
    http: aiohttp.ClientSession,
    sockets: Sockets,
    live_redis: aioredis.Redis,
) -> None:
    holder = await leader(live_redis)
    a_leads = holder == stack_lease(live.stack)
    survivor_url = replica_b.url if a_leads else live.url
    survivor_lease = replica_b.lease if a_leads else stack_lease(live.stack)
    api = Api(http, survivor_url)
    pro, client = await asyncio.gather(api.signup("professional"), api.signup("client"))
    await connect_pair(api, pro, client)
    activities = [await create_activity(api, pro, title=f"T{n}") for n in range(3)]
    start = len(await full_log(api, client))
    sock = await sockets.open(survivor_url, client, label="client@survivor")

    # A burst the leader is busy with when it dies.
    await publish(live_redis, [synthetic_invite([client.id], n) for n in range(300)])
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    killed_at = loop.time()
    if a_leads:
        live.stack.procs["gateway"].send_signal(signal.SIGKILL)
        live.stack.procs["gateway"].wait(5)
    else:
        replica_b.signal(signal.SIGKILL)
        replica_b.wait_exit(5)
    # Changes made while nobody holds the lease.
    made = [await invite(api, pro, a["id"], client) for a in activities]

    async def taken_over() -> bool:
        return await leader(live_redis) == survivor_lease

    while not await taken_over():
        assert loop.time() - killed_at < 15, "no replica took the lease over"
        await asyncio.sleep(0.1)
    await sock.wait_count(303, within=15)
    await asyncio.sleep(SETTLE)
    assert len(sock.messages) == 303
    synthetic = [
        m for m in sock.messages if m["data"]["invite"]["activity"]["title"] == "Synthetic"
    ]
    assert [m["data"]["invite"]["id"] for m in synthetic] == list(range(300))
    real = [m for m in sock.messages if m not in synthetic]
    for message, invited in zip(real, made, strict=True):
        assert_notification(message, "activity.invited", {"invite": invited})
    assert_increasing(sock.messages)
    log = await wait_log(api, client, start + 303)
    assert log[start:] == sock.messages
