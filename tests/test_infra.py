"""tests/infra.py falls back to local binaries when a Docker engine answers but cannot
provide a container: no registry to pull from and no local image, a pull whose stream
ends in an error, or a container (Ryuk's) that the engine refuses to start.

The engine is a small HTTP server of this test's own on a loopback port, speaking the few
calls of the Docker Engine API that docker-py and testcontainers make; DOCKER_HOST points
at it. No real daemon is started (one would make every other test run on this machine
try testcontainers).
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import redis

from .infra import docker_container, free_port, postgres_url, redis_url

API_VERSION = "1.43"
REGISTRY_DOWN = (
    'Get "https://registry-1.docker.io/v2/": dial tcp: lookup registry-1.docker.io: no such host'
)


class FakeEngine(ThreadingHTTPServer):
    """`mode`: "no-registry" (no local images, pulls answer 500), "pull-stream-error"
    (a pull answers 200 but its stream ends in an error), "start-fails" (images are
    present, containers are created but starting them answers 500)."""

    daemon_threads = True

    def __init__(self, mode: str) -> None:
        super().__init__(("127.0.0.1", free_port()), _Handler)
        self.mode = mode
        self.calls: list[tuple[str, str]] = []
        self.containers: dict[str, dict[str, Any]] = {}
        self.removed: list[str] = []

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"tcp://{host}:{port}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeEngine

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _reply(self, status: int, body: Any = None, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Api-Version", API_VERSION)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self) -> None:
        url = urlsplit(self.path)
        path = url.path.removeprefix(f"/v{API_VERSION}")
        query = parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"null") if length else None
        engine = self.server
        engine.calls.append((self.command, path))
        method = self.command
        if path == "/_ping":
            return self._reply(200, raw=b"OK")
        if path == "/version":
            return self._reply(
                200,
                {
                    "ApiVersion": API_VERSION,
                    "MinAPIVersion": "1.12",
                    "Version": "24.0.7",
                    "Os": "linux",
                    "Arch": "amd64",
                    "Components": [{"Name": "Engine", "Version": "24.0.7"}],
                },
            )
        if path == "/info":
            return self._reply(200, {"ID": "fake", "OperatingSystem": "fake", "Name": "fake"})
        if method == "GET" and path.startswith("/images/") and path.endswith("/json"):
            if engine.mode == "start-fails":
                return self._reply(200, {"Id": "sha256:" + "0" * 64, "RepoTags": [path[8:-5]]})
            return self._reply(404, {"message": f"No such image: {path[8:-5]}"})
        if method == "POST" and path == "/images/create":
            if engine.mode == "pull-stream-error":
                lines = [
                    {"status": "Pulling from library/x"},
                    {"errorDetail": {"message": REGISTRY_DOWN}, "error": REGISTRY_DOWN},
                ]
                return self._reply(200, raw=b"\r\n".join(json.dumps(x).encode() for x in lines))
            return self._reply(500, {"message": REGISTRY_DOWN})
        if method == "POST" and path == "/containers/create":
            if engine.mode != "start-fails":
                return self._reply(404, {"message": f"No such image: {body.get('Image')}"})
            cid = uuid.uuid4().hex
            name = query.get("name", [cid[:12]])[0]
            engine.containers[cid] = {"name": name, "status": "created", "image": body["Image"]}
            return self._reply(201, {"Id": cid, "Warnings": []})
        if path.startswith("/containers/"):
            return self._container(method, path.split("/")[2], path, query)
        return self._reply(404, {"message": f"page not found: {method} {path}"})

    def _container(self, method: str, cid: str, path: str, query: dict) -> None:
        engine = self.server
        if method == "GET" and path == "/containers/json":
            filters = json.loads(query.get("filters", ["{}"])[0])
            names = filters.get("name", [])
            statuses = filters.get("status", [])
            found = [
                {"Id": i, "Names": ["/" + c["name"]], "State": c["status"], "Image": c["image"]}
                for i, c in engine.containers.items()
                if all(n in c["name"] for n in names) and (not statuses or c["status"] in statuses)
            ]
            return self._reply(200, found)
        container = engine.containers.get(cid)
        if container is None:
            return self._reply(404, {"message": f"No such container: {cid}"})
        if method == "GET" and path.endswith("/json"):
            return self._reply(
                200,
                {
                    "Id": cid,
                    "Name": "/" + container["name"],
                    "Image": container["image"],
                    "State": {"Status": container["status"], "Running": False},
                    "Config": {"Image": container["image"], "Labels": {}},
                    "NetworkSettings": {"Ports": {}},
                },
            )
        if method == "POST" and path.endswith("/start"):
            return self._reply(500, {"message": "driver failed programming external connectivity"})
        if method == "DELETE":
            del engine.containers[cid]
            engine.removed.append(container["name"])
            return self._reply(204)
        return self._reply(404, {"message": f"page not found: {method} {path}"})

    do_GET = do_POST = do_DELETE = do_HEAD = _route


@contextlib.contextmanager
def fake_engine(mode: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeEngine]:
    engine = FakeEngine(mode)
    thread = threading.Thread(target=engine.serve_forever, daemon=True)
    thread.start()
    for name in ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    for name in ("TEST_POSTGRES_URL", "DATABASE_URL", "TESTCONTAINERS_RYUK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DOCKER_HOST", engine.url)
    try:
        yield engine
    finally:
        engine.shutdown()
        engine.server_close()


def _redis_container() -> Any:
    from testcontainers.community.redis import RedisContainer

    return RedisContainer("redis:7-alpine")


def _postgres_container() -> Any:
    from testcontainers.community.postgres import PostgresContainer

    return PostgresContainer("postgres:16-alpine", driver="asyncpg")


@pytest.mark.parametrize("mode", ["no-registry", "pull-stream-error", "start-fails"])
@pytest.mark.parametrize("factory", [_redis_container, _postgres_container])
def test_an_engine_that_cannot_provide_the_image_counts_as_none(
    mode: str, factory: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with fake_engine(mode, monkeypatch) as engine:
        assert docker_container(factory) is None
    # It was really asked: for Ryuk's image first, which it could not provide.
    assert ("GET", "/version") in engine.calls
    if mode == "start-fails":
        assert any(p.endswith("/start") for _, p in engine.calls)
        # The Ryuk container created but never started is removed again.
        assert engine.removed and all(n.startswith("testcontainers-ryuk-") for n in engine.removed)
        assert engine.containers == {}
    else:
        assert ("POST", "/images/create") in engine.calls
    assert "cannot provide" in caplog.text


def test_with_such_an_engine_the_suite_gets_a_local_redis_and_postgresql(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with fake_engine("no-registry", monkeypatch) as engine, redis_url() as url:
        client = redis.Redis.from_url(url)
        try:
            assert client.ping()
        finally:
            client.close()
        assert url.startswith("redis://127.0.0.1:")
        with postgres_url() as pg:
            if pg is not None:  # a machine without PostgreSQL's binaries skips those tests
                assert pg.startswith("postgresql+asyncpg://postgres@127.0.0.1:")
    assert ("POST", "/images/create") in engine.calls


def test_no_engine_at_all_still_counts_as_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{free_port()}")  # nothing listens
    assert docker_container(_redis_container) is None
