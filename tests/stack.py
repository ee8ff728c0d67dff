"""The whole system as real processes: three services, the gateway and a mail sink (the
real SMTP server of dev/mailsink.py, aiosmtpd) on free ports."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from .infra import free_port
from .mailbox import Inbox

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("auth", "connections", "activities")
PUBLIC_URL = "http://hc.test.example"  # the stacks' PUBLIC_URL: links in mail and feeds
MODULES = {name: f"services.{name}" for name in SERVICES} | {"gateway": "gateway"}


def run_async(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, even inside a running loop's thread."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def with_redis_db(url: str, db: int) -> str:
    base = url.split("?")[0].rstrip("/")
    head, _, last = base.rpartition("/")
    if last.isdigit() and head.count("/") >= 2:
        base = head
    return f"{base}/{db}"


async def _admin(url: str, statements: list[str]) -> None:
    import asyncpg

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


def _answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def create_database_sql(name: str) -> str:
    """UTF8 whatever the server's default, as deploy/postgres-init.sql does."""
    return (
        f"CREATE DATABASE \"{name}\" ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
    )


class Stack:
    """Services + gateway as subprocesses, on SQLite files or on PostgreSQL databases."""

    def __init__(
        self,
        *,
        backend: str,
        root: Path,
        redis_url: str,
        postgres_url: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.backend = backend
        self.root = root
        self.redis_url = redis_url
        self.postgres_url = postgres_url
        self.ports = {name: free_port() for name in MODULES}
        self.smtp_port = free_port()
        self.inbox = Inbox(self.mail_dir)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.databases: dict[str, str] = {}
        tag = uuid.uuid4().hex[:8]
        for name in SERVICES:
            if backend == "postgres":
                assert postgres_url
                self.databases[name] = (
                    make_url(postgres_url)
                    .set(database=f"hc_{tag}_{name}")
                    .render_as_string(hide_password=False)
                )
            else:
                self.databases[name] = f"sqlite+aiosqlite:///{root / (name + '.db')}"
        self.env = {
            **os.environ,
            "DATA_DIR": str(root),
            "REDIS_URL": redis_url,
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
            "INSTANCE_ID": f"test-{tag}",
            "CONSUMER_CLAIM_IDLE_MS": "1000",
            # Every test logs in from 127.0.0.1: keep the per-address throttle out of the
            # way (tests of it go straight to auth with their own X-Forwarded-For).
            "AUTH_LOGIN_MAX_FAILURES_PER_IP": "100000",
            # Several stacks share one PostgreSQL (CI's allows 100 connections): fewer
            # pooled connections per service than in production.
            "DB_POOL_SIZE": "4",
            # Mail goes to this stack's own sink; retried at least every second while it
            # is down (tests stop it).
            "SMTP_URL": f"smtp://127.0.0.1:{self.smtp_port}",
            "MAIL_RETRY_MAX_SECONDS": "1",
            # A sender killed with a claim (the fault suite kills auth) frees it in 5 s,
            # not the minute of production.
            "MAIL_CLAIM_SECONDS": "5",
            # Thousands of sign-ups and logins: argon2id at its cheapest here (the same
            # code path; production keeps OWASP's 19 MiB, t=2), or hashing is most of the
            # suite's CPU.
            "AUTH_ARGON2_TIME_COST": "1",
            "AUTH_ARGON2_MEMORY_KIB": "1024",
            "PUBLIC_URL": PUBLIC_URL,
            # The suites sign up thousands of accounts from 127.0.0.1 (tests of these
            # throttles use their own addresses, or a stack of their own).
            "AUTH_SIGNUP_MAX_PER_IP": "1000000",
            "AUTH_SIGNUP_MAX_PER_EMAIL": "1000",
            "AUTH_VERIFY_RESEND_MAX_PER_IP": "1000000",
            "AUTH_PASSWORD_RESET_MAX_PER_IP": "1000000",
            **(extra_env or {}),
        }
        for name, port in self.ports.items():
            self.env[f"{name.upper()}_PORT"] = str(port)
            if name != "gateway":
                self.env[f"{name.upper()}_URL"] = f"http://127.0.0.1:{port}"
                self.env[f"{name.upper()}_DATABASE_URL"] = self.databases[name]
        self.env.pop("DATABASE_URL", None)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    def service_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def log_path(self, name: str) -> Path:
        return self.root / f"{name}.log"

    @property
    def mail_dir(self) -> Path:
        return self.root / "mail"

    def start_mailsink(self) -> None:
        """The SMTP server the services send to (stop it with `stop_process("mailsink")`)."""
        log = self.log_path("mailsink").open("ab")
        command = [sys.executable, "-m", "dev.mailsink", "--port", str(self.smtp_port)]
        self.procs["mailsink"] = subprocess.Popen(
            [*command, "--dir", str(self.mail_dir)],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"mail sink did not listen:\n{self.logs('mailsink')}")

    def create_databases(self) -> None:
        if self.backend == "postgres":
            names = [make_url(u).database for u in self.databases.values()]
            run_async(_admin(self.postgres_url or "", [create_database_sql(n) for n in names]))

    def drop_databases(self) -> None:
        if self.backend == "postgres":
            names = [make_url(u).database for u in self.databases.values()]
            run_async(
                _admin(
                    self.postgres_url or "",
                    [f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)' for n in names],
                )
            )

    def start_process(self, name: str) -> None:
        if name == "mailsink":
            self.start_mailsink()
            return
        log = self.log_path(name).open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", MODULES[name]],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def stop_process(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name, None)
        if proc and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def wait_healthy(self, timeout: float = 60.0, url: str | None = None) -> None:
        """Until every process is ready. Each service is asked itself first: the gateway's
        readiness is cached for about a second, so right after a service restarts it may
        still give the answer it had before the service stopped."""
        urls = [url] if url else [self.service_url(n) + "/health" for n in SERVICES]
        if not url:
            urls.append(self.gateway_url + "/api/health")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited early:\n{self.logs(name)}")
            if all(_answers_200(u) for u in urls):
                return
            time.sleep(0.1)
        raise TimeoutError(f"stack not healthy after {timeout}s:\n{self.all_logs()}")

    def logs(self, name: str) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def all_logs(self) -> str:
        return "\n".join(f"--- {n} ---\n{self.logs(n)}" for n in MODULES)

    def start(self) -> None:
        self.create_databases()
        self.start_mailsink()
        for name in MODULES:
            self.start_process(name)
        self.wait_healthy()

    def stop(self) -> None:
        for name in list(self.procs):
            self.stop_process(name)
        self.drop_databases()


@contextlib.contextmanager
def own_stack(
    *,
    backend: str,
    redis_url: str,
    prefix: str,
    postgres_url: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """A started stack in a temporary folder, on a Redis database of its own (flushed
    first), stopped at the end."""
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        system = Stack(
            backend=backend,
            root=Path(tmp),
            redis_url=redis_url,
            postgres_url=postgres_url,
            extra_env=extra_env,
        )
        try:
            system.start()
            yield system
        finally:
            system.stop()
