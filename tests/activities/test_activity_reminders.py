"""Reminders against running processes: once each, moved and dropped with the activity,
across a kill -9 and restart, and with two replicas of activities on one database."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from services.common.consumer import decode_entry
from services.common.events import ACTIVITIES_STREAM, Event

from ..api import Account, Api
from ..infra import free_port
from ..stack import ROOT, Stack, own_stack, with_redis_db
from .conftest import connected_clients, invite, respond

REMINDER_MINUTES = 0.05  # 3 s before the start
LEAD = dt.timedelta(minutes=REMINDER_MINUTES)
REDIS_DBS = {"sqlite": 8, "postgres": 9}  # no other test uses these


@pytest.fixture(scope="module")
def reminder_stack(backend: str, redis_base_url: str, pg_url: str | None) -> Iterator[Stack]:
    """A stack of its own whose reminders go out 3 s before the start."""
    with own_stack(
        backend=backend,
        redis_url=with_redis_db(redis_base_url, REDIS_DBS[backend]),
        postgres_url=pg_url,
        extra_env={"REMINDER_MINUTES": str(REMINDER_MINUTES)},
        prefix=f"hc-reminders-{backend}-",
    ) as system:
        yield system


@pytest.fixture
def rapi(http: aiohttp.ClientSession, reminder_stack: Stack) -> Api:
    return Api(http, reminder_stack.gateway_url)


@pytest_asyncio.fixture
async def rredis(reminder_stack: Stack) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(reminder_stack.redis_url)
    yield client
    await client.aclose()


def at(when: dt.datetime) -> str:
    return when.isoformat()


async def reminders(redis: aioredis.Redis, activity_ids: set[int]) -> list[tuple[Event, float]]:
    """Every activity.reminder of these activities on the stream, with its entry's time."""
    found = []
    for entry_id, fields in await redis.xrange(ACTIVITIES_STREAM):
        event = decode_entry(fields)
        if event.type == "activity.reminder" and event.data.activity.id in activity_ids:
            found.append((event, int(entry_id.split(b"-")[0]) / 1000))
    return found


async def wait_until(when: dt.datetime) -> None:
    delay = (when - dt.datetime.now(dt.UTC)).total_seconds()
    if delay > 0:
        await asyncio.sleep(delay)


async def new_activity(api: Api, pro: Account, starts_at: dt.datetime, **body: Any) -> int:
    reply = await api.call(
        "POST",
        "/api/activities/",
        json={"title": "Session", "starts_at": at(starts_at), **body},
        token=pro.token,
    )
    assert reply.status == 201, reply.text
    return reply.body["id"]


async def notified(api: Api, account: Account, kind: str) -> list[dict[str, Any]]:
    reply = await api.call("GET", "/api/notifications?limit=200", token=account.token)
    assert reply.status == 200, reply.text
    return [n for n in reply.body if n["type"] == kind]


async def test_reminders_go_once_to_the_right_people_and_follow_the_activity(
    rapi: Api, rredis: aioredis.Redis
) -> None:
    pro = await rapi.signup("professional")
    accepted, withdrawn, waiting, pending = await connected_clients(rapi, pro, 4)
    now = dt.datetime.now(dt.UTC)
    start = now + dt.timedelta(seconds=7)
    kept = await new_activity(rapi, pro, start, capacity=2, waitlist=True)
    moved = await new_activity(rapi, pro, start)
    dropped = await new_activity(rapi, pro, start)
    sent = {c.id: await invite(rapi, pro, kept, c) for c in (accepted, withdrawn, waiting, pending)}
    for c in (accepted, withdrawn):
        await respond(rapi, c, sent[c.id]["id"], "accept")
    await respond(rapi, withdrawn, sent[withdrawn.id]["id"], "withdraw")
    await respond(rapi, waiting, sent[waiting.id]["id"], "accept")  # a place is free: accepted
    new_start = start + dt.timedelta(seconds=6)
    reply = await rapi.call(
        "PATCH", f"/api/activities/{moved}", json={"starts_at": at(new_start)}, token=pro.token
    )
    assert reply.status == 200, reply.text
    reply = await rapi.call("DELETE", f"/api/activities/{dropped}", token=pro.token)
    assert reply.status == 204

    await wait_until(new_start - LEAD + dt.timedelta(seconds=2))
    found = await reminders(rredis, {kept, moved, dropped})
    by_activity = {e.data.activity.id: (e, t) for e, t in found}
    assert sorted(e.data.activity.id for e, _ in found) == sorted([kept, moved])  # once each
    event, when = by_activity[kept]
    assert event.recipient_ids == sorted([pro.id, accepted.id, waiting.id])
    assert (start - LEAD).timestamp() - 0.05 <= when <= (start - LEAD).timestamp() + 1.5
    moved_event, moved_when = by_activity[moved]
    assert moved_event.recipient_ids == [pro.id]
    assert moved_when >= (new_start - LEAD).timestamp() - 0.05
    assert moved_event.data.activity.starts_at == new_start.replace(
        microsecond=new_start.microsecond // 1000 * 1000
    )
    # Through the gateway's notifier into the logs.
    for account in (pro, accepted, waiting):
        assert len(await notified(rapi, account, "activity.reminder")) == (
            2 if account is pro else 1
        )
    for account in (withdrawn, pending):
        assert await notified(rapi, account, "activity.reminder") == []


async def test_reminders_due_while_activities_was_down_go_once_on_restart_if_not_started(
    rapi: Api, rredis: aioredis.Redis, reminder_stack: Stack
) -> None:
    pro = await rapi.signup("professional")
    now = dt.datetime.now(dt.UTC)
    starts_while_down = await new_activity(rapi, pro, now + dt.timedelta(seconds=5))
    due_while_down = await new_activity(rapi, pro, now + dt.timedelta(seconds=25))
    reminder_stack.stop_process("activities", signal.SIGKILL)
    # It comes back with reminders 30 s ahead (a restart takes longer than 3 s): the second
    # one's time passed while it was down, before its start; the first has started by then.
    reminder_stack.env["REMINDER_MINUTES"] = "0.5"
    try:
        await wait_until(now + dt.timedelta(seconds=6))
        reminder_stack.start_process("activities")
        await asyncio.to_thread(reminder_stack.wait_healthy)
        await asyncio.sleep(1.5)
        found = await reminders(rredis, {starts_while_down, due_while_down})
        assert [e.data.activity.id for e, _ in found] == [due_while_down]
        # The next restart is no second chance for it.
        reminder_stack.stop_process("activities")
        reminder_stack.start_process("activities")
        await asyncio.to_thread(reminder_stack.wait_healthy)
        await asyncio.sleep(1.5)
        assert len(await reminders(rredis, {starts_while_down, due_while_down})) == 1
    finally:
        reminder_stack.env["REMINDER_MINUTES"] = str(REMINDER_MINUTES)
        reminder_stack.stop_process("activities")
        reminder_stack.start_process("activities")
        await asyncio.to_thread(reminder_stack.wait_healthy)


async def test_two_replicas_send_each_reminder_once(
    rapi: Api, rredis: aioredis.Redis, reminder_stack: Stack
) -> None:
    env = {
        **reminder_stack.env,
        "ACTIVITIES_PORT": str(free_port()),
        "INSTANCE_ID": reminder_stack.env["INSTANCE_ID"] + "-b",
    }
    log = (reminder_stack.root / "activities-b.log").open("ab")
    replica = subprocess.Popen(
        [sys.executable, "-m", "services.activities"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{env['ACTIVITIES_PORT']}/health"
        await asyncio.to_thread(reminder_stack.wait_healthy, 60.0, url)
        pro = await rapi.signup("professional")
        now = dt.datetime.now(dt.UTC)
        ids = set(
            await asyncio.gather(
                *(
                    new_activity(rapi, pro, now + dt.timedelta(seconds=5, milliseconds=10 * n))
                    for n in range(30)
                )
            )
        )
        await wait_until(now + dt.timedelta(seconds=5))
        found = await reminders(rredis, ids)
        assert sorted(e.data.activity.id for e, _ in found) == sorted(ids)
        assert len({e.event_id for e, _ in found}) == len(ids)
        assert len(await notified(rapi, pro, "activity.reminder")) == len(ids)
    finally:
        replica.send_signal(signal.SIGTERM)
        try:
            replica.wait(10)
        except subprocess.TimeoutExpired:
            replica.kill()
            replica.wait()
        log.close()
    assert os.path.exists(reminder_stack.root / "activities-b.log")
