"""Log-out: it needs a token, and revokes the access token and the session's refresh token."""

from __future__ import annotations

from ..api import Account, Api, assert_problem
from .auth_support import assert_session, assert_validation


async def logout(api: Api, token: str | None, refresh_token: object = ..., **kw) -> object:
    json = None if refresh_token is ... else {"refresh_token": refresh_token}
    return await api.call("POST", "/api/auth/logout", token=token, json=json, **kw)


async def refresh(api: Api, token: str):
    return await api.call("POST", "/api/auth/refresh", json={"refresh_token": token})


async def test_logout_needs_a_token(api: Api, auth_api: Api) -> None:
    account = await api.signup()
    for target in (api, auth_api):
        reply = await logout(target, None, account.refresh_token)
        assert_problem(reply, 401)
        assert "Bearer" in reply.headers.get("WWW-Authenticate", "")
    # Nothing was revoked by those attempts.
    assert (await api.call("GET", "/api/auth/me", token=account.token)).status == 200
    assert_session(await refresh(api, account.refresh_token), 200)


async def test_logout_with_bad_token_is_401_before_body_checks(api: Api) -> None:
    reply = await api.call("POST", "/api/auth/logout", token="garbage", json={"refresh_token": 42})
    assert_problem(reply, 401)


async def test_logout_returns_204(api: Api) -> None:
    account = await api.signup()
    reply = await logout(api, account.token, account.refresh_token)
    assert reply.status == 204, reply.text
    assert reply.text == ""


async def test_access_token_stops_working_everywhere(
    api: Api, auth_api: Api, connections_api: Api
) -> None:
    account = await api.signup()
    assert (await logout(api, account.token)).status == 204
    for target in (api, auth_api):
        assert_problem(await target.call("GET", "/api/auth/me", token=account.token), 401)
    reply = await connections_api.call("GET", "/api/connection/list", token=account.token)
    assert_problem(reply, 401)


async def test_logout_directly_at_auth_revokes_at_the_gateway_too(api: Api, auth_api: Api) -> None:
    account = await api.signup()
    assert (await logout(auth_api, account.token)).status == 204
    assert_problem(await api.call("GET", "/api/auth/me", token=account.token), 401)


async def test_refresh_token_in_body_stops_working(api: Api) -> None:
    account = await api.signup()
    assert (await logout(api, account.token, account.refresh_token)).status == 204
    assert_problem(await refresh(api, account.refresh_token), 401)


async def test_logout_without_body_revokes_the_sessions_refresh_token(api: Api) -> None:
    account = await api.signup()
    assert (await logout(api, account.token)).status == 204
    assert_problem(await refresh(api, account.refresh_token), 401)


async def test_logout_with_empty_json_object(api: Api) -> None:
    account = await api.signup()
    reply = await api.call("POST", "/api/auth/logout", token=account.token, json={})
    assert reply.status == 204, reply.text
    assert_problem(await refresh(api, account.refresh_token), 401)


async def test_logout_after_refresh_revokes_the_rotated_session(api: Api) -> None:
    account = await api.signup()
    pair = assert_session(await refresh(api, account.refresh_token), 200)
    assert (await logout(api, pair["token"])).status == 204
    assert_problem(await refresh(api, pair["refresh_token"]), 401)
    for access in (pair["token"], account.token):
        assert_problem(await api.call("GET", "/api/auth/me", token=access), 401)


async def test_other_session_keeps_working(api: Api, auth_api: Api) -> None:
    account = await api.signup()
    second = assert_session(await api.login(account.user["email"], account.password), 200)
    assert (await logout(api, account.token, account.refresh_token)).status == 204
    for target in (api, auth_api):
        me = await target.call("GET", "/api/auth/me", token=second["token"])
        assert me.status == 200 and me.body == account.user
    assert_session(await refresh(api, second["refresh_token"]), 200)


async def test_logout_with_another_sessions_refresh_token_revokes_it(api: Api) -> None:
    account = await api.signup()
    second = assert_session(await api.login(account.user["email"], account.password), 200)
    assert (await logout(api, account.token, second["refresh_token"])).status == 204
    assert_problem(await refresh(api, second["refresh_token"]), 401)
    assert_problem(await refresh(api, account.refresh_token), 401)


async def test_logout_cannot_revoke_another_users_refresh_token(api: Api) -> None:
    alice, bob = await api.signup(), await api.signup()
    assert (await logout(api, alice.token, bob.refresh_token)).status == 204
    assert (await api.call("GET", "/api/auth/me", token=bob.token)).status == 200
    assert_session(await refresh(api, bob.refresh_token), 200)


async def test_logout_twice_is_401(api: Api) -> None:
    account = await api.signup()
    assert (await logout(api, account.token)).status == 204
    assert_problem(await logout(api, account.token), 401)


async def test_logout_with_unknown_refresh_token_still_logs_out(api: Api) -> None:
    account = await api.signup()
    assert (await logout(api, account.token, "not-a-real-token")).status == 204
    assert_problem(await api.call("GET", "/api/auth/me", token=account.token), 401)


async def test_logout_refresh_token_of_wrong_type_is_400(api: Api) -> None:
    account: Account = await api.signup()
    assert_validation(await logout(api, account.token, 42), "refresh_token")


async def test_login_after_logout_works(api: Api) -> None:
    account = await api.signup()
    assert (await logout(api, account.token)).status == 204
    body = assert_session(await api.login(account.user["email"], account.password), 200)
    assert (await api.call("GET", "/api/auth/me", token=body["token"])).status == 200
