"""A service killed (-9) between applying a change and answering: the retry replays.

Real processes on SQLite and PostgreSQL, with a Redis of their own that a test may freeze.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from services.common.events import ACTIVITIES_STREAM

from ..api import Api, Reply
from ..infra import RedisServer
from ..stack import Stack
from .conftest import keyed, scalar

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def crash_stack(backend: str, pg_url: str | None) -> Iterator[tuple[Stack, RedisServer]]:
    """A stack of this module's own, whose services it kills and whose Redis it freezes.
    The revocation check is off, so that while Redis is frozen a request still reaches
    its commit (and then waits for its event to be published: the window under test)."""
    with tempfile.TemporaryDirectory(prefix=f"hc-idem-{backend}-") as tmp:
        redis = RedisServer(Path(tmp) / "redis")
        redis.start()
        system = Stack(
            backend=backend,
            root=Path(tmp),
            redis_url=redis.url,
            postgres_url=pg_url,
            extra_env={"CHECK_REVOCATION": "false"},
        )
        try:
            system.start()
            yield system, redis
        finally:
            system.stop()
            redis.stop()


def restart(stack: Stack, name: str) -> None:
    stack.start_process(name)
    stack.wait_healthy(60)


async def test_a_retry_after_a_kill_between_commit_and_reply_replays(
    http: aiohttp.ClientSession, crash_stack: tuple[Stack, RedisServer]
) -> None:
    stack, redis = crash_stack
    api = Api(http, stack.gateway_url)
    pro = await api.signup("professional")
    key, body = uuid.uuid4().hex, {"title": f"Crash {uuid.uuid4().hex[:6]}"}
    service = stack.procs["activities"]
    recorded = "SELECT count(*) FROM idempotency_keys WHERE key = :key"

    assert redis.proc is not None
    # Frozen Redis: the relay cannot publish, so the service holds its reply (up to
    # 0.5 s, see Outbox.middleware) after committing. The test kills it in that window,
    # as soon as the change and its record are visible in the database.
    os.kill(redis.proc.pid, signal.SIGSTOP)
    try:
        call = asyncio.ensure_future(
            api.call("POST", "/api/activities/", json=body, headers=keyed(pro, key))
        )
        deadline = time.monotonic() + 30
        while not await scalar(stack, "activities", recorded, key=key):
            assert time.monotonic() < deadline, "the change never committed"
            assert not call.done(), (await call).text
        os.kill(service.pid, signal.SIGKILL)
        lost: Reply = await call
        assert lost.status == 503, lost.text  # the caller never got the 201
    finally:
        os.kill(redis.proc.pid, signal.SIGCONT)
    service.wait(10)
    stack.procs.pop("activities")
    restart(stack, "activities")

    retry = await api.call("POST", "/api/activities/", json=body, headers=keyed(pro, key))
    assert retry.status == 201, retry.text
    assert retry.headers["Idempotent-Replayed"] == "true"
    # Like a first answer, the replay left once the change's event was on the stream.
    client = aioredis.Redis.from_url(redis.url)
    try:
        entries = await client.xrange(ACTIVITIES_STREAM)
    finally:
        await client.aclose()
    assert any(body["title"].encode() in b"".join(e.values()) for _, e in entries)
    mine = await api.call("GET", "/api/activities/list", token=pro.token)
    assert [a["id"] for a in mine.body] == [retry.body["id"]]
    events = "SELECT count(*) FROM outbox WHERE type = 'activity.created' AND payload LIKE :p"
    title = f'%"title":"{body["title"]}"%'
    assert await scalar(stack, "activities", events, p=title) == 1


async def test_every_key_of_a_burst_cut_by_a_kill_applies_once(
    http: aiohttp.ClientSession, crash_stack: tuple[Stack, RedisServer]
) -> None:
    """Many creates in flight when the service dies: whatever each caller saw, retrying
    every key gives one activity per key, and each answer is the same on every retry."""
    stack, _ = crash_stack
    api = Api(http, stack.gateway_url)
    pro = await api.signup("professional")
    n = 60
    keys = [uuid.uuid4().hex for _ in range(n)]

    async def create(i: int) -> Reply:
        body = {"title": f"Burst {i}"}
        try:
            return await api.call(
                "POST", "/api/activities/", json=body, headers=keyed(pro, keys[i])
            )
        except aiohttp.ClientError as exc:
            return Reply(0, {}, None, repr(exc))

    burst = [asyncio.ensure_future(create(i)) for i in range(n)]
    recorded = "SELECT count(*) FROM idempotency_keys WHERE scope = :scope"
    scope = f"user:{pro.id}"
    deadline = time.monotonic() + 30
    while await scalar(stack, "activities", recorded, scope=scope) < n // 4:
        assert time.monotonic() < deadline
    service = stack.procs.pop("activities")
    service.send_signal(signal.SIGKILL)
    first = await asyncio.gather(*burst)
    service.wait(10)
    restart(stack, "activities")

    assert any(r.status != 201 for r in first), "the kill came too late to cut the burst"
    retried = await asyncio.gather(*(create(i) for i in range(n)))
    assert [r.status for r in retried] == [201] * n, [r.text for r in retried if r.status != 201]
    for before, after in zip(first, retried, strict=True):
        if before.status == 201:  # answered before the kill: the retry is its replay
            assert after.headers["Idempotent-Replayed"] == "true"
            assert after.text == before.text
    again = await asyncio.gather(*(create(i) for i in range(n)))
    assert [r.text for r in again] == [r.text for r in retried]
    assert all(r.headers["Idempotent-Replayed"] == "true" for r in again)
    mine = await api.call("GET", "/api/activities/list?limit=200", token=pro.token)
    assert sorted(a["title"] for a in mine.body) == sorted(f"Burst {i}" for i in range(n))
    assert sorted(a["id"] for a in mine.body) == sorted(r.body["id"] for r in retried)
    assert "idempotency:" not in stack.log_path("activities").read_text()
