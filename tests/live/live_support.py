"""Live-test helpers: recording sockets, tokens, domain calls, synthetic events, replicas."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import jwt
import redis.asyncio as aioredis
from cryptography.hazmat.primitives import serialization

from services.common.events import (
    ACTIVITIES_STREAM,
    ActivityInvited,
    ActivitySummary,
    Event,
    InviteData,
    InvitePayload,
)
from services.common.outbox import encode

from ..api import Account, Api, Reply
from ..infra import free_port
from ..stack import ROOT, Stack

NOTIFICATION_KEYS = {"id", "type", "occurred_at", "data"}
LEADER_KEY = "notifier:leader"
# Long enough for a notification to be in flight after its REST call returned (API.md
# says a few milliseconds), so "nothing arrived" means nothing was sent.
SETTLE = 0.4


# --- ids and waiting --------------------------------------------------------------------


def id_key(notification_id: str) -> tuple[int, int]:
    ms, _, seq = notification_id.partition("-")
    return int(ms), int(seq or 0)


def assert_increasing(messages: list[dict[str, Any]]) -> None:
    """Notification ids strictly increase (so none is repeated)."""
    keys = [id_key(m["id"]) for m in messages]
    assert all(a < b for a, b in itertools.pairwise(keys)), [m["id"] for m in messages]


async def eventually(
    check: Callable[[], Awaitable[bool]], *, within: float, what: str, every: float = 0.05
) -> None:
    """Poll `check` until it holds; fail after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() >= deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(every)


# --- sockets ----------------------------------------------------------------------------


def ws_url(base: str, *, token: str | None = None, since: str | None = None) -> str:
    query = {k: v for k, v in {"token": token, "since": since}.items() if v is not None}
    url = base.replace("http://", "ws://", 1) + "/api/ws"
    return url + ("?" + urlencode(query) if query else "")


class LiveSocket:
    """An aiohttp WebSocket whose frames a background task records as they arrive."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, label: str) -> None:
        self.ws = ws
        self.label = label
        self.messages: list[dict[str, Any]] = []
        self.pings: list[float] = []
        self.close_code: int | None = None
        self.closed_at: float | None = None
        self._news = asyncio.Event()
        self._task = asyncio.create_task(self._read(), name=f"ws-reader-{label}")

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                msg = await self.ws.receive()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self.messages.append(json.loads(msg.data))
                elif msg.type == aiohttp.WSMsgType.PING:
                    self.pings.append(loop.time())
                elif msg.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.PONG):
                    pass
                else:  # CLOSE, CLOSING, CLOSED, ERROR
                    break
                self._news.set()
        finally:
            self.close_code = self.ws.close_code
            self.closed_at = loop.time()
            self._news.set()

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    async def until(self, check: Callable[[], bool], *, within: float, what: str) -> None:
        async def wait() -> None:
            while not check():
                self._news.clear()
                await self._news.wait()

        try:
            await asyncio.wait_for(wait(), within)
        except TimeoutError:
            raise AssertionError(
                f"{self.label}: not within {within}s: {what}; got {len(self.messages)} "
                f"messages, closed={self.closed} code={self.close_code}"
            ) from None

    async def wait_count(self, count: int, *, within: float = 10.0) -> list[dict[str, Any]]:
        await self.until(
            lambda: len(self.messages) >= count or self.closed,
            within=within,
            what=f"{count} messages",
        )
        assert len(self.messages) >= count, (self.label, self.close_code, self.messages)
        return self.messages

    async def wait_closed(self, *, within: float) -> int | None:
        await self.until(lambda: self.closed, within=within, what="closed by the server")
        return self.close_code

    async def close(self) -> None:
        if not self.ws.closed:
            await asyncio.wait_for(self.ws.close(), 5)
        await asyncio.wait_for(asyncio.shield(self._task), 5)


async def open_socket(
    http: aiohttp.ClientSession,
    base: str,
    token: str,
    *,
    how: str = "header",
    since: str | None = None,
    label: str = "",
    **kwargs: Any,
) -> LiveSocket:
    """Connect to /api/ws passing the token in the header, the subprotocol or the query."""
    if how == "header":
        kwargs["headers"] = {"Authorization": f"Bearer {token}"}
        url = ws_url(base, since=since)
    elif how == "protocol":
        kwargs["protocols"] = ("bearer", token)
        url = ws_url(base, since=since)
    elif how == "query":
        url = ws_url(base, token=token, since=since)
    else:
        raise ValueError(how)
    ws = await asyncio.wait_for(http.ws_connect(url, **kwargs), 10)
    return LiveSocket(ws, label or how)


class Sockets:
    """Opens sockets for a test and closes whatever is still open at its end."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.opened: list[LiveSocket] = []

    async def open(
        self, base: str, account: Account | str, *, label: str = "", **kwargs: Any
    ) -> LiveSocket:
        token = account if isinstance(account, str) else account.token
        if not label and isinstance(account, Account):
            label = f"user{account.id}"
        sock = await open_socket(self.http, base, token, label=label, **kwargs)
        self.opened.append(sock)
        return sock

    async def close_all(self) -> None:
        await asyncio.gather(*(s.close() for s in self.opened), return_exceptions=True)


async def handshake_status(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> int:
    """The HTTP status of a WebSocket handshake the server must refuse."""
    try:
        ws = await asyncio.wait_for(http.ws_connect(url, **kwargs), 10)
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    await ws.close()
    raise AssertionError(f"the upgrade of {url} was accepted")


# --- tokens -----------------------------------------------------------------------------


def sign_token(root: Path, *, user_id: int, role: str, **overrides: Any) -> str:
    """An access token signed with the stack's development key (claims overridable)."""
    key = serialization.load_pem_private_key(
        (root / "keys" / "jwt_ed25519.pem").read_bytes(), password=None
    )
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "healthconnect-auth",
        "aud": "healthconnect",
        "sub": str(user_id),
        "role": role,
        "typ": "access",
        "sid": uuid.uuid4().hex,
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + 600,
    }
    claims.update(overrides)
    return jwt.encode(claims, key, algorithm="EdDSA")  # type: ignore[arg-type]


# --- the notification log over REST ---------------------------------------------------


async def log_of(
    api: Api, account: Account, *, since: str | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    query = {k: v for k, v in {"since": since, "limit": limit}.items() if v is not None}
    path = "/api/notifications" + ("?" + urlencode(query) if query else "")
    reply = await api.call("GET", path, token=account.token)
    assert reply.status == 200, reply.text
    assert isinstance(reply.body, list), reply.text
    return reply.body


async def full_log(api: Api, account: Account, since: str | None = None) -> list[dict[str, Any]]:
    """The whole log after `since`, page by page (200 at a time)."""
    entries: list[dict[str, Any]] = []
    while True:
        page = await log_of(api, account, since=since, limit=200)
        entries += page
        if len(page) < 200:
            return entries
        since = page[-1]["id"]


async def wait_log(
    api: Api, account: Account, count: int, *, within: float = 5.0, since: str | None = None
) -> list[dict[str, Any]]:
    """Poll the log until it holds at least `count` entries after `since`."""
    entries: list[dict[str, Any]] = []

    async def enough() -> bool:
        nonlocal entries
        entries = await full_log(api, account, since)
        return len(entries) >= count

    await eventually(enough, within=within, what=f"{count} notifications of user {account.id}")
    return entries


def assert_notification(message: dict[str, Any], kind: str, data: dict[str, Any]) -> None:
    """`message` is one notification of type `kind` carrying exactly `data`."""
    assert set(message) == NOTIFICATION_KEYS, message
    assert message["type"] == kind, message
    assert isinstance(message["id"], str) and id_key(message["id"]) > (0, 0), message
    assert isinstance(message["occurred_at"], str) and message["occurred_at"].endswith("Z")
    assert message["data"] == data, (message["data"], data)


# --- domain calls -----------------------------------------------------------------------


async def ok(reply: Awaitable[Reply], status: int = 200) -> Any:
    result = await reply
    assert result.status == status, (result.status, result.text)
    return result.body


async def request_pro(api: Api, client: Account, pro: Account) -> dict[str, Any]:
    return await ok(
        api.call(
            "POST",
            "/api/connection/request-pro",
            json={"professional_id": pro.id},
            token=client.token,
        ),
        201,
    )


async def invite_client(api: Api, pro: Account, email: str) -> dict[str, Any]:
    return await ok(
        api.call(
            "POST",
            "/api/connection/invite-client",
            json={"client_email": email},
            token=pro.token,
        ),
        201,
    )


async def answer_connection(
    api: Api, account: Account, connection_id: int, action: str
) -> dict[str, Any]:
    return await ok(
        api.call(
            "POST",
            "/api/connection/respond",
            json={"connection_id": connection_id, "action": action},
            token=account.token,
        )
    )


async def remove_connection(api: Api, account: Account, connection_id: int) -> None:
    await ok(api.call("DELETE", f"/api/connection/{connection_id}", token=account.token), 204)


async def connections_of(api: Api, account: Account, status: str = "") -> list[dict[str, Any]]:
    query = f"?status={status}" if status else ""
    return await ok(api.call("GET", f"/api/connection/list{query}", token=account.token))


async def connect_pair(api: Api, pro: Account, client: Account) -> int:
    """An accepted connection (the client asks, the professional accepts), returned once
    both notifications are in the logs, so a socket opened afterwards never gets them live."""
    asked = await request_pro(api, client, pro)
    await answer_connection(api, pro, asked["id"], "accept")

    async def delivered(account: Account, kind: str) -> bool:
        return any(
            n["type"] == kind and n["data"]["connection"]["id"] == asked["id"]
            for n in await full_log(api, account)
        )

    for account, kind in ((pro, "connection.requested"), (client, "connection.accepted")):
        await eventually(
            lambda a=account, k=kind: delivered(a, k), within=10, what=f"{kind} in the log"
        )
    return asked["id"]


async def create_activity(api: Api, pro: Account, **body: Any) -> dict[str, Any]:
    body.setdefault("title", "Morning Workout")
    return await ok(api.call("POST", "/api/activities/", json=body, token=pro.token), 201)


async def invite(api: Api, pro: Account, activity_id: int, client: Account) -> dict[str, Any]:
    return await ok(
        api.call(
            "POST",
            "/api/activities/invite",
            json={"activity_id": activity_id, "client_id": client.id},
            token=pro.token,
        ),
        201,
    )


async def answer_invite(api: Api, client: Account, invite_id: int, action: str) -> dict[str, Any]:
    return await ok(
        api.call(
            "POST",
            "/api/activities/respond",
            json={"invite_id": invite_id, "action": action},
            token=client.token,
        )
    )


async def delete_activity(api: Api, pro: Account, activity_id: int) -> None:
    await ok(api.call("DELETE", f"/api/activities/{activity_id}", token=pro.token), 204)


async def activities_of(api: Api, account: Account) -> list[dict[str, Any]]:
    return await ok(api.call("GET", "/api/activities/list", token=account.token))


# --- synthetic events -------------------------------------------------------------------


def synthetic_invite(recipients: Iterable[int], seq: int, *, pad: int = 0) -> Event:
    """An `activity.invited` event for `recipients` that no service will ever act on.

    Only the notifier consumes activities.events, so such events touch nothing but the
    recipients' notification logs. `seq` becomes the invite id, to check the order.
    """
    now = dt.datetime.now(dt.UTC)
    activity = ActivitySummary(
        id=seq,
        professional_id=1,
        title="Synthetic",
        description="x" * pad,
        starts_at=None,
        capacity=None,
        created_at=now,
    )
    recipient_ids = sorted(set(recipients))
    invite_data = InviteData(
        id=seq,
        status="pending",
        client_id=recipient_ids[0],
        activity=activity,
        created_at=now,
        updated_at=now,
    )
    return ActivityInvited(data=InvitePayload(invite=invite_data), recipient_ids=recipient_ids)


async def entry_fields(event: Event) -> dict[str, bytes]:
    """The stream entry an outbox relay would XADD for `event`."""
    data = await encode(event.to_json(), event_id=str(event.event_id), event_type=event.type)
    return {"__data__": data}


async def publish(
    client: aioredis.Redis, events: list[Event], stream: str = ACTIVITIES_STREAM
) -> list[str]:
    """XADD `events` to `stream` in one pipeline, as a relay would; returns the entry ids."""
    fields = [await entry_fields(e) for e in events]
    async with client.pipeline(transaction=False) as pipe:
        for entry in fields:
            pipe.xadd(stream, entry)
        ids = await pipe.execute()
    return [i.decode() if isinstance(i, bytes) else i for i in ids]


# --- gateway processes ------------------------------------------------------------------


def lease_name(instance_id: str, pid: int) -> str:
    """The notifier lease value a gateway process holds (gateway/app.py)."""
    return f"gateway-{instance_id}-{pid}"


class Replica:
    """One more gateway process beside a stack's own, on its own port and instance id."""

    def __init__(self, stack: Stack, name: str) -> None:
        self.stack = stack
        self.name = name
        self.port = free_port()
        self.instance_id = f"{stack.env['INSTANCE_ID']}-{name}"
        self.env = {**stack.env, "GATEWAY_PORT": str(self.port), "INSTANCE_ID": self.instance_id}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def lease(self) -> str:
        assert self.proc is not None
        return lease_name(self.instance_id, self.proc.pid)

    def log_path(self) -> Path:
        return self.stack.root / f"gateway-{self.name}.log"

    def start(self, timeout: float = 30.0) -> None:
        with self.log_path().open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_healthy(self.url, timeout, self.proc, self.log_path())

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def wait_healthy(
    url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            text = log.read_text(errors="replace")[-3000:] if log else ""
            raise RuntimeError(f"gateway at {url} exited early:\n{text}")
        try:
            with urllib.request.urlopen(url + "/api/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not healthy after {timeout}s")


def stack_lease(stack: Stack) -> str:
    """The lease value of the stack's own gateway process."""
    return lease_name(stack.env["INSTANCE_ID"], stack.procs["gateway"].pid)


async def leader(client: aioredis.Redis) -> str | None:
    value = await client.get(LEADER_KEY)
    return value.decode() if value is not None else None
