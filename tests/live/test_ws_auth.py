"""WebSocket auth: a bad token is a 401 before the upgrade; a good one works three ways."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import jwt
import pytest
import websockets
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..api import Api, assert_problem
from ..stack import Stack
from .live_support import (
    SETTLE,
    Sockets,
    assert_notification,
    handshake_status,
    request_pro,
    sign_token,
    ws_url,
)


async def test_missing_token_is_401_before_upgrade(
    http: aiohttp.ClientSession, stack: Stack
) -> None:
    assert await handshake_status(http, ws_url(stack.gateway_url)) == 401
    # Empty values count as missing.
    assert await handshake_status(http, ws_url(stack.gateway_url, token="")) == 401
    empty = {"Authorization": "Bearer "}
    assert await handshake_status(http, ws_url(stack.gateway_url), headers=empty) == 401


async def test_missing_token_answers_a_problem(api: Api) -> None:
    reply = await api.call(
        "GET",
        "/api/ws",
        headers={
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    assert_problem(reply, 401)
    assert reply.headers.get("WWW-Authenticate", "").startswith("Bearer")


@pytest.mark.parametrize("how", ["header", "protocol", "query"])
@pytest.mark.parametrize(
    "token",
    ["garbage", "a.b.c", "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.", "Bearer"],
    ids=["garbage", "three-parts", "alg-none-stub", "scheme-word"],
)
async def test_garbage_token_is_401(
    http: aiohttp.ClientSession, stack: Stack, how: str, token: str
) -> None:
    assert await _status(http, stack, token, how) == 401


async def _status(http: aiohttp.ClientSession, stack: Stack, token: str, how: str) -> int:
    if how == "header":
        return await handshake_status(
            http, ws_url(stack.gateway_url), headers={"Authorization": f"Bearer {token}"}
        )
    if how == "protocol":
        return await handshake_status(http, ws_url(stack.gateway_url), protocols=("bearer", token))
    return await handshake_status(http, ws_url(stack.gateway_url, token=token))


@pytest.mark.parametrize("how", ["header", "protocol", "query"])
async def test_expired_token_is_401(
    http: aiohttp.ClientSession, stack: Stack, api: Api, how: str
) -> None:
    user = await api.signup("client")
    now = int(time.time())
    expired = sign_token(stack.root, user_id=user.id, role="client", iat=now - 1200, exp=now - 60)
    assert await _status(http, stack, expired, how) == 401
    # The same claims, unexpired, are accepted: only the expiry made the difference.
    fresh = sign_token(stack.root, user_id=user.id, role="client")
    ws = await asyncio.wait_for(http.ws_connect(ws_url(stack.gateway_url, token=fresh)), 10)
    await ws.close()


async def test_forged_and_unusual_tokens_are_401(
    http: aiohttp.ClientSession, stack: Stack, api: Api
) -> None:
    user = await api.signup("client")
    claims = {
        "iss": "healthconnect-auth",
        "aud": "healthconnect",
        "sub": str(user.id),
        "role": "client",
        "typ": "access",
        "sid": "s",
        "jti": "j",
        "iat": int(time.time()),
        "exp": int(time.time()) + 600,
    }
    other_key = jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA")
    unsigned = jwt.encode(claims, None, algorithm="none")
    bad = [
        other_key,
        unsigned,
        sign_token(stack.root, user_id=user.id, role="client", typ="refresh"),
        sign_token(stack.root, user_id=user.id, role="client", aud="someone-else"),
        sign_token(stack.root, user_id=user.id, role="client", iss="someone-else"),
        sign_token(stack.root, user_id=user.id, role="admin"),
        user.refresh_token,
    ]
    for token in bad:
        assert await _status(http, stack, token, "query") == 401, token


async def test_revoked_token_is_401(http: aiohttp.ClientSession, stack: Stack, api: Api) -> None:
    user = await api.signup("professional")
    ws = await asyncio.wait_for(http.ws_connect(ws_url(stack.gateway_url, token=user.token)), 10)
    await ws.close()
    logout = await api.call(
        "POST", "/api/auth/logout", json={"refresh_token": user.refresh_token}, token=user.token
    )
    assert logout.status == 204, logout.text
    for how in ("header", "protocol", "query"):
        assert await _status(http, stack, user.token, how) == 401, how


async def test_every_way_of_passing_a_good_token_works(
    http: aiohttp.ClientSession, stack: Stack, api: Api, sockets: Sockets
) -> None:
    pro, client = await asyncio.gather(api.signup("professional"), api.signup("client"))
    by_header = await sockets.open(stack.gateway_url, pro, how="header", label="header")
    by_protocol = await sockets.open(stack.gateway_url, pro, how="protocol", label="protocol")
    by_query = await sockets.open(stack.gateway_url, pro, how="query", label="query")
    assert by_protocol.ws.protocol == "bearer"
    assert by_header.ws.protocol is None and by_query.ws.protocol is None

    connection = await request_pro(api, client, pro)
    for sock in (by_header, by_protocol, by_query):
        [message] = await sock.wait_count(1)
        assert_notification(message, "connection.requested", {"connection": connection})
    await asyncio.sleep(SETTLE)
    assert [len(s.messages) for s in (by_header, by_protocol, by_query)] == [1, 1, 1]


async def test_websockets_library_client(stack: Stack, api: Api) -> None:
    """A second, independent client implementation: subprotocol echo, 401 on a bad token."""
    pro, client = await asyncio.gather(api.signup("professional"), api.signup("client"))
    url = ws_url(stack.gateway_url)
    async with websockets.connect(url, subprotocols=["bearer", pro.token]) as ws:
        assert ws.subprotocol == "bearer"
        connection = await request_pro(api, client, pro)
        message = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert_notification(message, "connection.requested", {"connection": connection})
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(url, subprotocols=["bearer", "not-a-token"]):
            pass
    assert refused.value.response.status_code == 401


async def test_bad_since_is_400_before_upgrade(
    http: aiohttp.ClientSession, stack: Stack, api: Api
) -> None:
    user = await api.signup("client")
    for since in ("abc", "1-2-3", "-1", "1-", "99999999999999999999999"):
        url = ws_url(stack.gateway_url, token=user.token, since=since)
        assert await handshake_status(http, url) == 400, since
    # The token is checked first: a bad token with a bad `since` is still a 401.
    assert await handshake_status(http, ws_url(stack.gateway_url, since="abc")) == 401
