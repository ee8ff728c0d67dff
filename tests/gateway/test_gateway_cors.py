"""CORS at the gateway: preflights, allowed and refused origins, and CORS_ORIGINS."""

from __future__ import annotations

import pytest

from ..api import Api, Reply, unique_email

DEFAULT_ORIGINS = ["http://localhost:3000", "http://127.0.0.1:3000"]
REFUSED_ORIGINS = [
    "http://evil.example",
    "http://localhost:3001",
    "https://localhost:3000",
    "http://localhost:3000.evil.example",
    "http://localhost",
    "null",
]
# The private stack's own list: spaces and a trailing slash are tolerated in the setting.
CONFIGURED = ["https://app.example.com", "http://other.example:8000"]
EXTRA_STACK_ENV = {"CORS_ORIGINS": " https://app.example.com/ , http://other.example:8000,"}

PREFLIGHT_PATHS = [
    ("POST", "/api/auth/signup"),
    ("POST", "/api/auth/login"),
    ("GET", "/api/auth/me"),
    ("GET", "/api/users"),
    ("GET", "/api/connection/list"),
    ("DELETE", "/api/connection/3"),
    ("POST", "/api/activities/"),
    ("GET", "/api/health"),
    ("GET", "/api/nowhere"),
]


def listed(header: str | None) -> set[str]:
    return {part.strip().lower() for part in (header or "").split(",") if part.strip()}


async def preflight(api: Api, path: str, origin: str, method: str) -> Reply:
    return await api.call(
        "OPTIONS",
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


def assert_allowed_preflight(reply: Reply, origin: str, method: str) -> None:
    assert reply.status == 204, (reply.status, reply.text)
    assert reply.headers.getall("Access-Control-Allow-Origin") == [origin]
    assert method.lower() in listed(reply.headers.get("Access-Control-Allow-Methods"))
    headers = listed(reply.headers.get("Access-Control-Allow-Headers"))
    assert {"authorization", "content-type", "idempotency-key"} <= headers, headers
    assert "origin" in listed(", ".join(reply.headers.getall("Vary", [])))
    assert not reply.text


def assert_cors_on(reply: Reply, origin: str) -> None:
    assert reply.headers.getall("Access-Control-Allow-Origin", []) == [origin], reply.headers
    exposed = listed(reply.headers.get("Access-Control-Expose-Headers"))
    assert {"x-request-id", "idempotent-replayed"} <= exposed, reply.headers
    assert reply.headers.get("X-Request-Id")


@pytest.mark.parametrize("origin", DEFAULT_ORIGINS)
async def test_preflight_from_allowed_origin(api: Api, origin: str) -> None:
    for method, path in PREFLIGHT_PATHS:
        reply = await preflight(api, path, origin, method)
        assert_allowed_preflight(reply, origin, method)


async def test_preflight_from_refused_origin_gets_no_allow_origin(api: Api) -> None:
    for origin in REFUSED_ORIGINS:
        for method, path in PREFLIGHT_PATHS[:4]:
            reply = await preflight(api, path, origin, method)
            assert reply.status < 500
            assert "Access-Control-Allow-Origin" not in reply.headers, (origin, reply.headers)
            assert "Access-Control-Allow-Methods" not in reply.headers, (origin, reply.headers)


@pytest.mark.parametrize("origin", DEFAULT_ORIGINS)
async def test_actual_responses_carry_cors_headers(api: Api, origin: str) -> None:
    headers = {"Origin": origin}
    account = await api.signup()
    ok = await api.call("GET", "/api/auth/me", token=account.token, headers=headers)
    assert ok.status == 200
    health = await api.call("GET", "/api/health", headers=headers)
    assert health.status == 200
    created = await api.call(
        "POST",
        "/api/auth/signup",
        headers=headers,
        json={
            "name": "C",
            "email": unique_email(),
            "password": "long enough pass 1",
            "role": "client",
        },
    )
    assert created.status == 201
    unauthorized = await api.call("GET", "/api/users", headers=headers)
    assert unauthorized.status == 401
    assert "www-authenticate" in listed(unauthorized.headers.get("Access-Control-Expose-Headers"))
    missing = await api.call("GET", "/api/nowhere", headers=headers)
    assert missing.status == 404
    invalid = await api.call("POST", "/api/auth/signup", json={}, headers=headers)
    assert invalid.status == 400
    wrong_method = await api.call("GET", "/api/auth/login", headers=headers)
    assert wrong_method.status == 405
    for reply in (ok, health, created, unauthorized, missing, invalid, wrong_method):
        assert_cors_on(reply, origin)


async def test_actual_responses_to_refused_origin_have_no_allow_origin(api: Api) -> None:
    account = await api.signup()
    for origin in REFUSED_ORIGINS:
        headers = {"Origin": origin}
        me = await api.call("GET", "/api/auth/me", token=account.token, headers=headers)
        # The request itself is still served: CORS is the browser's to enforce.
        assert me.status == 200
        for reply in (
            me,
            await api.call("GET", "/api/users", headers=headers),
            await api.call("GET", "/api/nowhere", headers=headers),
        ):
            assert "Access-Control-Allow-Origin" not in reply.headers, (origin, reply.headers)


async def test_no_origin_no_cors_headers(api: Api) -> None:
    reply = await api.call("GET", "/api/health")
    assert reply.status == 200
    assert "Access-Control-Allow-Origin" not in reply.headers


async def test_options_without_preflight_headers_is_not_a_preflight(api: Api) -> None:
    reply = await api.call("OPTIONS", "/api/auth/login", headers={"Origin": DEFAULT_ORIGINS[0]})
    assert reply.status != 204 and reply.status < 500, reply.text
    assert "Access-Control-Allow-Methods" not in reply.headers


async def test_configured_origins_are_allowed(extra_api: Api) -> None:
    for origin in CONFIGURED:
        for method, path in PREFLIGHT_PATHS[:5]:
            reply = await preflight(extra_api, path, origin, method)
            assert_allowed_preflight(reply, origin, method)
        reply = await extra_api.call("GET", "/api/users", headers={"Origin": origin})
        assert reply.status == 401
        assert_cors_on(reply, origin)
        reply = await extra_api.call("GET", "/api/health", headers={"Origin": origin})
        assert reply.status == 200
        assert_cors_on(reply, origin)


async def test_configured_origins_replace_the_defaults(extra_api: Api) -> None:
    for origin in [*DEFAULT_ORIGINS, "https://app.example.com:443", "http://app.example.com"]:
        reply = await preflight(extra_api, "/api/auth/login", origin, "POST")
        assert "Access-Control-Allow-Origin" not in reply.headers, (origin, reply.headers)
        reply = await extra_api.call("GET", "/api/health", headers={"Origin": origin})
        assert reply.status == 200
        assert "Access-Control-Allow-Origin" not in reply.headers, (origin, reply.headers)
