"""Auth speed through the gateway: signup, login, login with MFA, refresh, and read routes.

Run: `make bench` (or `.venv/bin/python -m bench.auth_bench [sqlite|postgres]`).

The writes take a new body each time (a new address, a new refresh token, a TOTP code
of an account that has not logged in this time step), so an async client drives them:
`CONCURRENCY` requests in flight, each route for a fixed number of requests. The read
routes (`GET /api/auth/me`, `GET /api/connection/list`, the directory) run under wrk, as
the other benchmarks' do. Argon2id has its production cost (19 MiB, t=2): it is most of
a signup's and a login's time. A build without MFA (older code) skips that row.

Each row also gives the CPU time per request of the gateway, auth and connections
processes (from /proc): unlike req/s it barely depends on what else the machine runs, so
it is the figure to compare between builds on a shared machine.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

import aiohttp
import pyotp

from tests.stack import Stack

from .harness import running_stack, wrk
from .rest_bench import cpu_seconds

PASSWORD = "bench password"
CONCURRENCY = 16
SIGNUPS = 300
LOGINS = 300
MFA_USERS = 300  # one login each: a TOTP code is good once per account and time step
REFRESHES = 2000


class CpuMeter:
    """CPU milliseconds per request of the stack's processes over one measured run."""

    NAMES = ("gateway", "auth", "connections")

    def __init__(self, stack: Stack) -> None:
        self.pids = {name: stack.procs[name].pid for name in self.NAMES}
        self.before: dict[str, float] = {}

    def start(self) -> None:
        self.before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def per_request(self, requests: float) -> dict[str, float]:
        return {
            f"cpu_{name}": (cpu_seconds(pid) - self.before[name]) * 1000 / max(requests, 1)
            for name, pid in self.pids.items()
        }


def print_rows(title: str, rows: list[tuple[str, dict[str, float]]]) -> None:
    print(f"\n{title}")
    head = f"{'case':<44} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>7}"
    print(head + "   CPU ms/request: gateway    auth  connections")
    for name, r in rows:
        print(
            f"{name:<44} {r['rps']:>7.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['errors']:>7.0f}"
            f"{'':>19}{r['cpu_gateway']:>7.2f} {r['cpu_auth']:>7.2f} {r['cpu_connections']:>12.2f}"
        )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def drive(count: int, request: Callable[[int], Awaitable[int]]) -> dict[str, float]:
    """`count` requests, `CONCURRENCY` at a time: req/s, p50/p99 (ms), non-2xx answers.
    Worker k sends requests k, k + CONCURRENCY, ... one after the other (so requests of
    one refresh-token chain never overlap)."""
    latencies: list[float] = []
    errors = 0

    async def worker(k: int) -> None:
        nonlocal errors
        for i in range(k, count, CONCURRENCY):
            started = time.perf_counter()
            status = await request(i)
            latencies.append((time.perf_counter() - started) * 1000)
            errors += not 200 <= status < 300

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(CONCURRENCY)))
    took = time.perf_counter() - started
    return {
        "rps": count / took,
        "p50": pct(latencies, 0.50),
        "p99": pct(latencies, 0.99),
        "errors": float(errors),
    }


async def post(http: aiohttp.ClientSession, url: str, body: dict, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.post(url, json=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


def signup_body(role: str = "client") -> dict:
    email = f"bench-{uuid.uuid4().hex[:12]}@example.com"
    return {"name": "Bench", "email": email, "password": PASSWORD, "role": role}


def step() -> int:
    return int(time.time() // 30)


async def with_mfa(http: aiohttp.ClientSession, gw: str) -> tuple[str, str, int] | None:
    """A new account with MFA on: its email, secret and the time step its confirmation
    used (None: this build has no MFA)."""
    body = signup_body()
    _, account = await post(http, gw + "/api/auth/signup", body)
    status, enrolment = await post(
        http, gw + "/api/auth/mfa/totp", {"password": PASSWORD}, account["token"]
    )
    if status == 404:
        return None
    assert status == 201, enrolment
    used = step()
    code = pyotp.TOTP(enrolment["secret"]).generate_otp(used)
    status, answer = await post(
        http, gw + "/api/auth/mfa/totp/confirm", {"code": code}, account["token"]
    )
    assert status == 200, answer
    return body["email"], enrolment["secret"], used


async def measure(gw: str, cpu: CpuMeter) -> tuple[list[tuple[str, dict[str, float]]], str]:
    rows: list[tuple[str, dict[str, float]]] = []

    async def run(name: str, count: int, request: Callable[[int], Awaitable[int]]) -> None:
        cpu.start()
        figures = await drive(count, request)
        rows.append((name, figures | cpu.per_request(count)))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def signup(_: int) -> int:
            status, _ = await post(http, gw + "/api/auth/signup", signup_body())
            return status

        await run("POST /api/auth/signup", SIGNUPS, signup)

        body = signup_body("professional")
        _, pro = await post(http, gw + "/api/auth/signup", body)
        login_body = {"email": body["email"], "password": PASSWORD}

        async def login(_: int) -> int:
            status, _ = await post(http, gw + "/api/auth/login", login_body)
            return status

        await run("POST /api/auth/login", LOGINS, login)

        gate = asyncio.Semaphore(CONCURRENCY)

        async def prepared() -> tuple[str, str] | None:
            async with gate:
                return await with_mfa(http, gw)

        accounts = await asyncio.gather(*(prepared() for _ in range(MFA_USERS)))
        if all(accounts):

            async def mfa_login(i: int) -> int:
                email, secret, used = accounts[i]
                # A step newer than the confirmation's (the next one is within the drift).
                code = pyotp.TOTP(secret).generate_otp(max(step(), used + 1))
                body = {"email": email, "password": PASSWORD, "otp": code}
                status, _ = await post(http, gw + "/api/auth/login", body)
                return status

            await run("POST /api/auth/login with otp (TOTP)", MFA_USERS, mfa_login)
        else:
            print("this build has no MFA: no login-with-MFA row")

        # One refresh-token chain per worker: each refresh hands the next one its token.
        chains = [
            (await post(http, gw + "/api/auth/login", login_body))[1]["refresh_token"]
            for _ in range(CONCURRENCY)
        ]

        async def refresh(i: int) -> int:
            chain = i % CONCURRENCY
            status, answer = await post(
                http, gw + "/api/auth/refresh", {"refresh_token": chains[chain]}
            )
            if status == 200:
                chains[chain] = answer["refresh_token"]
            return status

        await run("POST /api/auth/refresh", REFRESHES, refresh)
    return rows, pro["token"]


def main() -> None:
    backend = sys.argv[1] if len(sys.argv) > 1 else "sqlite"
    with running_stack(backend) as stack:
        gw, auth = stack.gateway_url, stack.service_url("auth")
        cpu = CpuMeter(stack)
        rows, token = asyncio.run(measure(gw, cpu))
        print_rows(
            f"auth bench on {backend}: writes {CONCURRENCY} in flight (async client), "
            "argon2id at its production cost",
            rows,
        )
        reads = []
        for name, url in (
            ("GET /api/auth/me (gateway)", gw + "/api/auth/me"),
            ("GET /api/auth/me (direct to auth)", auth + "/api/auth/me"),
            ("GET /api/users?role=professional (gateway)", gw + "/api/users?role=professional"),
            ("GET /api/connection/list (gateway)", gw + "/api/connection/list"),
        ):
            cpu.start()
            figures = wrk(url, token=token)
            reads.append((name, figures | cpu.per_request(figures["requests"])))
        print_rows(f"auth bench on {backend}: reads, 64 connections, 10 s each (wrk)", reads)


if __name__ == "__main__":
    main()
