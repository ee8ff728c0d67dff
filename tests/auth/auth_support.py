"""Helpers shared by the auth tests: validation-problem checks, bounded concurrency, MFA."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

import pyotp

from ..api import Account, Api, Reply, assert_problem

T = TypeVar("T")

USER_KEYS = {"id", "name", "email", "role", "created_at", "email_verified", "mfa_enabled"}


def assert_validation(reply: Reply, *fields: str, code: str = "validation_error") -> None:
    """A 400 problem whose `errors` name every one of `fields`."""
    assert_problem(reply, 400, code)
    errors = reply.body.get("errors")
    assert isinstance(errors, list) and errors, reply.body
    for error in errors:
        assert set(error) >= {"field", "message"}, error
        assert isinstance(error["message"], str) and error["message"], error
    named = {e["field"] for e in errors}
    for field in fields:
        assert field in named, (field, reply.body)


def assert_session(reply: Reply, status: int) -> dict[str, Any]:
    """The signup/login/refresh shape: a User, an access token and a refresh token."""
    assert reply.status == status, reply.text
    assert reply.headers.get("Content-Type", "").startswith("application/json")
    body = reply.body
    assert {"user", "token", "refresh_token"} <= set(body), body
    assert set(body["user"]) == USER_KEYS, body["user"]
    assert isinstance(body["token"], str) and body["token"].count(".") == 2
    assert isinstance(body["refresh_token"], str) and body["refresh_token"]
    assert body["refresh_token"] != body["token"]
    assert_no_password_material(reply)
    return body


def _keys(data: Any) -> set[str]:
    if isinstance(data, dict):
        return set(data) | {k for v in data.values() for k in _keys(v)}
    if isinstance(data, list):
        return {k for v in data for k in _keys(v)}
    return set()


def assert_no_password_material(reply: Reply, password: str | None = None) -> None:
    """No key about a password, no hash, and not the password itself, anywhere."""
    assert not {k for k in _keys(reply.body) if "password" in k.lower()}, reply.text
    assert "$argon2" not in reply.text and "argon2id" not in reply.text, reply.text
    if password:
        assert password not in reply.text, reply.text


async def gather_limited(coros: Iterable[Awaitable[T]], limit: int = 8) -> list[T]:
    """Run awaitables with at most `limit` at a time; results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(coro: Awaitable[T]) -> T:
        async with gate:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


# --- MFA ------------------------------------------------------------------------------------


def totp_code(secret: str) -> str:
    """The TOTP of `secret` now: good for a confirmation (the server takes the current step
    and one either way), but a login right after one wants `Authenticator.fresh`."""
    return pyotp.TOTP(secret).now()


def other_code(code: str) -> str:
    """A six-digit code that is not `code`."""
    return f"{(int(code) + 500_000) % 1_000_000:06d}"


class Authenticator:
    """The test's authenticator app: codes of one secret, each of a newer time step than
    the last it gave. The server takes a step once, never an older one, and one step of
    drift either way: so a test does not depend on where in a 30 s step it runs (a code
    of the step before "now" fails when the step ends on the way to the server)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self._totp = pyotp.TOTP(secret)
        self.last: int | None = None  # the step of the last code given

    @staticmethod
    def current_step() -> int:
        return int(time.time() // 30)

    def code_of(self, step: int) -> str:
        return self._totp.generate_otp(step)

    def fresh(self) -> str:
        """A code the server has not seen: of the current step, or of the next one when
        the current step's is used (two per step at the most)."""
        step = self.current_step()
        if self.last is not None:
            step = max(step, self.last + 1)
        self.last = step
        return self.code_of(step)


async def enable_mfa(api: Api, account: Account) -> tuple[Authenticator, list[str]]:
    """Enrol and confirm through `api`: the authenticator (its confirming code used) and
    the recovery codes."""
    enrolled = await api.call(
        "POST", "/api/auth/mfa/totp", json={"password": account.password}, token=account.token
    )
    assert enrolled.status == 201, enrolled.text
    app = Authenticator(enrolled.body["secret"])
    confirmed = await api.call(
        "POST", "/api/auth/mfa/totp/confirm", json={"code": app.fresh()}, token=account.token
    )
    assert confirmed.status == 200, confirmed.text
    return app, confirmed.body["recovery_codes"]
