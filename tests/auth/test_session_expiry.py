"""Short lifetimes in a stack of this module's own: idle and absolute session expiry at
refresh, tokens capped at the session's end, and a socket closed with 4001 when its token
expires (the client reconnects with a fresh one and `?since=`)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import jwt
import pytest

from ..api import Account, Api, assert_problem
from ..live.live_support import Sockets
from ..stack import Stack
from .auth_support import assert_session

ACCESS_TTL, IDLE, MAX = 3, 5, 10
STACK_ENV = {
    "AUTH_ACCESS_TTL_SECONDS": str(ACCESS_TTL),
    "AUTH_SESSION_IDLE_SECONDS": str(IDLE),
    "AUTH_SESSION_MAX_SECONDS": str(MAX),
}


@pytest.fixture
def api(module_api: Api) -> Api:
    return module_api


async def refresh(api: Api, token: str):
    return await api.call("POST", "/api/auth/refresh", json={"refresh_token": token})


async def fresh_login(api: Api, account: Account) -> dict:
    reply = await api.call(
        "POST",
        "/api/auth/login",
        json={"email": account.user["email"], "password": account.password},
    )
    return assert_session(reply, 200)


async def test_a_session_idle_too_long_expires(api: Api) -> None:
    account = await api.signup()
    await asyncio.sleep(IDLE + 0.5)
    assert_problem(await refresh(api, account.refresh_token), 401, "session_expired")
    # It has ended: its token is no good any more, and it is not listed.
    assert_problem(await refresh(api, account.refresh_token), 401, "invalid_refresh_token")
    other = await fresh_login(api, account)
    listed = await api.call("GET", "/api/auth/sessions", token=other["token"])
    assert [s["current"] for s in listed.body] == [True]


async def test_refreshing_keeps_a_session_alive_until_its_maximum(api: Api) -> None:
    account = await api.signup()
    started = time.monotonic()
    token = account.refresh_token
    while time.monotonic() - started < MAX - 3:
        await asyncio.sleep(IDLE / 2)
        body = assert_session(await refresh(api, token), 200)
        token = body["refresh_token"]
        # No access token outlives the session (the TTL would otherwise allow it).
        exp = jwt.decode(body["token"], options={"verify_signature": False})["exp"]
        assert exp <= time.time() + ACCESS_TTL + 1
    await asyncio.sleep(max(0.0, MAX + 0.5 - (time.monotonic() - started)))
    assert_problem(await refresh(api, token), 401, "session_expired")


async def test_a_socket_is_closed_when_its_token_expires(
    api: Api, http: aiohttp.ClientSession, module_stack: Stack, sockets: Sockets
) -> None:
    pro, client = await asyncio.gather(api.signup("professional"), api.signup("client"))
    opened = time.monotonic()
    sock = await sockets.open(module_stack.gateway_url, pro.token, label="expiring")
    code = await sock.wait_closed(within=ACCESS_TTL + 5)
    assert code == 4001
    assert time.monotonic() - opened >= 1.0  # at the token's expiry, not at once
    # While it is closed, something happens for the professional...
    token = (await fresh_login(api, client))["token"]
    asked = await api.call(
        "POST", "/api/connection/request-pro", json={"professional_id": pro.id}, token=token
    )
    assert asked.status == 201, asked.text
    # ...and the reconnect with a fresh token and `since` gets it.
    fresh = assert_session(await refresh(api, pro.refresh_token), 200)
    again = await sockets.open(module_stack.gateway_url, fresh["token"], since="0", label="again")
    [message] = await again.wait_count(1)
    assert message["type"] == "connection.requested"
    assert message["data"]["connection"]["id"] == asked.body["id"]
