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


# A Redis database of its own for the mail stack.
MAIL_STACK_REDIS_DB = 14
MAIL_IP_LIMIT = 5


@pytest.fixture(scope="session")
def mail_stack(redis_base_url: str) -> Iterator[Stack]:
    """A SQLite stack that logs everything (LOG_LEVEL=DEBUG, for the check that no log line
    holds a secret) and throttles signup, verification resend and password reset at
    MAIL_IP_LIMIT per client address (tests set X-Forwarded-For straight at auth)."""
    import redis

    url = with_redis_db(redis_base_url, MAIL_STACK_REDIS_DB)
    redis.Redis.from_url(url).flushdb()
    limit = str(MAIL_IP_LIMIT)
    with tempfile.TemporaryDirectory(prefix="hc-stack-mail-") as tmp:
        system = Stack(
            backend="sqlite",
            root=Path(tmp),
            redis_url=url,
            extra_env={
                "LOG_LEVEL": "DEBUG",
                "AUTH_SIGNUP_MAX_PER_IP": limit,
                "AUTH_VERIFY_RESEND_MAX_PER_IP": limit,
                "AUTH_PASSWORD_RESET_MAX_PER_IP": limit,
                "AUTH_SIGNUP_MAX_PER_EMAIL": "10",
            },
        )
        try:
            system.start()
            yield system
        finally:
            system.stop()
