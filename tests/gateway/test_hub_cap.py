"""The hub's per-user cap in-process: the oldest socket goes, with 4008, and out of the
fan-out at once; one not yet upgraded is closed by its handler once it is."""

from __future__ import annotations

import asyncio

from gateway.hub import CLOSE_TOO_MANY, Conn, Hub
from services.common.tokens import Identity


class FakeSocket:
    """Stands in for the WebSocket: whether it was upgraded, and how it was closed."""

    def __init__(self, *, prepared: bool = True) -> None:
        self.prepared = prepared
        self.closed = False
        self.close_code: int | None = None

    async def close(self, *, code: int, message: bytes) -> None:
        self.closed = True
        self.close_code = code


def conn(hub: Hub, user_id: int, *, prepared: bool = True) -> Conn:
    identity = Identity(user_id, "client", "jti", "sid", 0)
    return Conn(FakeSocket(prepared=prepared), identity, hub)  # type: ignore[arg-type]


async def settle(hub: Hub) -> None:
    if hub.closing:
        await asyncio.gather(*hub.closing)


async def test_the_oldest_of_a_users_sockets_goes_past_the_cap() -> None:
    hub = Hub(None, max_per_user=3)  # type: ignore[arg-type]  # no Redis needed here
    mine = [conn(hub, 1) for _ in range(5)]
    theirs = [conn(hub, 2) for _ in range(3)]
    for c in [*mine[:3], *theirs, *mine[3:]]:
        hub.add(c)
    await settle(hub)
    assert [c.ws.close_code for c in mine] == [CLOSE_TOO_MANY, CLOSE_TOO_MANY, None, None, None]
    assert list(hub.by_user[1]) == mine[2:]  # the evicted get no more notifications
    assert not any(c.ws.closed for c in theirs)
    assert hub.count() == 6
    hub.discard(mine[0])  # its handler ending later changes nothing
    assert list(hub.by_user[1]) == mine[2:]


async def test_a_socket_evicted_before_its_upgrade_is_closed_after_it() -> None:
    hub = Hub(None, max_per_user=1)  # type: ignore[arg-type]
    first, second = conn(hub, 1, prepared=False), conn(hub, 1)
    hub.add(first)
    hub.add(second)
    await settle(hub)
    assert not first.ws.closed  # no close frame before the 101...
    assert first.deferred_close == (CLOSE_TOO_MANY, "too many sockets")  # ...the handler's
    assert list(hub.by_user[1]) == [second]


async def test_no_cap_without_a_limit() -> None:
    hub = Hub(None)  # type: ignore[arg-type]
    many = [conn(hub, 1) for _ in range(50)]
    for c in many:
        hub.add(c)
    await settle(hub)
    assert not any(c.ws.closed for c in many)
