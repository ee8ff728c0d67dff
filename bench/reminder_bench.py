"""Reminder scheduler under a burst: 1,000 reminders due in the same second, each sent once
and delivered (stream, then the professionals' notification logs) within 5 s of its time.

`python -m bench.reminder_bench sqlite|postgres` (REMINDERS=, PROFESSIONALS= to change).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import statistics
import sys
import time

import aiohttp
import redis.asyncio as aioredis

from services.common.consumer import decode_entry
from services.common.events import ACTIVITIES_STREAM

from .harness import log_findings, running_stack

REMINDERS = int(os.environ.get("REMINDERS", "1000"))
PROFESSIONALS = int(os.environ.get("PROFESSIONALS", "10"))
LEAD_MINUTES = 0.5  # REMINDER_MINUTES of the stack: 30 s before the start
TARGET_SECONDS = 5.0


async def seed(base: str, starts_at: dt.datetime) -> tuple[list[str], set[int]]:
    """Professionals, and REMINDERS activities of theirs that all start at `starts_at`."""
    async with aiohttp.ClientSession() as http:
        tokens = []
        for n in range(PROFESSIONALS):
            body = {
                "name": f"Bench professional {n}",
                "email": f"reminder-bench-{n}-{time.time_ns()}@example.com",
                "password": "correct horse battery",
                "role": "professional",
            }
            async with http.post(base + "/api/auth/signup", json=body) as resp:
                assert resp.status == 201, await resp.text()
                tokens.append((await resp.json())["token"])
        gate = asyncio.Semaphore(32)

        async def create(n: int) -> int:
            body = {"title": f"Session {n}", "starts_at": starts_at.isoformat()}
            headers = {"Authorization": f"Bearer {tokens[n % PROFESSIONALS]}"}
            async with (
                gate,
                http.post(base + "/api/activities/", json=body, headers=headers) as resp,
            ):
                assert resp.status == 201, await resp.text()
                return (await resp.json())["id"]

        ids = set(await asyncio.gather(*(create(n) for n in range(REMINDERS))))
    return tokens, ids


async def collect(redis_url: str, ids: set[int], deadline: float) -> list[tuple[str, int, float]]:
    """(event id, activity id, seconds since the epoch of its entry) of every reminder of
    these activities that reaches the stream before `deadline` (monotonic)."""
    client = aioredis.Redis.from_url(redis_url)
    found: list[tuple[str, int, float]] = []
    last = "0-0"
    try:
        while time.monotonic() < deadline and len(found) < len(ids):
            batch = await client.xread({ACTIVITIES_STREAM: last}, count=1000, block=200)
            for _stream, entries in batch or []:
                for entry_id, fields in entries:
                    last = entry_id.decode()
                    event = decode_entry(fields)
                    if event.type == "activity.reminder" and event.data.activity.id in ids:
                        at = int(last.split("-")[0]) / 1000
                        found.append((str(event.event_id), event.data.activity.id, at))
    finally:
        await client.aclose()
    return found


async def logs(base: str, tokens: list[str]) -> list[float]:
    """When each reminder was appended to its professional's notification log (the id's ms)."""
    times = []
    async with aiohttp.ClientSession() as http:
        for token in tokens:
            since = ""
            while True:
                url = f"{base}/api/notifications?limit=200&since={since}"
                async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
                    page = await resp.json()
                if not page:
                    break
                times += [
                    int(n["id"].split("-")[0]) / 1000
                    for n in page
                    if n["type"] == "activity.reminder"
                ]
                since = page[-1]["id"]
    return times


def figures(name: str, lags: list[float]) -> str:
    if not lags:
        return f"  {name}: none"
    ordered = sorted(lags)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"  {name}: {len(lags)} reminders, after their time "
        f"p50 {statistics.median(ordered):.2f} s, p99 {p99:.2f} s, "
        f"max {ordered[-1]:.2f} s (first {ordered[0]:.2f} s)"
    )


def main() -> None:
    backend = sys.argv[1] if len(sys.argv) > 1 else "sqlite"
    if backend not in ("sqlite", "postgres"):
        raise SystemExit("usage: python -m bench.reminder_bench [sqlite|postgres]")
    with running_stack(backend, REMINDER_MINUTES=str(LEAD_MINUTES)) as stack:
        # All due at one instant, far enough ahead for the seeding to finish first.
        starts_at = (
            dt.datetime.now(dt.UTC) + dt.timedelta(minutes=LEAD_MINUTES, seconds=25)
        ).replace(microsecond=0)
        due = (starts_at - dt.timedelta(minutes=LEAD_MINUTES)).timestamp()
        started = time.perf_counter()
        tokens, ids = asyncio.run(seed(stack.gateway_url, starts_at))
        print(
            f"\n{backend}: {len(ids)} activities of {PROFESSIONALS} professionals created in "
            f"{time.perf_counter() - started:.1f} s, every reminder due at "
            f"{dt.datetime.fromtimestamp(due, dt.UTC):%H:%M:%S} UTC"
        )
        wait = due - time.time()
        if wait < 1:
            raise SystemExit("seeding took too long: the reminders were due before it ended")
        deadline = time.monotonic() + wait + 20
        found = asyncio.run(collect(stack.redis_url, ids, deadline))
        time.sleep(1.0)  # the notifier appends right after the stream
        appended = asyncio.run(logs(stack.gateway_url, tokens))
        per_activity = [a for _e, a, _t in found]
        duplicates = len(per_activity) - len(set(per_activity))
        missing = len(ids - set(per_activity))
        stream_lags = [t - due for _e, _a, t in found]
        log_lags = [t - due for t in appended]
        print(figures("on activities.events", stream_lags))
        print(figures("in the notification logs", log_lags))
        worst = max(log_lags or [float("inf")])
        print(f"  sent twice: {duplicates}, missing: {missing}, in the logs: {len(appended)}")
        verdict = "ok" if worst <= TARGET_SECONDS and not duplicates and not missing else "MISSED"
        print(f"  target: all within {TARGET_SECONDS:.0f} s of their time, each once: {verdict}")
        print("\nprocess logs:")
        log_findings(stack)


if __name__ == "__main__":
    main()
