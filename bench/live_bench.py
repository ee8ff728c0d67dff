"""Live notifications: REST-returned -> frame-received latency under load, and one gateway
holding 10,000 sockets of 500 users (RSS per socket, fan-out frames/s).

Run: `.venv/bin/python -m bench.live_bench [latency|sockets|all]` (SQLite backend).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import resource
import statistics
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

from services.common.events import ConnectionData, ConnectionPayload, ConnectionRequested, Party
from services.common.outbox import encode

from .harness import running_stack

# Seeding speed only: the measured paths do not hash passwords.
CHEAP_ARGON2 = {"AUTH_ARGON2_TIME_COST": "1", "AUTH_ARGON2_MEMORY_KIB": "8192"}


async def signup(http: aiohttp.ClientSession, base: str, role: str) -> dict:
    body = {
        "name": f"{role} {uuid.uuid4().hex[:6]}",
        "email": f"{role}-{uuid.uuid4().hex[:12]}@bench.example.com",
        "password": "bench password",
        "role": role,
    }
    async with http.post(base + "/api/auth/signup", json=body) as resp:
        assert resp.status == 201, await resp.text()
        return await resp.json()


async def signups(http: aiohttp.ClientSession, base: str, role: str, n: int) -> list[dict]:
    gate = asyncio.Semaphore(16)

    async def one() -> dict:
        async with gate:
            return await signup(http, base, role)

    return await asyncio.gather(*(one() for _ in range(n)))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def latency(rate: int = 500, seconds: int = 10, bystanders: int = 1000) -> None:
    with running_stack("sqlite", **CHEAP_ARGON2) as stack:
        base, ws_base = stack.gateway_url, stack.gateway_url.replace("http", "ws")
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            pairs = 20
            pros = await signups(http, base, "professional", pairs)
            clients = await signups(http, base, "client", pairs)
            others = await signups(http, base, "client", bystanders)
            idle = [
                await http.ws_connect(ws_base + "/api/ws", protocols=("bearer", o["token"]))
                for o in others
            ]
            arrivals: dict[tuple[str, int], float] = {}

            async def call(method: str, path: str, token: str, body: dict) -> dict:
                async with http.request(
                    method, base + path, json=body, headers={"Authorization": f"Bearer {token}"}
                ) as resp:
                    assert resp.status in (200, 201), await resp.text()
                    return await resp.json()

            # Each pair: an accepted connection and one activity. A cycle is an invite
            # (activity.invited to the client) and a decline (activity.invite_declined to
            # the professional); a declined client may be invited again.
            activities = []
            for pro, client in zip(pros, clients, strict=True):
                conn = await call(
                    "POST",
                    "/api/connection/request-pro",
                    client["token"],
                    {"professional_id": pro["user"]["id"]},
                )
                await call(
                    "POST",
                    "/api/connection/respond",
                    pro["token"],
                    {"connection_id": conn["id"], "action": "accept"},
                )
                activity = await call(
                    "POST", "/api/activities/", pro["token"], {"title": "Bench", "capacity": 5}
                )
                activities.append(activity["id"])

            async def receive(ws: aiohttp.ClientWebSocketResponse) -> None:
                async for msg in ws:
                    now = time.perf_counter()
                    note = json.loads(msg.data)
                    if "invite" in note["data"]:
                        arrivals[(note["type"], note["data"]["invite"]["id"])] = now

            sockets = []
            for user in (*pros, *clients):
                ws = await http.ws_connect(ws_base + "/api/ws", protocols=("bearer", user["token"]))
                sockets.append(ws)
            readers = [asyncio.create_task(receive(ws)) for ws in sockets]
            returned: dict[tuple[str, int], float] = {}
            per_pair = rate / pairs / 2  # each cycle is two calls, each one notification
            deadline = time.perf_counter() + seconds

            async def cycle(pro: dict, client: dict, activity_id: int) -> None:
                interval = 1.0 / per_pair
                next_at = time.perf_counter()
                while time.perf_counter() < deadline:
                    invite = await call(
                        "POST",
                        "/api/activities/invite",
                        pro["token"],
                        {"activity_id": activity_id, "client_id": client["user"]["id"]},
                    )
                    returned[("activity.invited", invite["id"])] = time.perf_counter()
                    await call(
                        "POST",
                        "/api/activities/respond",
                        client["token"],
                        {"invite_id": invite["id"], "action": "decline"},
                    )
                    returned[("activity.invite_declined", invite["id"])] = time.perf_counter()
                    next_at += interval
                    await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

            started = time.perf_counter()
            await asyncio.gather(
                *(cycle(p, c, a) for p, c, a in zip(pros, clients, activities, strict=True))
            )
            elapsed = time.perf_counter() - started
            await asyncio.sleep(1.0)  # let the last frames land
            # A frame that arrived before the client read the reply counts as 0 ms, not less.
            raw = [(arrivals[k] - t) * 1000 for k, t in returned.items() if k in arrivals]
            lat = [max(0.0, v) for v in raw]
            missing = len(returned) - len(lat)
            for task in readers:
                task.cancel()
            for ws in (*sockets, *idle):
                await ws.close()
    print(f"\nlatency: REST call returned -> WebSocket frame received ({bystanders} other sockets)")
    print(f"  notifications {len(returned)} in {elapsed:.1f} s = {len(returned) / elapsed:.0f}/s")
    print(
        f"  p50 {statistics.median(lat):.2f} ms  p99 {pct(lat, 0.99):.2f} ms  "
        f"max {max(lat):.2f} ms  missing {missing}   (targets: p50 <= 5 ms, p99 <= 25 ms)"
    )
    early = sum(1 for v in raw if v < 0)
    print(
        f"  {early} of {len(lat)} frames arrived before the client had read the REST reply "
        "(a reply waits until its event is on the bus), counted as 0 ms"
    )


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def sockets(total: int = 10_000, users: int = 500, events: int = 20) -> None:
    """`total` sockets over `users` users: 20 each, GATEWAY_MAX_SOCKETS_PER_USER's default
    (past it the gateway closes a user's oldest). Before the cap this ran 100 users with
    100 sockets each; 500 recipients make 5 times as many log entries per event for the
    notifier, so its fan-out figures are not comparable with that run's."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65_536), hard))  # children inherit it
    with running_stack("sqlite", **CHEAP_ARGON2) as stack:
        base, ws_base = stack.gateway_url, stack.gateway_url.replace("http", "ws")
        gateway_pid = stack.procs["gateway"].pid
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            people = await signups(http, base, "client", users)
            await asyncio.sleep(1)
            before = rss_kib(gateway_pid)
            per_user = total // users
            gate = asyncio.Semaphore(200)

            async def open_one(token: str) -> aiohttp.ClientWebSocketResponse:
                async with gate:
                    return await http.ws_connect(
                        ws_base + "/api/ws", protocols=("bearer", token), autoping=True
                    )

            opened_at = time.perf_counter()
            socks = await asyncio.gather(
                *(open_one(p["token"]) for p in people for _ in range(per_user))
            )
            open_s = time.perf_counter() - opened_at
            await asyncio.sleep(2)
            after = rss_kib(gateway_pid)
            received = 0
            expected = len(socks) * events
            done = asyncio.Event()

            async def drain(ws: aiohttp.ClientWebSocketResponse) -> None:
                nonlocal received
                async for _ in ws:
                    received += 1
                    if received >= expected:
                        done.set()

            readers = [asyncio.create_task(drain(ws)) for ws in socks]
            redis = aioredis.Redis.from_url(stack.redis_url)
            recipients = [p["user"]["id"] for p in people]
            started = time.perf_counter()
            for i in range(events):
                event = ConnectionRequested(
                    data=ConnectionPayload(
                        connection=ConnectionData(
                            id=10_000 + i,
                            status="pending",
                            initiated_by="client",
                            professional=Party(id=1, name="Bench", email="b@example.com"),
                            client=Party(id=2, name="Bench", email="c@example.com"),
                            created_at=dt.datetime.now(dt.UTC),
                            updated_at=dt.datetime.now(dt.UTC),
                        )
                    ),
                    recipient_ids=recipients,
                )
                data = await encode(
                    event.to_json(), event_id=str(event.event_id), event_type=event.type
                )
                await redis.xadd("connections.events", {"__data__": data})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 120)
            took = time.perf_counter() - started
            await redis.aclose()
            for task in readers:
                task.cancel()
            await asyncio.gather(*(ws.close() for ws in socks), return_exceptions=True)
    per_socket = (after - before) / len(socks)
    print(f"\nsockets: one gateway process holding {len(socks)} WebSockets ({users} users)")
    print(f"  opened in {open_s:.1f} s; gateway RSS {before / 1024:.0f} -> {after / 1024:.0f} MiB")
    print(f"  RSS per socket {per_socket:.1f} KiB   (target <= 40 KiB)")
    print(
        f"  fan-out: {received} of {expected} frames in {took:.2f} s = "
        f"{received / took:.0f} frames/s   (target >= 5,000/s; client and server share 2 cores)"
    )


def main() -> None:
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    if which in ("latency", "all"):
        asyncio.run(latency())
    if which in ("sockets", "all"):
        asyncio.run(sockets())


if __name__ == "__main__":
    main()
