"""Auth's api.py in-process (pytest-aiohttp): the mail routes of the app factory, on a
migrated SQLite database, a real Redis and a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from services.auth.app import MIGRATIONS, create_app
from services.auth.config import AuthSettings
from services.common.migrations import upgrade
from services.common.tokens import ensure_dev_keys

from ..infra import free_port
from ..smtp import SmtpServer
from ..stack import with_redis_db

INPROCESS_REDIS_DB = 11


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def client(aiohttp_client, tmp_path: Path, redis_base_url: str, smtp: SmtpServer):
    ensure_dev_keys(
        tmp_path / "keys" / "jwt_ed25519.pem", tmp_path / "keys" / "jwt_ed25519.pub.pem"
    )
    url = f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}"
    await asyncio.to_thread(upgrade, MIGRATIONS, url)
    redis_url = with_redis_db(redis_base_url, INPROCESS_REDIS_DB)
    # The throttles' counts of an earlier run (these tests use fixed addresses) go first.
    flush = aioredis.Redis.from_url(redis_url)
    await flush.flushdb()
    await flush.aclose()
    settings = AuthSettings(
        DATA_DIR=tmp_path,
        REDIS_URL=redis_url,
        database_url=url,
        SMTP_URL=f"smtp://127.0.0.1:{smtp.port}",
        PUBLIC_URL="https://hc.example",
        MAIL_RETRY_MAX_SECONDS=0.5,
    )
    return await aiohttp_client(create_app(settings))


async def test_signup_mails_a_code_that_verifies(client, smtp: SmtpServer) -> None:
    body = {"name": "Ada", "email": "ada-inproc@example.com", "password": "a fine passphrase"}
    signed = await client.post("/api/auth/signup", json={**body, "role": "client"})
    assert signed.status == 201, await signed.text()
    assert (await signed.json())["user"]["email_verified"] is False
    (message,) = await smtp.wait(1)
    text = message.get_body(preferencelist=("plain",)).get_content()
    code = re.search(r"Verification code: (\S+)", text).group(1)
    assert f"https://hc.example/#verify={code}" in text
    verified = await client.post("/api/auth/verify-email", json={"token": code})
    assert verified.status == 200
    assert (await verified.json())["email_verified"] is True
    again = await client.post("/api/auth/verify-email", json={"token": code})
    assert again.status == 400 and (await again.json())["code"] == "invalid_token"


async def test_the_mail_routes_are_in_the_document(client) -> None:
    document = await (await client.get("/openapi.json")).json()
    for path in (
        "/api/auth/verify-email",
        "/api/auth/verify-email/resend",
        "/api/auth/password-reset",
        "/api/auth/password-reset/confirm",
        "/api/auth/password",
    ):
        assert "post" in document["paths"][path], path
    signup = document["components"]["schemas"]["SignupBody"]["properties"]["password"]
    assert "password" in signup["not"]["enum"] and signup["minLength"] == 8


async def test_reset_answers_202_for_anyone(client) -> None:
    for email in ("nobody-inproc@example.com", "NOBODY-inproc@example.com"):
        reply = await client.post("/api/auth/password-reset", json={"email": email})
        assert reply.status == 202 and await reply.text() == ""
