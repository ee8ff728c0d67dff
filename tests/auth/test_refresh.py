"""Refresh-token rotation: a new pair each time, single use, and reuse revoking the session."""

from __future__ import annotations

import asyncio

import pytest

from ..api import Api, Reply, assert_problem
from .auth_support import assert_session, assert_validation


async def refresh(api: Api, token: object) -> Reply:
    return await api.call("POST", "/api/auth/refresh", json={"refresh_token": token})


async def test_refresh_returns_a_new_pair(api: Api) -> None:
    account = await api.signup()
    body = assert_session(await refresh(api, account.refresh_token), 200)
    assert body["user"] == account.user
    assert body["token"] != account.token
    assert body["refresh_token"] != account.refresh_token
    me = await api.call("GET", "/api/auth/me", token=body["token"])
    assert me.status == 200 and me.body == account.user


async def test_refresh_works_without_an_access_token(api: Api) -> None:
    """Refresh is public: the access token may already have expired."""
    account = await api.signup()
    reply = await api.call(
        "POST",
        "/api/auth/refresh",
        json={"refresh_token": account.refresh_token},
        headers={"Authorization": "Bearer expired.or.garbage"},
    )
    assert_session(reply, 200)


async def test_old_refresh_token_stops_working(api: Api) -> None:
    account = await api.signup()
    assert_session(await refresh(api, account.refresh_token), 200)
    assert_problem(await refresh(api, account.refresh_token), 401)


async def test_rotation_chain(api: Api) -> None:
    account = await api.signup()
    token = account.refresh_token
    seen = {token}
    for _ in range(3):
        body = assert_session(await refresh(api, token), 200)
        token = body["refresh_token"]
        assert token not in seen
        seen.add(token)
        assert (await api.call("GET", "/api/auth/me", token=body["token"])).status == 200


async def test_reuse_revokes_the_whole_family(api: Api, auth_api: Api) -> None:
    account = await api.signup()
    token_a = account.refresh_token
    pair_b = assert_session(await refresh(api, token_a), 200)
    token_b, access_b = pair_b["refresh_token"], pair_b["token"]
    assert (await api.call("GET", "/api/auth/me", token=access_b)).status == 200

    # A was already rotated: presenting it again means a stolen copy is in use.
    assert_problem(await refresh(api, token_a), 401)
    # ... so B, the latest of the family, is dead too,
    assert_problem(await refresh(api, token_b), 401)
    # ... and so are the access tokens of the family, through the gateway and directly.
    for target in (api, auth_api):
        for access in (access_b, account.token):
            assert_problem(await target.call("GET", "/api/auth/me", token=access), 401)


async def test_reuse_does_not_touch_other_sessions(api: Api) -> None:
    account = await api.signup()
    other = assert_session(await api.login(account.user["email"], account.password), 200)
    assert_session(await refresh(api, account.refresh_token), 200)
    assert_problem(await refresh(api, account.refresh_token), 401)
    assert (await api.call("GET", "/api/auth/me", token=other["token"])).status == 200
    assert_session(await refresh(api, other["refresh_token"]), 200)


async def test_concurrent_use_of_one_refresh_token_rotates_at_most_once(api: Api) -> None:
    account = await api.signup()
    replies = await asyncio.gather(*(refresh(api, account.refresh_token) for _ in range(3)))
    statuses = [r.status for r in replies]
    assert set(statuses) <= {200, 401}, [r.text for r in replies]
    assert statuses.count(200) <= 1, statuses


async def test_access_token_is_not_a_refresh_token(api: Api) -> None:
    account = await api.signup()
    assert_problem(await refresh(api, account.token), 401, "invalid_refresh_token")


@pytest.mark.parametrize(
    "token",
    ["garbage", "x" * 43, "a.b.c", "null", "0"],
    ids=["garbage", "token-like", "jwt-like", "null-string", "zero-string"],
)
async def test_unknown_refresh_token_is_401(api: Api, token: str) -> None:
    assert_problem(await refresh(api, token), 401, "invalid_refresh_token")


async def test_missing_refresh_token_is_400(api: Api) -> None:
    reply = await api.call("POST", "/api/auth/refresh", json={})
    assert_validation(reply, "refresh_token")
    reply = await api.call("POST", "/api/auth/refresh")
    assert_validation(reply, "refresh_token")


async def test_empty_refresh_token_is_400(api: Api) -> None:
    assert_validation(await refresh(api, ""), "refresh_token")


@pytest.mark.parametrize("token", [123, None, True, ["x"], {"token": "x"}])
async def test_refresh_token_of_wrong_type_is_400(api: Api, token: object) -> None:
    assert_validation(await refresh(api, token), "refresh_token")


async def test_failed_refresh_does_not_burn_a_good_token(api: Api) -> None:
    account = await api.signup()
    assert_problem(await refresh(api, account.refresh_token + "x"), 401)
    assert_validation(await refresh(api, 42), "refresh_token")
    assert_session(await refresh(api, account.refresh_token), 200)
