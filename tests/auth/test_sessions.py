"""Sessions through the gateway: the list (fields, current, order, pages) and ending one
(its REST tokens refused at once, its sockets closed with 4001, the others untouched)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import aiohttp
import jwt
import pytest

from ..api import Account, Api, assert_problem
from ..live.live_support import Sockets
from .auth_support import assert_session, assert_validation

SESSION_KEYS = {"id", "created_at", "last_used_at", "user_agent", "ip", "current"}


def sid_of(token: str) -> str:
    return jwt.decode(token, options={"verify_signature": False})["sid"]


async def login(api: Api, account: Account, user_agent: str | None = None) -> dict:
    headers = {"User-Agent": user_agent} if user_agent else None
    reply = await api.call(
        "POST",
        "/api/auth/login",
        json={"email": account.user["email"], "password": account.password},
        headers=headers,
    )
    return assert_session(reply, 200)


async def sessions(api: Api, token: str, query: str = "") -> list[dict]:
    reply = await api.call("GET", "/api/auth/sessions" + query, token=token)
    assert reply.status == 200, reply.text
    assert isinstance(reply.body, list)
    return reply.body


async def test_the_list_names_every_live_session_newest_first(api: Api) -> None:
    account = await api.signup()
    await asyncio.sleep(0.01)
    phone = await login(api, account, "HealthConnect-Phone/3.1 (Android 15)")
    await asyncio.sleep(0.01)
    laptop = await login(api, account, "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0")
    listed = await sessions(api, phone["token"])
    assert [s["id"] for s in listed] == [
        sid_of(laptop["token"]),
        sid_of(phone["token"]),
        sid_of(account.token),
    ]
    assert [s["current"] for s in listed] == [False, True, False]
    assert listed[0]["user_agent"] == "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0"
    assert listed[1]["user_agent"] == "HealthConnect-Phone/3.1 (Android 15)"
    for session in listed:
        assert set(session) == SESSION_KEYS
        assert session["ip"] == "127.0.0.1"  # the client's address, as the gateway saw it
        for field in ("created_at", "last_used_at"):
            assert session[field].endswith("Z")
            dt.datetime.fromisoformat(session[field])
    assert [s["current"] for s in await sessions(api, laptop["token"])] == [True, False, False]


async def test_the_list_is_paginated(api: Api) -> None:
    account = await api.signup()
    tokens = [account.token] + [(await login(api, account))["token"] for _ in range(4)]
    ids = [sid_of(t) for t in reversed(tokens)]
    assert [s["id"] for s in await sessions(api, account.token, "?limit=2")] == ids[:2]
    assert [s["id"] for s in await sessions(api, account.token, "?limit=2&offset=2")] == ids[2:4]
    assert [s["id"] for s in await sessions(api, account.token, "?offset=4")] == ids[4:]
    assert await sessions(api, account.token, "?offset=5") == []
    for query in ("?limit=0", "?limit=201", "?offset=-1", "?limit=x"):
        reply = await api.call("GET", "/api/auth/sessions" + query, token=account.token)
        assert_validation(reply, query[1:].split("=")[0], code="invalid_query")


async def test_a_refresh_is_a_use_of_the_same_session(api: Api) -> None:
    account = await api.signup()
    [before] = await sessions(api, account.token)
    await asyncio.sleep(0.02)
    reply = await api.call(
        "POST", "/api/auth/refresh", json={"refresh_token": account.refresh_token}
    )
    fresh = assert_session(reply, 200)
    [after] = await sessions(api, fresh["token"])
    assert after["id"] == before["id"] and after["current"]
    assert after["created_at"] == before["created_at"]
    assert after["last_used_at"] > before["last_used_at"]


async def test_logged_out_sessions_are_not_listed(api: Api) -> None:
    account = await api.signup()
    other = await login(api, account)
    reply = await api.call(
        "POST", "/api/auth/logout", json={"refresh_token": other["refresh_token"]},
        token=other["token"],
    )  # fmt: skip
    assert reply.status == 204
    assert [s["id"] for s in await sessions(api, account.token)] == [sid_of(account.token)]


async def test_ending_a_session_stops_its_tokens_and_sockets_only(
    api: Api, http: aiohttp.ClientSession, sockets: Sockets, stack
) -> None:
    account = await api.signup()
    doomed = await login(api, account, "Old tablet")
    kept_socket = await sockets.open(stack.gateway_url, account.token, label="kept")
    doomed_sockets = [
        await sockets.open(stack.gateway_url, doomed["token"], how=how, label=f"doomed-{how}")
        for how in ("header", "protocol")
    ]
    reply = await api.call(
        "DELETE", f"/api/auth/sessions/{sid_of(doomed['token'])}", token=account.token
    )
    assert reply.status == 204 and reply.text == ""
    # Its access and refresh tokens are refused at once, at the gateway and at auth.
    for base in (stack.gateway_url, stack.service_url("auth")):
        me = await Api(http, base).call("GET", "/api/auth/me", token=doomed["token"])
        assert_problem(me, 401, "token_revoked")
    refreshed = await api.call(
        "POST", "/api/auth/refresh", json={"refresh_token": doomed["refresh_token"]}
    )
    assert_problem(refreshed, 401, "invalid_refresh_token")
    for sock in doomed_sockets:
        assert await sock.wait_closed(within=5) == 4001, sock.label
    # The caller's own session goes on: its socket stays open, its token works.
    await asyncio.sleep(0.3)
    assert not kept_socket.closed
    me = await api.call("GET", "/api/auth/me", token=account.token)
    assert me.status == 200
    assert [s["id"] for s in await sessions(api, account.token)] == [sid_of(account.token)]


async def test_ending_ones_current_session(api: Api) -> None:
    account = await api.signup()
    reply = await api.call(
        "DELETE", f"/api/auth/sessions/{sid_of(account.token)}", token=account.token
    )
    assert reply.status == 204
    assert_problem(await api.call("GET", "/api/auth/me", token=account.token), 401)


@pytest.mark.parametrize("which", ["another users", "unknown", "ended", "malformed", "upper"])
async def test_a_session_not_the_callers_is_404(api: Api, which: str) -> None:
    account, other = await api.signup(), await api.signup()
    if which == "another users":
        sid = sid_of(other.token)
    elif which == "unknown":
        sid = uuid.uuid4().hex
    elif which == "ended":
        extra = await login(api, account)
        sid = sid_of(extra["token"])
        assert (
            await api.call("DELETE", f"/api/auth/sessions/{sid}", token=account.token)
        ).status == 204
    elif which == "malformed":
        sid = "not-a-session"
    else:
        sid = sid_of(account.token).upper()
    reply = await api.call("DELETE", f"/api/auth/sessions/{sid}", token=account.token)
    assert_problem(reply, 404, "session_not_found")
    # Nothing was ended: the other user's session still works.
    assert (await api.call("GET", "/api/auth/me", token=other.token)).status == 200


@pytest.mark.parametrize(("method", "path"), [("GET", ""), ("DELETE", "/" + "a" * 32)])
async def test_sessions_need_a_token(api: Api, method: str, path: str) -> None:
    assert_problem(await api.call(method, "/api/auth/sessions" + path), 401)
