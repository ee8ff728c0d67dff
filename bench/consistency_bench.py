"""Read-your-writes across services under load: `python -m bench.consistency_bench [backend]`.

One professional and CLIENTS clients work at once, each in ROUNDS rounds: the client
requests the professional, the professional accepts, then at once invites the client to
an activity (which activities allows only once its copy of connections has the accept);
the client then removes the connection, requests again, is accepted and invited again. At
the end every invite made after its connection's accept must still be pending (a late
removal of an older connection must not cancel it).

Prints: invites refused after an accept, wrong cancellations, 5xx answers, the latency
of the invites, and the part of it the read barrier took (the services' `Server-Timing:
copy;dur=` header).
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
    copy_ms: list[float] = []
    refused = 0
    made: dict[int, int] = {}  # invite id -> client id, for invites that must stay pending
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
    ) as http:
        api = Api(http, base)
        pro = await api.signup("professional")
        clients = await asyncio.gather(*(api.signup("client") for _ in range(CLIENTS)))

        async def connect_and_invite(client, title: str) -> tuple[int | None, int | None]:
            """Request, accept, then invite at once: (connection id, invite id) or Nones."""
            nonlocal refused
            activity = await api.call(
                "POST", "/api/activities/", json={"title": title}, token=pro.token
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
                return None, None
            acc = await api.call(
                "POST",
                "/api/connection/respond",
                json={"connection_id": req.body["id"], "action": "accept"},
                token=pro.token,
            )
            statuses[f"accept {acc.status}"] += 1
            if acc.status != 200:
                return req.body["id"], None
            t0 = time.perf_counter()
            inv = await api.call(
                "POST",
                "/api/activities/invite",
                json={"activity_id": activity.body["id"], "client_id": client.id},
                token=pro.token,
            )
            invite_ms.append((time.perf_counter() - t0) * 1000)
            if timing := inv.headers.get("Server-Timing", ""):  # the read barrier's own part
                copy_ms.append(float(timing.partition("dur=")[2] or 0))
            statuses[f"invite {inv.status}"] += 1
            refused += inv.status == 403
            return req.body["id"], inv.body["id"] if inv.status == 201 else None

        async def client_loop(client) -> None:
            for _ in range(ROUNDS):
                conn_id, _invite_id = await connect_and_invite(client, "Session")
                if conn_id is None:
                    continue
                # This removal cancels the pair's own invite above; the next round's
                # invite is made after it returned and must survive it.
                rem = await api.call("DELETE", f"/api/connection/{conn_id}", token=client.token)
                statuses[f"remove {rem.status}"] += 1
            _conn_id, invite_id = await connect_and_invite(client, "Last")
            if invite_id is not None:
                made[invite_id] = client.id  # must still be pending at the end

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
    print(
        f"  of which waiting for the copy of connections (Server-Timing): "
        f"p50 {pct(copy_ms, 0.5):.1f} ms, p99 {pct(copy_ms, 0.99):.1f} ms, "
        f"max {max(copy_ms, default=0):.1f} ms"
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
