"""Fixtures of the auth tests: API clients per entry point and a stack with a low per-IP limit."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..api import Api
from ..stack import Stack, own_stack, with_redis_db

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
    with own_stack(
        backend="sqlite",
        redis_url=with_redis_db(redis_base_url, IP_STACK_REDIS_DB),
        extra_env={"AUTH_LOGIN_MAX_FAILURES_PER_IP": str(IP_LIMIT)},
        prefix="hc-stack-iplimit-",
    ) as system:
        yield system


# A Redis database of its own for the mail stack.
MAIL_STACK_REDIS_DB = 14
MAIL_IP_LIMIT = 5


@pytest.fixture(scope="session")
def mail_stack(redis_base_url: str) -> Iterator[Stack]:
    """A SQLite stack that logs everything (LOG_LEVEL=DEBUG, for the check that no log line
    holds a secret) and throttles signup, verification resend and password reset at
    MAIL_IP_LIMIT per client address (tests set X-Forwarded-For straight at auth)."""
    limit = str(MAIL_IP_LIMIT)
    with own_stack(
        backend="sqlite",
        redis_url=with_redis_db(redis_base_url, MAIL_STACK_REDIS_DB),
        extra_env={
            "LOG_LEVEL": "DEBUG",
            "AUTH_SIGNUP_MAX_PER_IP": limit,
            "AUTH_VERIFY_RESEND_MAX_PER_IP": limit,
            "AUTH_PASSWORD_RESET_MAX_PER_IP": limit,
            "AUTH_SIGNUP_MAX_PER_EMAIL": "10",
        },
        prefix="hc-stack-mail-",
    ) as system:
        yield system


# Redis databases of the module stacks below, one per backend (they may overlap in time).
MODULE_STACK_REDIS_DB = {"sqlite": 3, "postgres": 4}


@pytest.fixture(scope="module")
def module_stack(
    request: pytest.FixtureRequest, backend: str, redis_base_url: str, pg_url: str | None
) -> Iterator[Stack]:
    """A stack of the test module's own, on each backend, started with the module's
    `STACK_ENV` (settings the shared stack must not have: AUTH_REQUIRE_MFA, short
    session and token lifetimes)."""
    with own_stack(
        backend=backend,
        redis_url=with_redis_db(redis_base_url, MODULE_STACK_REDIS_DB[backend]),
        postgres_url=pg_url,
        extra_env=dict(request.module.STACK_ENV),
        prefix=f"hc-stack-{backend}-module-",
    ) as system:
        yield system


@pytest.fixture
def module_api(http, module_stack: Stack) -> Api:
    return Api(http, module_stack.gateway_url)
