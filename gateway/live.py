"""Live notifications: the WebSocket at /api/ws and the same log over REST."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time

from aiohttp import WSMsgType, web

from services.common.consumer import ReadBarrier
from services.common.problems import Problem
from services.common.web import authenticate, bearer_token, page, require_mfa, verify_token

from .hub import CLOSE_REVOKED, SLOW_CLOSE_SECONDS, Conn, Hub, entry_frame
from .notifier import LOG_MAXLEN, log_key
from .proxy import positions_key

hub_key = web.AppKey("hub", Hub)
barrier_key = web.AppKey("notifier_barrier", ReadBarrier)
HEARTBEAT_SECONDS = 20.0  # a ping every 20 s; no pong within 10 s drops the socket
# A stream id: milliseconds, then optionally `-` and a sequence number. ASCII digits only
# (`\d` would take other scripts' digits too), and at most 19 of them per part: both parts
# then fit Redis's 64 bits and are below its very last id (out of range, Redis answered an
# error that became a 500), and the OpenAPI pattern says exactly what is accepted.
SINCE_PATTERN = "^([0-9]{1,19}(-[0-9]{1,19})?)?$"
SINCE = re.compile(SINCE_PATTERN)


def _since(request: web.Request) -> str | None:
    since = request.query.get("since")
    if since is None or since == "":
        return None
    if not SINCE.fullmatch(since):
        raise Problem(
            400,
            "invalid_query",
            "`since` must be a notification id such as 1732430000000-0.",
            errors=[{"field": "since", "message": "not a notification id"}],
        )
    return since if "-" in since else f"{since}-0"


def _ws_credentials(request: web.Request) -> tuple[str | None, bool]:
    """The token from the header, the `bearer, <token>` subprotocol, or `?token=`."""
    offered = [
        p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()
    ]
    if len(offered) >= 2 and offered[0].lower() == "bearer":
        return offered[1], True
    token = bearer_token(request.headers.get("Authorization")) or request.query.get("token")
    return token, False


async def websocket(request: web.Request) -> web.StreamResponse:
    token, via_protocol = _ws_credentials(request)
    identity = await verify_token(request.app, token)  # a bad token is a 401 before upgrading
    await require_mfa(request, identity)
    since = _since(request)
    hub = request.app[hub_key]
    ws = web.WebSocketResponse(
        heartbeat=HEARTBEAT_SECONDS,
        protocols=("bearer",) if via_protocol else (),
        max_msg_size=64 * 1024,
    )
    conn = Conn(ws, identity, hub, request.transport)
    hub.add(conn)  # before the upgrade: entries arriving from now on are buffered, not lost
    expiry: asyncio.TimerHandle | None = None
    try:
        await ws.prepare(request)
        if conn.deferred_close is not None:  # evicted (or revoked) before it was upgraded
            code, reason = conn.deferred_close
            await conn.close(code, reason, within=SLOW_CLOSE_SECONDS)
            return ws
        # The socket lives as long as its token: the client reconnects with a fresh one
        # and `?since=`, so a socket never outlasts its token (nor the token's session).
        expiry = asyncio.get_running_loop().call_later(
            max(0.0, identity.expires_at - time.time()),
            conn.close_later,
            CLOSE_REVOKED,
            "token expired",
        )
        await hub.replay(conn, since)
        conn.sender = asyncio.create_task(conn.send_loop())
        async for message in ws:  # reading notices the client's close; the client says nothing
            if message.type == WSMsgType.ERROR:
                break
    finally:
        if expiry is not None:
            expiry.cancel()
        hub.discard(conn)
        if conn.sender is not None:
            conn.sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await conn.sender
    return ws


async def notifications(request: web.Request) -> web.Response:
    """The caller's notification log after `since`, oldest first, from `offset` on."""
    identity = await authenticate(request)
    since = _since(request)
    limit, offset = page(request)
    # A change answered a moment ago, by anyone, that notifies the caller is listed: wait
    # (briefly) until the notifier has appended what is in flight for them. On a timeout
    # the log is served as it is; the notification follows on the socket.
    if barrier_key in request.app:
        await request.app[barrier_key].wait(
            about=lambda event: identity.user_id in event.recipient_ids,
            after=request.app[positions_key].rows if positions_key in request.app else None,
        )
    entries = []
    if offset < LOG_MAXLEN:  # the log never holds more, so a later page is empty
        # XRANGE has no offset: read the entries before the page too, and drop them.
        entries = await request.app[hub_key].redis.xrange(
            log_key(identity.user_id), min=f"({since}" if since else "-", count=offset + limit
        )
    body = "[" + ",".join(entry_frame(i, f) for i, f in entries[offset:]) + "]"
    return web.Response(text=body, content_type="application/json")


async def close_sockets(app: web.Application) -> None:
    """On shutdown, before the resources go: every socket gets 1001 at once."""
    await app[hub_key].close_all()
