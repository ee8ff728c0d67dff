"""At most GATEWAY_MAX_SOCKETS_PER_USER (20) open sockets per user on a gateway: a new one
closes that user's oldest with 4008; the others, and other users' sockets, stay open."""

from __future__ import annotations

import asyncio

from ..api import Api
from ..stack import Stack
from .live_support import SETTLE, Sockets, request_pro

CAP = 20  # the default


async def test_the_oldest_socket_is_closed_with_4008_past_the_cap(
    api: Api, stack: Stack, sockets: Sockets
) -> None:
    pro, client, other = await asyncio.gather(
        api.signup("professional"), api.signup("client"), api.signup("professional")
    )
    others = [await sockets.open(stack.gateway_url, other, label=f"other{n}") for n in range(3)]
    mine = [await sockets.open(stack.gateway_url, pro, label=f"pro{n}") for n in range(CAP)]
    await asyncio.sleep(SETTLE)
    assert not any(s.closed for s in mine + others)
    newest = await sockets.open(stack.gateway_url, pro, how="protocol", label="pro-new")
    assert await mine[0].wait_closed(within=5) == 4008
    second = await sockets.open(stack.gateway_url, pro, how="query", label="pro-newer")
    assert await mine[1].wait_closed(within=5) == 4008
    await asyncio.sleep(SETTLE)
    open_now = [*mine[2:], newest, second]
    assert len(open_now) == CAP
    assert not any(s.closed for s in open_now + others)
    # Every socket still open gets the next notification, once.
    asked = await request_pro(api, client, pro)
    for sock in open_now:
        [message] = await sock.wait_count(1)
        assert message["data"]["connection"]["id"] == asked["id"], sock.label
    assert all(not s.messages for s in mine[:2])
