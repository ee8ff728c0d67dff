"""Health of the gateway (/api/health, /api/health/live) and of each service (/health,
/health/live): up, degraded, cheap under a burst, and telling strangers nothing internal."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from ..api import Api, eventually
from ..stack import SERVICES, Stack

ROOT = Path(__file__).resolve().parents[2]
# The private stack logs each request (the access log is at INFO), so a test can count
# how often the gateway asked a service for its health.
EXTRA_STACK_ENV = {"LOG_LEVEL": "INFO"}
# Counters, leaders, socket counts and error texts the old answer carried.
INTERNALS = ("checks", "leader", "sockets", "frames_sent", "appended", "published", "error")


def assert_ok(reply) -> None:
    assert reply.status == 200, reply.text
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.body == {"status": "ok"}
    assert reply.headers["Cache-Control"] == "no-store"
    assert "Retry-After" not in reply.headers


async def test_health_ok_with_every_dependency(api: Api) -> None:
    for path in ("/api/health", "/api/health/"):
        reply = await api.call("GET", path)
        assert_ok(reply)
        assert reply.headers.get("X-Request-Id")


async def test_liveness_answers_without_looking_at_dependencies(api: Api) -> None:
    for path in ("/api/health/live", "/api/health/live/"):
        reply = await api.call("GET", path)
        assert_ok(reply)
        assert reply.headers.get("X-Request-Id")
    reply = await api.call("POST", "/api/health/live")
    assert reply.status == 405, reply.text


async def test_health_needs_no_token_and_ignores_a_bad_one(api: Api) -> None:
    assert_ok(await api.call("GET", "/api/health", token="not.a.token"))
    assert_ok(await api.call("GET", "/api/health/live", token="not.a.token"))


async def test_health_reveals_no_internals(api: Api, stack: Stack) -> None:
    for path in ("/api/health", "/api/health/live"):
        reply = await api.call("GET", path)
        assert reply.status == 200
        for secret in ("redis://", "postgresql", "sqlite", "password", stack.redis_url):
            assert secret not in reply.text
        for word in INTERNALS:
            assert word not in reply.text, (path, reply.text)


async def test_a_burst_of_probes_shares_one_check(http, extra_api: Api, extra_stack: Stack) -> None:
    """500 probes at once get 200, and the services are asked about once a second, not
    500 times: the readiness answer is cached and computed by one check at a time."""
    await eventually(lambda: _ok(extra_api), within=10)
    before = {name: _health_requests(extra_stack, name) for name in SERVICES}
    started = asyncio.get_running_loop().time()
    replies = await asyncio.gather(*(extra_api.call("GET", "/api/health") for _ in range(500)))
    elapsed = asyncio.get_running_loop().time() - started
    assert {r.status for r in replies} == {200}
    assert all(r.body == {"status": "ok"} for r in replies)
    await asyncio.sleep(0.3)  # let the access log lines reach the files
    for name in SERVICES:
        asked = _health_requests(extra_stack, name) - before[name]
        # One check per started second at most, plus the one the burst may have begun on.
        assert asked <= int(elapsed) + 2, (name, asked, elapsed)


async def test_each_service_has_its_own_health(http, stack: Stack) -> None:
    for name in SERVICES:
        direct = Api(http, stack.service_url(name))
        reply = await direct.call("GET", "/health")
        assert reply.status == 200, (name, reply.text)
        assert reply.body["status"] == "ok"
        assert reply.body["service"] == name
        checks = reply.body["checks"]
        for dep in ("database", "redis"):
            assert checks[dep]["status"] == "ok", (name, checks)
        assert all(c["status"] == "ok" for c in checks.values()), (name, checks)
        live = await direct.call("GET", "/health/live")
        assert live.status == 200, (name, live.text)
        assert live.body == {"status": "ok", "service": name}


async def test_a_burst_on_a_service_health_is_answered(http, extra_stack: Stack) -> None:
    """A service's own /health under 300 probes at once (one shared check: see
    tests/common/test_health_cache.py for the counting)."""
    direct = Api(http, extra_stack.service_url("activities"))
    replies = await asyncio.gather(*(direct.call("GET", "/health") for _ in range(300)))
    assert {r.status for r in replies} == {200}
    assert {r.headers["Cache-Control"] for r in replies} == {"no-store"}


@pytest.mark.parametrize("name", SERVICES)
async def test_health_degraded_while_a_service_is_down(
    http, extra_api: Api, extra_stack: Stack, service_down, name: str
) -> None:
    direct = Api(http, extra_stack.service_url(name))
    await eventually(lambda: _ok(extra_api), within=10)
    async with service_down(name):
        for path in ("/api/health", "/api/health/"):
            reply = await eventually(lambda p=path: _degraded(extra_api, p), within=5)
            assert reply.body == {"status": "degraded", "down": [name]}, reply.text
            assert int(reply.headers["Retry-After"]) > 0
            assert reply.headers["Cache-Control"] == "no-store"
            assert reply.headers.get("X-Request-Id")
        # Liveness says the gateway itself serves: a load balancer keeps it.
        assert_ok(await extra_api.call("GET", "/api/health/live"))
        # The container health check (docker-compose.yml) sees the gateway as unready.
        assert await _container_check(extra_stack.gateway_url + "/api/health") == 1
        assert await _container_check(extra_stack.gateway_url + "/api/health/live") == 0
        with pytest.raises(OSError):
            await direct.call("GET", "/health")
    # service_down restarted it and waited: health is whole again, the service's own too.
    assert_ok(await eventually(lambda: _ok(extra_api), within=5))
    reply = await direct.call("GET", "/health")
    assert reply.status == 200 and reply.body["service"] == name


async def test_the_container_health_check_passes_on_every_process(stack: Stack) -> None:
    """`python -m services.common.healthcheck URL`, as docker-compose.yml runs it."""
    assert await _container_check(stack.gateway_url + "/api/health") == 0
    for name in SERVICES:
        assert await _container_check(stack.service_url(name) + "/health") == 0
    assert await _container_check(stack.gateway_url + "/api/nothing-here") == 1


async def _container_check(url: str) -> int:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.common.healthcheck", url, cwd=ROOT
    )
    return await asyncio.wait_for(proc.wait(), 30)


async def _ok(api: Api):
    reply = await api.call("GET", "/api/health")
    return reply if reply.status == 200 else None


async def _degraded(api: Api, path: str):
    reply = await api.call("GET", path)
    return reply if reply.status == 503 else None


def _health_requests(stack: Stack, name: str) -> int:
    text = stack.log_path(name).read_text(errors="replace")
    return len(re.findall(r" GET /health \d{3} ", text))
