"""REST req/s on seeded data, gateway vs direct: `python -m bench.rest_bench [sqlite|postgres]`."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.stack import Stack

from .harness import log_findings, print_table, running_stack, wrk

PROS, CLIENTS, LINKS_PER_CLIENT, ACTIVITIES_PER_PRO, INVITES_PER_ACTIVITY = 20, 200, 2, 5, 8
SEED_CONCURRENCY = 16

# The Flask monolith this replaces (req/s on the same routes), and what we aim for.
MONOLITH = {"connection list": 420, "activities list": 300, "activity creation": 340}
MONOLITH_P99_MS = (210, 340)
READ_FACTOR, WRITE_FACTOR = 3, 2
P99_TARGET_MS = MONOLITH_P99_MS[0] / 2  # half the monolith's p99, taking its best figure
HOP_TARGET = 0.30


@dataclass
class Seeded:
    pros: list[dict] = field(default_factory=list)
    clients: list[dict] = field(default_factory=list)
    connections: int = 0
    activities: int = 0
    invites: int = 0
    answered: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


class Api:
    """The public API through the gateway, at most SEED_CONCURRENCY calls in flight."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http, self.base = http, base
        self.gate = asyncio.Semaphore(SEED_CONCURRENCY)

    async def post(self, path: str, body: dict, token: str | None = None, expect: int = 201):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        for attempt in range(20):
            async with (
                self.gate,
                self.http.post(self.base + path, json=body, headers=headers) as resp,
            ):
                if resp.status == expect:
                    return await resp.json()
                text = await resp.text()
            if resp.status in (429, 503) and attempt < 19:  # load shedding: back off, retry
                await asyncio.sleep(0.05 * (attempt + 1))
                continue
            raise RuntimeError(f"POST {path} -> {resp.status}: {text}")
        raise AssertionError("unreachable")

    async def get(self, path: str, token: str):
        headers = {"Authorization": f"Bearer {token}"}
        async with self.gate, self.http.get(self.base + path, headers=headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"GET {path} -> {resp.status}: {await resp.text()}")
            return await resp.json()


async def seed(base: str) -> Seeded:
    """20 professionals, 200 clients with 2 accepted connections each, 5 activities per
    professional with invites to 8 of their clients each, half accepted, a quarter declined."""
    out = Seeded()
    tag = uuid.uuid4().hex[:6]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        api = Api(http, base)

        async def phase(name: str, coros: list) -> list:
            started = time.perf_counter()
            results = await asyncio.gather(*coros)
            out.timings[name] = time.perf_counter() - started
            return results

        def signup(role: str, i: int):
            body = {
                "name": f"Bench {role.title()} {i}",
                "email": f"{role}-{i}-{tag}@bench.example.com",
                "password": "bench password",
                "role": role,
            }
            return api.post("/api/auth/signup", body)

        users = await phase(
            "signups",
            [signup("professional", i) for i in range(PROS)]
            + [signup("client", i) for i in range(CLIENTS)],
        )
        out.pros, out.clients = users[:PROS], users[PROS:]

        # Client i asks professionals i and i+7 (mod 20): 20 clients per professional.
        pairs = [(c, (c + 7 * k) % PROS) for c in range(CLIENTS) for k in range(LINKS_PER_CLIENT)]
        requested = await phase(
            "connection requests",
            [
                api.post(
                    "/api/connection/request-pro",
                    {"professional_id": out.pros[p]["user"]["id"]},
                    out.clients[c]["token"],
                )
                for c, p in pairs
            ],
        )
        await phase(
            "connection accepts",
            [
                api.post(
                    "/api/connection/respond",
                    {"connection_id": conn["id"], "action": "accept"},
                    out.pros[p]["token"],
                    expect=200,
                )
                for conn, (_c, p) in zip(requested, pairs, strict=True)
            ],
        )
        out.connections = len(requested)
        clients_of = {p: [c for c, q in pairs if q == p] for p in range(PROS)}

        activities = await phase(
            "activities",
            [
                api.post(
                    "/api/activities/",
                    {
                        "title": f"Session {k} of professional {p}",
                        "description": "Group session seeded by the REST benchmark.",
                        "capacity": INVITES_PER_ACTIVITY + 2,
                    },
                    out.pros[p]["token"],
                )
                for p in range(PROS)
                for k in range(ACTIVITIES_PER_PRO)
            ],
        )
        out.activities = len(activities)

        invite_plan = []  # (activity, professional index, client index)
        for n, activity in enumerate(activities):
            p, k = divmod(n, ACTIVITIES_PER_PRO)
            mine = clients_of[p]
            for j in range(INVITES_PER_ACTIVITY):
                invite_plan.append((activity, p, mine[(4 * k + j) % len(mine)]))
        invites = await phase(
            "invites",
            [
                api.post(
                    "/api/activities/invite",
                    {"activity_id": a["id"], "client_id": out.clients[c]["user"]["id"]},
                    out.pros[p]["token"],
                )
                for a, p, c in invite_plan
            ],
        )
        out.invites = len(invites)

        # Half accepted, a quarter declined, a quarter left pending.
        answers = []
        for n, (invite, (_a, _p, c)) in enumerate(zip(invites, invite_plan, strict=True)):
            action = ("accept", "accept", "decline", None)[n % 4]
            if action:
                out.answered[action] = out.answered.get(action, 0) + 1
                answers.append(
                    api.post(
                        "/api/activities/respond",
                        {"invite_id": invite["id"], "action": action},
                        out.clients[c]["token"],
                        expect=200,
                    )
                )
        await phase("invite answers", answers)
    return out


async def check_views(base: str, pro: str, client: str) -> dict[str, int]:
    """What each benchmarked call returns (item counts), so the figures have a size."""
    async with aiohttp.ClientSession() as http:
        api = Api(http, base)
        return {
            "professional connections": len(await api.get("/api/connection/list", pro)),
            "client connections": len(await api.get("/api/connection/list", client)),
            "professional activities": len(await api.get("/api/activities/list", pro)),
            "client invites": len(await api.get("/api/activities/list", client)),
        }


def run_wrk(stack: Stack, seeded: Seeded) -> list[tuple[str, str, str, dict, dict]]:
    """(route, role, monolith key, gateway figures, direct figures) per benchmarked call."""
    pro, client = seeded.pros[0]["token"], seeded.clients[0]["token"]
    writer = seeded.pros[1]["token"]  # creations go to another professional's list
    new_activity = {
        "title": "Benchmark session",
        "description": "Created by wrk through the REST benchmark.",
        "capacity": 12,
    }
    cases = [
        ("GET /api/connection/list", "professional", "connections", "connection list", pro, None),
        ("GET /api/connection/list", "client", "connections", "connection list", client, None),
        ("GET /api/activities/list", "professional", "activities", "activities list", pro, None),
        ("GET /api/activities/list", "client", "activities", "activities list", client, None),
        ("POST /api/activities/", "professional", "activities", "activity creation", writer, None),
    ]
    results = []
    for route, role, service, key, token, _ in cases:
        method, path = route.split(" ")
        body = new_activity if method == "POST" else None
        figures = {}
        for hop, base in (("gateway", stack.gateway_url), ("direct", stack.service_url(service))):
            pids = {"gateway": stack.procs["gateway"].pid, "service": stack.procs[service].pid}
            before = {k: cpu_seconds(pid) for k, pid in pids.items()}
            figures[hop] = wrk(base + path, token=token, body=body)
            requests = max(figures[hop]["requests"], 1.0)
            for k, pid in pids.items():
                figures[hop][f"cpu_{k}"] = (cpu_seconds(pid) - before[k]) * 1000 / requests
        results.append((route, role, key, figures["gateway"], figures["direct"]))
    return results


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def print_cpu(results: list[tuple[str, str, str, dict, dict]]) -> None:
    """CPU per request barely depends on what else the machine runs, unlike req/s."""
    print("\nCPU time per request (ms, from /proc; not counting PostgreSQL or Redis)")
    print(f"{'case':<48} {'gateway':>8} {'service':>8} {'ceiling req/s':>14}")
    for route, role, _key, gw, direct in results:
        for hop, r in (("gateway", gw), ("direct", direct)):
            busiest = r["cpu_service"]
            if hop == "gateway":
                busiest = max(busiest, r["cpu_gateway"])
            ceiling = 1000 / busiest if busiest else 0.0
            print(
                f"{route + ' (' + role + ', ' + hop + ')':<48} {r['cpu_gateway']:>8.2f} "
                f"{r['cpu_service']:>8.2f} {ceiling:>14.0f}"
            )
    print("  (ceiling: the busiest process given a whole core to itself)")


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def print_targets(results: list[tuple[str, str, str, dict, dict]]) -> None:
    print(
        f"\ntargets (through the gateway): reads >= {READ_FACTOR}x and writes >= {WRITE_FACTOR}x "
        f"the Flask monolith's req/s; p99 < {P99_TARGET_MS:.0f} ms (half the monolith's "
        f"{MONOLITH_P99_MS[0]}-{MONOLITH_P99_MS[1]} ms, strict end); gateway hop <= "
        f"{HOP_TARGET:.0%} of direct req/s"
    )
    print(f"{'check':<58} {'measured':>10} {'target':>18}  verdict")
    for route, role, key, gw, direct in results:
        factor = WRITE_FACTOR if route.startswith("POST") else READ_FACTOR
        floor = MONOLITH[key] * factor
        hop = (direct["rps"] - gw["rps"]) / direct["rps"] if direct["rps"] else 0.0
        failed = sum(r["errors"] + r["socket_errors"] for r in (gw, direct))
        name = f"{route} ({role})"
        checks = [
            (
                "req/s",
                f"{gw['rps']:.0f}",
                f">= {floor} ({MONOLITH[key]} x{factor})",
                gw["rps"] >= floor,
            ),
            ("p99", f"{gw['p99']:.1f} ms", f"< {P99_TARGET_MS:.0f} ms", gw["p99"] < P99_TARGET_MS),
            ("gateway hop", f"{hop:.1%}", f"<= {HOP_TARGET:.0%}", hop <= HOP_TARGET),
            ("non-2xx + socket errors", f"{failed:.0f}", "0", failed == 0),
        ]
        for what, measured, target, ok in checks:
            print(f"{name + ' ' + what:<58} {measured:>10} {target:>18}  {verdict(ok)}")


def main() -> None:
    backend = sys.argv[1] if len(sys.argv) > 1 else "sqlite"
    if backend not in ("sqlite", "postgres"):
        raise SystemExit("usage: python -m bench.rest_bench [sqlite|postgres]")
    with running_stack(backend) as stack:
        started = time.perf_counter()
        seeded = asyncio.run(seed(stack.gateway_url))
        took = time.perf_counter() - started
        print(f"\nseeded through the gateway in {took:.1f} s, {SEED_CONCURRENCY} calls in flight:")
        print(
            f"  {len(seeded.pros)} professionals, {len(seeded.clients)} clients, "
            f"{seeded.connections} accepted connections, {seeded.activities} activities, "
            f"{seeded.invites} invites ({seeded.answered.get('accept', 0)} accepted, "
            f"{seeded.answered.get('decline', 0)} declined, the rest pending)"
        )
        print("  " + ", ".join(f"{k} {v:.1f} s" for k, v in seeded.timings.items()))
        views = asyncio.run(
            check_views(stack.gateway_url, seeded.pros[0]["token"], seeded.clients[0]["token"])
        )
        print("  benchmarked views return: " + ", ".join(f"{k} {v}" for k, v in views.items()))
        results = run_wrk(stack, seeded)
        rows = []
        for route, role, _key, gw, direct in results:
            rows.append((f"{route} ({role}, gateway)", gw))
            rows.append((f"{route} ({role}, direct)", direct))
        print_table(f"REST bench on {backend}, 64 connections, 10 s each (wrk)", rows)
        socket = [(n, r) for n, r in rows if r["socket_errors"]]
        for name, r in socket:
            print(f"  {name}: {r['socket_errors']:.0f} socket errors/timeouts (left out of p99)")
        print_cpu(results)
        print_targets(results)
        print("\nprocess logs:")
        log_findings(stack)


if __name__ == "__main__":
    main()
