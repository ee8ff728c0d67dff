"""Benchmark plumbing: a running stack, wrk runs, and a figures table."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.infra import postgres_url, redis_url
from tests.stack import Stack, with_redis_db

LUA_POST = """
wrk.method = "POST"
wrk.body = os.getenv("WRK_BODY")
wrk.headers["Content-Type"] = "application/json"
"""


@contextlib.contextmanager
def running_stack(backend: str = "sqlite", **extra_env: str) -> Iterator[Stack]:
    """The system on real processes, as `make run` starts it (SQLite) or on PostgreSQL."""
    with redis_url() as base, postgres_url() as pg:
        if backend == "postgres" and pg is None:
            raise SystemExit("no PostgreSQL available for the postgres backend")
        url = with_redis_db(base, 9)
        import redis

        redis.Redis.from_url(url).flushdb()
        with tempfile.TemporaryDirectory(prefix="hc-bench-") as tmp:
            stack = Stack(
                backend=backend,
                root=Path(tmp),
                redis_url=url,
                postgres_url=pg,
                # Production's pool size (tests/stack.py gives test stacks smaller ones).
                extra_env={"LOG_LEVEL": "WARNING", "DB_POOL_SIZE": "10", **extra_env},
            )
            try:
                stack.start()
                yield stack
            finally:
                stack.stop()


def post_json(url: str, body: dict, token: str | None = None) -> dict:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def wrk(
    url: str,
    *,
    token: str | None = None,
    body: dict | None = None,
    connections: int = 64,
    seconds: int = 10,
    threads: int = 2,
) -> dict[str, float]:
    """Run wrk and return req/s and p50/p99 latency in milliseconds."""
    exe = shutil.which("wrk")
    if exe is None:
        raise SystemExit("wrk is needed: apt-get install -y wrk (make bench installs it)")
    cmd = [exe, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    env = dict(os.environ)
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(LUA_POST)
    if body is not None:
        cmd += ["-s", script.name]
        env["WRK_BODY"] = json.dumps(body)
    out = subprocess.run([*cmd, url], capture_output=True, text=True, env=env, check=True).stdout
    os.unlink(script.name)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": _ms(re.search(r"\s50%\s+([\d.]+\w+)", out).group(1)),
        "p99": _ms(re.search(r"\s99%\s+([\d.]+\w+)", out).group(1)),
        "errors": float(sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))),
        # wrk leaves timed-out requests (over 2 s) out of its latencies: count them apart.
        "socket_errors": float(sum(int(n) for n in _socket_errors(out))),
        "requests": float(re.search(r"(\d+) requests in", out).group(1)),
    }


def _socket_errors(out: str) -> list[str]:
    found = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return list(found.groups()) if found else []


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(\w+)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def print_table(title: str, rows: list[tuple[str, dict[str, float]]]) -> None:
    print(f"\n{title}")
    print(f"{'case':<48} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for name, r in rows:
        print(f"{name:<48} {r['rps']:>9.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['errors']:>8.0f}")


def log_findings(stack: Stack) -> None:
    """Warnings and errors the processes logged during the run (LOG_LEVEL=WARNING)."""
    for name in ("gateway", "auth", "connections", "activities"):
        path = stack.log_path(name)
        text = path.read_text(errors="replace") if path.exists() else ""
        kinds: collections.Counter[str] = collections.Counter()
        for line in text.splitlines():
            if any(w in line for w in ("WARNING", "ERROR", "Traceback", "CRITICAL")):
                kinds[line.split(" ", 2)[-1][:150]] += 1  # drop the timestamp
        if not kinds:
            print(f"  {name}: no warnings or errors logged")
        for message, count in kinds.most_common(5):
            print(f"  {name}: {count} x {message}")
