"""Small API-client helpers for tests that go through the gateway."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}@example.com"


@dataclass
class Account:
    user: dict[str, Any]
    token: str
    refresh_token: str
    password: str

    @property
    def id(self) -> int:
        return self.user["id"]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Reply:
    status: int
    headers: Any
    body: Any
    text: str


class Api:
    """Calls the system at `base` (the gateway, or a service directly).

    With the stack's `inbox` (tests/mailbox.py), a client's sign-up also verifies the
    address with the code mailed to it, as a real client would (email invitations bind
    to verified addresses only); `verified=False` leaves it unverified.
    """

    def __init__(self, http: aiohttp.ClientSession, base: str, inbox: Any = None) -> None:
        self.http = http
        self.base = base
        self.inbox = inbox

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: Any = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        hdrs = dict(headers or {})
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        async with self.http.request(
            method, self.base + path, json=json, data=data, headers=hdrs
        ) as resp:
            text = await resp.text()
            body: Any = None
            if text and "json" in resp.headers.get("Content-Type", ""):
                import json as _json

                body = _json.loads(text)
            return Reply(resp.status, resp.headers, body, text)

    async def signup(
        self,
        role: str = "client",
        *,
        name: str | None = None,
        email: str | None = None,
        password: str = "correct horse battery",
        verified: bool | None = None,
    ) -> Account:
        email = email or unique_email(role)
        reply = await self.call(
            "POST",
            "/api/auth/signup",
            json={
                "name": name or f"{role.title()} {email[:8]}",
                "email": email,
                "password": password,
                "role": role,
            },
        )
        assert reply.status == 201, reply.text
        account = Account(
            reply.body["user"], reply.body["token"], reply.body["refresh_token"], password
        )
        if verified is None:
            verified = self.inbox is not None and role == "client"
        if verified:
            from .mailbox import verify

            assert self.inbox is not None, "verifying needs the stack's inbox"
            await verify(self, self.inbox, account)
        return account

    async def login(self, email: str, password: str) -> Reply:
        return await self.call(
            "POST", "/api/auth/login", json={"email": email, "password": password}
        )


def assert_problem(reply: Reply, status: int, code: str | None = None) -> None:
    assert reply.status == status, (reply.status, reply.text)
    assert reply.headers.get("Content-Type", "").startswith("application/problem+json"), (
        reply.headers
    )
    assert reply.body["status"] == status
    assert reply.body["type"] == "about:blank"
    assert reply.body["title"] and "detail" in reply.body
    if code:
        assert reply.body["code"] == code, reply.body


async def eventually(
    check: Callable[[], Awaitable[Any]], *, within: float = 5.0, every: float = 0.01
) -> Any:
    """Poll `check` until it returns something truthy; fail after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = await check()
        if result:
            return result
        if loop.time() >= deadline:
            raise AssertionError(f"condition not met within {within}s (last: {result!r})")
        await asyncio.sleep(every)
