"""Fixtures of the connections tests: an API client through the gateway and a stream reader."""

from __future__ import annotations

import aiohttp
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from ..api import Api
from ..stack import Stack
from .conn_support import StreamWatch


@pytest.fixture
def api(http: aiohttp.ClientSession, stack: Stack) -> Api:
    """The shared session stack, through its gateway."""
    return Api(http, stack.gateway_url, stack.inbox)


@pytest_asyncio.fixture
async def events(stack_redis: aioredis.Redis) -> StreamWatch:
    """`connections.events` from this moment on (earlier entries are never returned)."""
    return await StreamWatch.start(stack_redis, "connections.events")
