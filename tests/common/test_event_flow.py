"""End to end: a sign-up through the gateway reaches the `auth.events` stream within 1 s."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import redis.asyncio as aioredis

from services.common.consumer import decode_entry
from services.common.events import AUTH_STREAM, UserRegistered

from ..api import Api
from ..stack import Stack


async def registrations_of(redis: aioredis.Redis, user_id: int) -> list[UserRegistered]:
    found = []
    for _, fields in await redis.xrange(AUTH_STREAM):
        event = decode_entry(fields)
        if event.type == "user.registered" and event.data.user.id == user_id:
            assert isinstance(event, UserRegistered)
            found.append(event)
    return found


async def test_signup_publishes_user_registered(
    stack: Stack, http: aiohttp.ClientSession, stack_redis: aioredis.Redis
) -> None:
    started = time.perf_counter()
    account = await Api(http, stack.gateway_url).signup("professional")
    deadline = started + 1.0
    while not (found := await registrations_of(stack_redis, account.id)):
        assert time.perf_counter() < deadline, "user.registered not on auth.events within 1 s"
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started

    [event] = found
    assert event.data.user.model_dump(mode="json") == account.user
    assert event.recipient_ids == []
    assert event.producer == "auth"
    assert elapsed < 1.0
    await asyncio.sleep(0.3)  # a relay that published twice would show it by now
    assert len(await registrations_of(stack_redis, account.id)) == 1
