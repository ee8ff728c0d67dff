"""Health of the gateway (/api/health) and of each service (/health), up and degraded."""

from __future__ import annotations

import pytest

from ..api import Api
from ..stack import SERVICES, Stack

DEPENDENCIES = ("redis", *SERVICES)


def assert_all_ok(reply) -> None:
    assert reply.status == 200, reply.text
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.body["status"] == "ok"
    checks = reply.body["checks"]
    assert set(DEPENDENCIES) <= set(checks), checks
    for name in DEPENDENCIES:
        assert checks[name]["status"] == "ok", (name, checks[name])
    assert "Retry-After" not in reply.headers


async def test_health_ok_with_every_dependency(api: Api) -> None:
    for path in ("/api/health", "/api/health/"):
        reply = await api.call("GET", path)
        assert_all_ok(reply)
        assert reply.headers.get("X-Request-Id")


async def test_health_needs_no_token_and_ignores_a_bad_one(api: Api) -> None:
    reply = await api.call("GET", "/api/health", token="not.a.token")
    assert_all_ok(reply)


async def test_health_reveals_no_connection_strings(api: Api, stack: Stack) -> None:
    reply = await api.call("GET", "/api/health")
    assert reply.status == 200
    for secret in ("redis://", "postgresql", "sqlite", "password", stack.redis_url):
        assert secret not in reply.text


async def test_each_service_has_its_own_health(http, stack: Stack) -> None:
    for name in SERVICES:
        reply = await Api(http, stack.service_url(name)).call("GET", "/health")
        assert reply.status == 200, (name, reply.text)
        assert reply.body["status"] == "ok"
        assert reply.body["service"] == name
        checks = reply.body["checks"]
        for dep in ("database", "redis"):
            assert checks[dep]["status"] == "ok", (name, checks)
        assert all(c["status"] == "ok" for c in checks.values()), (name, checks)


@pytest.mark.parametrize("name", SERVICES)
async def test_health_degraded_while_a_service_is_down(
    http, extra_api: Api, extra_stack: Stack, service_down, name: str
) -> None:
    direct = Api(http, extra_stack.service_url(name))
    assert_all_ok(await extra_api.call("GET", "/api/health"))
    async with service_down(name):
        for path in ("/api/health", "/api/health/"):
            reply = await extra_api.call("GET", path)
            assert reply.status == 503, reply.text
            assert reply.body["status"] == "degraded"
            assert int(reply.headers["Retry-After"]) > 0
            checks = reply.body["checks"]
            assert checks[name]["status"] == "down", checks
            for other in DEPENDENCIES:
                if other != name:
                    assert checks[other]["status"] == "ok", (other, checks)
            assert reply.headers.get("X-Request-Id")
        with pytest.raises(OSError):
            await direct.call("GET", "/health")
    # service_down restarted it and waited: health is whole again, the service's own too.
    assert_all_ok(await extra_api.call("GET", "/api/health"))
    reply = await direct.call("GET", "/health")
    assert reply.status == 200 and reply.body["service"] == name
