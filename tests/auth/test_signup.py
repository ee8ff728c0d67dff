"""Sign-up through the gateway: the response, every validation rule, and duplicate emails."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from ..api import Api, assert_problem, unique_email
from .auth_support import assert_session, assert_validation

PASSWORD = "long enough pass 1"


def body(**overrides: Any) -> dict[str, Any]:
    """A valid signup body with a fresh email, with `overrides` applied (None drops a key)."""
    data: dict[str, Any] = {
        "name": "Grace Hopper",
        "email": unique_email("signup"),
        "password": PASSWORD,
        "role": "client",
    }
    for key, value in overrides.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


async def signup(api: Api, data: Any) -> Any:
    return await api.call("POST", "/api/auth/signup", json=data)


async def test_signup_returns_user_and_tokens(api: Api) -> None:
    email = unique_email("Mixed.Case")
    reply = await api.call(
        "POST",
        "/api/auth/signup",
        json={
            "name": "  Ada Lovelace  ",
            "email": email.upper(),
            "password": "long enough pass 1",
            "role": "professional",
        },
    )
    assert reply.status == 201, reply.text
    user = reply.body["user"]
    assert user["name"] == "Ada Lovelace"
    assert user["email"] == email.lower()
    assert user["role"] == "professional"
    assert user["created_at"].endswith("Z")
    assert set(user) == {
        "id",
        "name",
        "email",
        "role",
        "created_at",
        "email_verified",
        "mfa_enabled",
    }
    assert reply.body["token"].count(".") == 2
    assert reply.body["refresh_token"]


async def test_signup_response_shape_and_token_works(api: Api) -> None:
    data = body(role="client")
    created = assert_session(await signup(api, data), 201)
    user = created["user"]
    assert isinstance(user["id"], int) and user["id"] > 0
    assert user["role"] == "client"
    me = await api.call("GET", "/api/auth/me", token=created["token"])
    assert me.status == 200, me.text
    assert me.body == user


async def test_signup_email_taken_case_insensitive(api: Api) -> None:
    email = unique_email()
    await api.signup(email=email)
    reply = await api.call(
        "POST",
        "/api/auth/signup",
        json={
            "name": "X",
            "email": email.upper(),
            "password": "long enough pass 1",
            "role": "client",
        },
    )
    assert_problem(reply, 409, "email_taken")


async def test_signup_email_taken_mixed_case_first(api: Api) -> None:
    local = unique_email("MiXeD").split("@")[0]
    first = await signup(api, body(email=f"{local}@Example.COM"))
    assert first.status == 201, first.text
    assert first.body["user"]["email"] == f"{local.lower()}@example.com"
    again = await signup(api, body(email=f"{local.lower()}@example.com", role="professional"))
    assert_problem(again, 409, "email_taken")


async def test_signup_concurrent_same_email_creates_one_account(api: Api) -> None:
    email = unique_email("race")
    replies = await asyncio.gather(*(signup(api, body(email=email)) for _ in range(4)))
    statuses = sorted(r.status for r in replies)
    assert statuses == [201, 409, 409, 409], [r.text for r in replies]
    for reply in replies:
        if reply.status == 409:
            assert_problem(reply, 409, "email_taken")


# --- name -------------------------------------------------------------------------------


async def test_signup_name_is_trimmed(api: Api) -> None:
    reply = await signup(api, body(name="\t  Alan Turing \n "))
    assert reply.status == 201, reply.text
    assert reply.body["user"]["name"] == "Alan Turing"


@pytest.mark.parametrize("length", [1, 100])
async def test_signup_name_length_bounds_accepted(api: Api, length: int) -> None:
    name = "n" * length
    reply = await signup(api, body(name=name))
    assert reply.status == 201, reply.text
    assert reply.body["user"]["name"] == name


async def test_signup_name_100_chars_after_trimming(api: Api) -> None:
    name = "é" * 100
    reply = await signup(api, body(name=f"   {name}   "))
    assert reply.status == 201, reply.text
    assert reply.body["user"]["name"] == name


@pytest.mark.parametrize(
    "name",
    ["", "   ", "\t\n ", "\u00a0\u2003", "n" * 101, " " + "n" * 101 + " "],
    ids=["empty", "spaces", "whitespace", "unicode-spaces", "101", "101-padded"],
)
async def test_signup_bad_name(api: Api, name: str) -> None:
    assert_validation(await signup(api, body(name=name)), "name")


async def test_signup_name_with_control_characters(api: Api) -> None:
    assert_validation(await signup(api, body(name="Bad\x00Name")), "name")


# --- email ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "email",
    [
        "",
        "not-an-email",
        "missing-at.example.com",
        "@example.com",
        "user@",
        "user@@example.com",
        "user name@example.com",
        "user@localhost",
        "user@example..com",
        "x" * 250 + "@example.com",
        "a" * 64 + "@" + ("b" * 60 + ".") * 4 + "com",
        "Someone <someone@example.com>",  # a display name is not an address
        "<someone@example.com>",
    ],
    ids=lambda e: e[:24] or "empty",
)
async def test_signup_invalid_email(api: Api, email: str) -> None:
    assert_validation(await signup(api, body(email=email)), "email")


async def test_signup_email_stored_lower_case(api: Api) -> None:
    email = unique_email("UPPER")
    reply = await signup(api, body(email=email.upper()))
    assert reply.status == 201, reply.text
    assert reply.body["user"]["email"] == email.lower()
    login = await api.login(email.lower(), PASSWORD)
    assert login.status == 200, login.text
    assert login.body["user"]["email"] == email.lower()


# --- password ---------------------------------------------------------------------------


@pytest.mark.parametrize("length", [8, 128])
async def test_signup_password_length_bounds_accepted(api: Api, length: int) -> None:
    password = "p" * length
    data = body(password=password)
    reply = await signup(api, data)
    assert reply.status == 201, reply.text
    login = await api.login(data["email"], password)
    assert login.status == 200, login.text


@pytest.mark.parametrize("length", [0, 1, 7, 129, 1000])
async def test_signup_password_bad_length(api: Api, length: int) -> None:
    assert_validation(await signup(api, body(password="p" * length)), "password")


async def test_signup_password_is_not_trimmed(api: Api) -> None:
    data = body(password="  padded pw  ")
    assert (await signup(api, data)).status == 201
    ok = await api.login(data["email"], "  padded pw  ")
    assert ok.status == 200, ok.text
    stripped = await api.login(data["email"], "padded pw")
    assert_problem(stripped, 401, "invalid_credentials")


# --- role -------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["professional", "client"])
async def test_signup_each_role(api: Api, role: str) -> None:
    reply = await signup(api, body(role=role))
    assert reply.status == 201, reply.text
    assert reply.body["user"]["role"] == role


@pytest.mark.parametrize("role", ["", "admin", "Client", "PROFESSIONAL", "clients", " client"])
async def test_signup_bad_role(api: Api, role: str) -> None:
    assert_validation(await signup(api, body(role=role)), "role")


# --- missing fields, wrong types, extra fields ------------------------------------------


@pytest.mark.parametrize("field", ["name", "email", "password", "role"])
async def test_signup_missing_field(api: Api, field: str) -> None:
    assert_validation(await signup(api, body(**{field: None})), field)


async def test_signup_empty_object_names_every_field(api: Api) -> None:
    assert_validation(await signup(api, {}), "name", "email", "password", "role")


async def test_signup_empty_body_counts_as_empty_object(api: Api) -> None:
    reply = await api.call(
        "POST", "/api/auth/signup", data=b"", headers={"Content-Type": "application/json"}
    )
    assert_validation(reply, "name", "email", "password", "role")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", 123),
        ("name", ["Ada"]),
        ("name", {"first": "Ada"}),
        ("name", True),
        ("email", 42),
        ("email", ["a@example.com"]),
        ("password", 12345678),
        ("password", 1234567890.5),
        ("password", ["long enough pass 1"]),
        ("password", True),
        ("role", 1),
        ("role", ["client"]),
        ("role", True),
    ],
)
async def test_signup_wrong_json_type(api: Api, field: str, value: Any) -> None:
    assert_validation(await signup(api, body(**{field: value})), field)


@pytest.mark.parametrize("field", ["name", "email", "password", "role"])
async def test_signup_null_field(api: Api, field: str) -> None:
    data = body()
    data[field] = None
    assert_validation(await signup(api, data), field)


async def test_signup_extra_fields_are_ignored(api: Api) -> None:
    data = body(role="client")
    data.update(
        {
            "id": 999_999,
            "is_admin": True,
            "password_hash": "x",
            "created_at": "2000-01-01T00:00:00Z",
            "mfa_enabled": True,
        }
    )
    reply = await signup(api, data)
    assert reply.status == 201, reply.text
    user = reply.body["user"]
    assert set(user) == {
        "id",
        "name",
        "email",
        "role",
        "created_at",
        "email_verified",
        "mfa_enabled",
    }
    assert user["id"] != 999_999
    assert user["role"] == "client"
    assert not user["created_at"].startswith("2000")
    assert user["mfa_enabled"] is False


@pytest.mark.parametrize("payload", [[], ["a"], "string", 42, None])
async def test_signup_body_not_an_object(api: Api, payload: Any) -> None:
    reply = await api.call(
        "POST",
        "/api/auth/signup",
        data=json.dumps(payload),
        headers={"Content-Type": "application/json"},
    )
    assert_validation(reply, "body")


async def test_signup_malformed_json(api: Api) -> None:
    reply = await api.call(
        "POST",
        "/api/auth/signup",
        data=b'{"name": "Ada",',
        headers={"Content-Type": "application/json"},
    )
    assert_problem(reply, 400, "malformed_json")


async def test_signup_body_not_json(api: Api) -> None:
    reply = await api.call(
        "POST",
        "/api/auth/signup",
        data=b"name=Ada&role=client",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_problem(reply, 415, "unsupported_media_type")


async def test_signup_failed_validation_creates_no_account(api: Api) -> None:
    data = body(password="short")
    assert_validation(await signup(api, data), "password")
    data["password"] = PASSWORD
    reply = await signup(api, data)
    assert reply.status == 201, reply.text
