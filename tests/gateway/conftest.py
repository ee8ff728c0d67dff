"""Fixtures of the gateway tests: an API client and a private stack that tests may break."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator

import aiohttp
import pytest

from ..api import Api
from ..stack import Stack, own_stack, with_redis_db

# The Redis database of the private stacks (the shared stacks use 1 and 2).
EXTRA_REDIS_DB = 6


@pytest.fixture
def api(http: aiohttp.ClientSession, stack: Stack) -> Api:
    """The shared session stack, through its gateway."""
    return Api(http, stack.gateway_url, stack.inbox)


@pytest.fixture(scope="module")
def extra_stack(request: pytest.FixtureRequest, redis_base_url: str) -> Iterator[Stack]:
    """A stack of this module's own on SQLite, so tests may stop and restart its processes.

    A module sets `EXTRA_STACK_ENV = {...}` to start it with extra environment variables.
    Only one exists at a time (module scope), so they can all share one Redis database.
    """
    with own_stack(
        backend="sqlite",
        redis_url=with_redis_db(redis_base_url, EXTRA_REDIS_DB),
        extra_env=dict(getattr(request.module, "EXTRA_STACK_ENV", {})),
        prefix="hc-gw-extra-",
    ) as system:
        yield system


@pytest.fixture
def extra_api(http: aiohttp.ClientSession, extra_stack: Stack) -> Api:
    return Api(http, extra_stack.gateway_url, extra_stack.inbox)


@pytest.fixture
def service_down(
    extra_stack: Stack,
) -> Callable[[str], contextlib.AbstractAsyncContextManager[None]]:
    """`async with service_down("auth"): ...` stops a process of the extra stack for the
    block, then starts it again and waits until the whole stack is healthy."""

    @contextlib.asynccontextmanager
    async def stopped(name: str) -> AsyncIterator[None]:
        await asyncio.to_thread(extra_stack.stop_process, name)
        try:
            yield
        finally:
            await asyncio.to_thread(extra_stack.start_process, name)
            await asyncio.to_thread(extra_stack.wait_healthy, 30.0)

    return stopped
