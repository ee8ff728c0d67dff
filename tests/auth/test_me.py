"""GET /api/auth/me: exactly the User object, and no password material in any auth response."""

from __future__ import annotations

import datetime as dt

import pytest

from ..api import Api, assert_problem
from .auth_support import USER_KEYS, assert_no_password_material


@pytest.mark.parametrize("role", ["client", "professional"])
async def test_me_returns_exactly_the_user(api: Api, role: str) -> None:
    account = await api.signup(role, name="  Mary Seacole ")
    reply = await api.call("GET", "/api/auth/me", token=account.token)
    assert reply.status == 200, reply.text
    assert reply.headers["Content-Type"].startswith("application/json")
    user = reply.body
    assert set(user) == USER_KEYS
    assert user == account.user
    assert isinstance(user["id"], int) and not isinstance(user["id"], bool) and user["id"] > 0
    assert user["name"] == "Mary Seacole"
    assert user["email"] == account.user["email"].lower()
    assert user["role"] == role
    assert user["created_at"].endswith("Z")
    created = dt.datetime.fromisoformat(user["created_at"].replace("Z", "+00:00"))
    assert abs(dt.datetime.now(dt.UTC) - created) < dt.timedelta(minutes=5)
    assert_no_password_material(reply, account.password)


async def test_me_directly_at_auth_is_the_same(api: Api, auth_api: Api) -> None:
    account = await api.signup()
    via_gateway = await api.call("GET", "/api/auth/me", token=account.token)
    direct = await auth_api.call("GET", "/api/auth/me", token=account.token)
    assert via_gateway.status == direct.status == 200
    assert via_gateway.body == direct.body == account.user


async def test_me_with_trailing_slash(api: Api) -> None:
    account = await api.signup()
    reply = await api.call("GET", "/api/auth/me/", token=account.token)
    assert reply.status == 200 and reply.body == account.user


async def test_me_needs_a_token(api: Api, auth_api: Api) -> None:
    for target in (api, auth_api):
        reply = await target.call("GET", "/api/auth/me")
        assert_problem(reply, 401)
        assert reply.headers.get("WWW-Authenticate", "").startswith("Bearer")


async def test_each_user_sees_themself(api: Api) -> None:
    alice, bob = await api.signup("client"), await api.signup("professional")
    assert (await api.call("GET", "/api/auth/me", token=alice.token)).body == alice.user
    assert (await api.call("GET", "/api/auth/me", token=bob.token)).body == bob.user


async def test_no_password_material_in_any_auth_response(api: Api, auth_api: Api) -> None:
    password = "Unusual Passw0rd Phrase"
    account = await api.signup("professional", password=password)
    email = account.user["email"]
    signup_again = await api.call(
        "POST",
        "/api/auth/signup",
        json={"name": "X", "email": email, "password": password, "role": "client"},
    )
    assert_problem(signup_again, 409, "email_taken")
    login = await api.login(email, password)
    assert login.status == 200
    refreshed = await api.call(
        "POST", "/api/auth/refresh", json={"refresh_token": login.body["refresh_token"]}
    )
    assert refreshed.status == 200
    token = refreshed.body["token"]
    replies = [
        signup_again,
        login,
        refreshed,
        await api.login(email, password + "x"),
        await api.call("GET", "/api/auth/me", token=token),
        await auth_api.call("GET", "/api/auth/me", token=token),
        await api.call("GET", "/api/users?limit=200", token=token),
        await api.call("GET", "/api/users?role=professional", token=token),
    ]
    for reply in replies:
        assert reply.status < 500, reply.text
        assert_no_password_material(reply, password)
    for user in replies[-2].body:
        assert set(user) == USER_KEYS, user
