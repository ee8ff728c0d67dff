"""Sign-up through the gateway."""

from __future__ import annotations

import pytest

from ..api import Api, assert_problem, unique_email


@pytest.fixture
def api(http, stack) -> Api:
    return Api(http, stack.gateway_url)


async def test_signup_returns_user_and_tokens(api: Api) -> None:
    email = unique_email("Mixed.Case")
    reply = await api.call(
        "POST",
        "/api/auth/signup",
        json={
            "name": "  Ada Lovelace  ",
            "email": email.upper(),
            "password": "password1",
            "role": "professional",
        },
    )
    assert reply.status == 201, reply.text
    user = reply.body["user"]
    assert user["name"] == "Ada Lovelace"
    assert user["email"] == email.lower()
    assert user["role"] == "professional"
    assert user["created_at"].endswith("Z")
    assert set(user) == {"id", "name", "email", "role", "created_at"}
    assert reply.body["token"].count(".") == 2
    assert reply.body["refresh_token"]


async def test_signup_email_taken_case_insensitive(api: Api) -> None:
    email = unique_email()
    await api.signup(email=email)
    reply = await api.call(
        "POST",
        "/api/auth/signup",
        json={"name": "X", "email": email.upper(), "password": "password1", "role": "client"},
    )
    assert_problem(reply, 409, "email_taken")
