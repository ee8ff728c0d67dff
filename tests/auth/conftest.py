"""Fixtures of the auth tests: API clients per entry point and a stack with a low per-IP limit."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..api import Api
from ..stack import Stack, with_redis_db

# A Redis database of its own for the extra stack (the shared stacks use 1 and 2).
IP_STACK_REDIS_DB = 13
IP_LIMIT = 100


@pytest.fixture
def api(http, stack) -> Api:
    """The system through the gateway."""
    return Api(http, stack.gateway_url)


@pytest.fixture
def auth_api(http, stack) -> Api:
    """The auth service called directly, bypassing the gateway."""
    return Api(http, stack.service_url("auth"))


@pytest.fixture
def connections_api(http, stack) -> Api:
    """The connections service called directly, bypassing the gateway."""
    return Api(http, stack.service_url("connections"))


@pytest.fixture(scope="session")
def ip_stack(redis_base_url: str) -> Iterator[Stack]:
    """A SQLite stack whose auth throttles one client address after 100 failed logins.

    Session-scoped so that it starts once however pytest orders the parametrised tests.
    """
    import redis

    url = with_redis_db(redis_base_url, IP_STACK_REDIS_DB)
    redis.Redis.from_url(url).flushdb()
    with tempfile.TemporaryDirectory(prefix="hc-stack-iplimit-") as tmp:
        system = Stack(
            backend="sqlite",
            root=Path(tmp),
            redis_url=url,
            extra_env={"AUTH_LOGIN_MAX_FAILURES_PER_IP": str(IP_LIMIT)},
        )
        try:
            system.start()
            yield system
        finally:
            system.stop()
