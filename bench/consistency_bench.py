"""Read-your-writes across services under load: `python -m bench.consistency_bench [backend]`.

One professional and CLIENTS clients work at once, each in ROUNDS rounds: the client
requests the professional, the professional accepts, then at once invites the client to
an activity (which activities allows only once its copy of connections has the accept);
the client then removes the connection, requests again, is accepted and invited again. At
the end every invite made after its connection's accept must still be pending (a late
removal of an older connection must not cancel it).

Prints: invites refused after an accept, wrong cancellations, 5xx answers, and the
latency of the invites (the read barrier's wait is most of it).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter

import aiohttp

from tests.api import Api

from .harness import log_findings, running_stack

CLIENTS = int(os.environ.get("CLIENTS", "50"))
ROUNDS = 3


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def run(base: str) -> None:
    statuses: Counter[str] = Counter()
    invite_ms: list[float] = []
    refused = 0
    made: dict[int, int] = {}  # invite id -> client id, for invites that must stay pending
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
    ) as http:
        api = Api(http, base)
        pro = await api.signup("professional")
        clients = await asyncio.gather(*(api.signup("client") for _ in range(CLIENTS)))

        async def client_loop(client) -> None:
            nonlocal refused
            for _ in range(ROUNDS):
                activity = await api.call(
                    "POST", "/api/activities/", json={"title": "Session"}, token=pro.token
                )
                statuses[f"create {activity.status}"] += 1
                req = await api.call(
                    "POST",
                    "/api/connection/request-pro",
                    json={"professional_id": pro.id},
                    token=client.token,
                )
                statuses[f"request {req.status}"] += 1
                if req.status != 201:
                    continue
                conn_id = req.body["id"]
                acc = await api.call(
                    "POST",
                    "/api/connection/respond",
                    json={"connection_id": conn_id, "action": "accept"},
                    token=pro.token,
                )
                statuses[f"accept {acc.status}"] += 1
                if acc.status != 200:
                    continue
                t0 = time.perf_counter()
                inv = await api.call(
                    "POST",
                    "/api/activities/invite",
                    json={"activity_id": activity.body["id"], "client_id": client.id},
                    token=pro.token,
                )
                invite_ms.append((time.perf_counter() - t0) * 1000)
                statuses[f"invite {inv.status}"] += 1
                if inv.status == 403:
                    refused += 1
                elif inv.status == 201:
                    made[inv.body["id"]] = client.id
                rem = await api.call("DELETE", f"/api/connection/{conn_id}", token=client.token)
                statuses[f"remove {rem.status}"] += 1
                # The invite above was cancelled by this removal (it is the pair's own);
                # the next round's invite is made after it and must survive it.
                if inv.status == 201:
                    made.pop(inv.body["id"], None)

            # A last connection whose invite must stay pending.
            req = await api.call(
                "POST",
                "/api/connection/request-pro",
                json={"professional_id": pro.id},
                token=client.token,
            )
            if req.status == 201:
                await api.call(
                    "POST",
                    "/api/connection/respond",
                    json={"connection_id": req.body["id"], "action": "accept"},
                    token=pro.token,
                )
                activity = await api.call(
                    "POST", "/api/activities/", json={"title": "Last"}, token=pro.token
                )
                t0 = time.perf_counter()
                inv = await api.call(
                    "POST",
                    "/api/activities/invite",
                    json={"activity_id": activity.body["id"], "client_id": client.id},
                    token=pro.token,
                )
                invite_ms.append((time.perf_counter() - t0) * 1000)
                statuses[f"invite {inv.status}"] += 1
                if inv.status == 403:
                    refused += 1
                elif inv.status == 201:
                    made[inv.body["id"]] = client.id

        started = time.perf_counter()
        await asyncio.gather(*(client_loop(c) for c in clients))
        elapsed = time.perf_counter() - started
        await asyncio.sleep(3)  # let late events arrive before the final check
        wrong = 0
        for client in clients:
            reply = await api.call("GET", "/api/activities/list?limit=200", token=client.token)
            for invite in reply.body:
                if invite["id"] in made and invite["status"] != "pending":
                    wrong += 1
    five = sum(n for k, n in statuses.items() if k.split()[-1].startswith("5"))
    print(f"\n{CLIENTS} clients x {ROUNDS + 1} connections, one professional, {elapsed:.1f} s")
    print(
        f"  invites: {len(invite_ms)}, p50 {pct(invite_ms, 0.5):.1f} ms, "
        f"p99 {pct(invite_ms, 0.99):.1f} ms, max {max(invite_ms, default=0):.1f} ms"
    )
    print(f"  refused after accept (403): {refused}")
    print(f"  invites wrongly cancelled later: {wrong} of {len(made)}")
    print(f"  5xx answers: {five}")
    print("  statuses:", dict(sorted(statuses.items())))


def main() -> None:
    backend = sys.argv[1] if len(sys.argv) > 1 else "sqlite"
    with running_stack(backend) as stack:
        asyncio.run(run(stack.gateway_url))
        log_findings(stack)


if __name__ == "__main__":
    main()
