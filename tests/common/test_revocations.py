"""A process's copy of the revocation list: loaded, kept in step, dropped when it may lag."""

from __future__ import annotations

import asyncio
import time
import uuid

import redis.asyncio as aioredis

from services.common.tokens import REVOCATION_CHANNEL, Identity, RevocationList

from ..api import eventually
from .conftest import stop


async def in_step(copy: RevocationList) -> None:
    async def following() -> bool:
        return copy.following

    await eventually(following, within=5)


def identity() -> Identity:
    return Identity(1, "client", uuid.uuid4().hex, uuid.uuid4().hex, int(time.time()) + 900)


async def test_the_copy_holds_earlier_and_later_revocations(
    redis_client: aioredis.Redis,
) -> None:
    before, after, session, untouched = identity(), identity(), identity(), identity()
    authority = RevocationList(redis_client)  # the auth service's side
    await authority.revoke(jti=before.jti, sid=None, expires_at=before.expires_at)

    copy = RevocationList(redis_client)
    assert not await copy.is_revoked(after, local=True)  # not following: Redis answers
    task = asyncio.create_task(copy.follow())
    try:
        await in_step(copy)
        assert await copy.is_revoked(before, local=True)  # loaded from Redis at start
        await authority.revoke(jti=after.jti, sid=None, expires_at=after.expires_at)
        await authority.revoke(jti=None, sid=session.sid, expires_at=session.expires_at)

        async def published() -> bool:
            return await copy.is_revoked(after, local=True) and await copy.is_revoked(
                session, local=True
            )

        await eventually(published, within=5)
        assert not await copy.is_revoked(untouched, local=True)
        # Garbage on the channel is ignored; the copy stays in step.
        await redis_client.publish(REVOCATION_CHANNEL, b"not json")
        await redis_client.publish(REVOCATION_CHANNEL, b"[1, 2]")
        late = identity()
        await authority.revoke(jti=late.jti, sid=None, expires_at=late.expires_at)

        async def late_seen() -> bool:
            return await copy.is_revoked(late, local=True)

        await eventually(late_seen, within=5)
        assert copy.following
    finally:
        await stop(task)
    assert not copy.following


async def test_an_expired_revocation_no_longer_counts(redis_client: aioredis.Redis) -> None:
    copy = RevocationList(redis_client)
    task = asyncio.create_task(copy.follow())
    try:
        await in_step(copy)
        gone = identity()
        # Published as expiring 20 s ago (the copy keeps 10 s of slack past `exp`).
        await RevocationList(redis_client).revoke(
            jti=gone.jti, sid=None, expires_at=int(time.time()) - 20
        )
        await asyncio.sleep(0.3)
        assert not await copy.is_revoked(gone, local=True)
    finally:
        await stop(task)


async def test_without_the_subscription_checks_go_to_redis(
    redis_client: aioredis.Redis,
) -> None:
    copy = RevocationList(redis_client)
    task = asyncio.create_task(copy.follow())

    await in_step(copy)
    await stop(task)
    revoked = identity()
    await RevocationList(redis_client).revoke(
        jti=revoked.jti, sid=None, expires_at=revoked.expires_at
    )
    assert await copy.is_revoked(revoked, local=True)  # answered by Redis
