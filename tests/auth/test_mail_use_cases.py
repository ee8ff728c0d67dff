"""Auth's mail use cases in-process: service.py on a migrated SQLite database, a real Redis
for throttles and revocations, and a real SMTP server (aiosmtpd) that receives the mail;
time is controlled, so expiry is tested to the minute."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select

from services.auth import service, totp
from services.auth.app import MIGRATIONS
from services.auth.service import (
    AccountMail,
    AlreadyVerified,
    AuthContext,
    Client,
    InvalidEmailToken,
    LoginLimiter,
    Passwords,
    RateLimited,
    Throttle,
    TooManyRequests,
    WrongPassword,
)
from services.auth.tables import EmailToken, MailOutbox, OutboxEvent
from services.common.db import Database
from services.common.mail import Mailer
from services.common.migrations import upgrade
from services.common.outbox import Outbox
from services.common.tokens import Identity, RevocationList, TokenIssuer

from ..infra import free_port
from ..smtp import SmtpServer
from ..stack import with_redis_db

T0 = dt.datetime(2026, 12, 4, 9, 0, tzinfo=dt.UTC)
PASSWORD = "a fine passphrase"
USE_CASES_REDIS_DB = 12


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(service, "utcnow", clock)
    return clock


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer(free_port())
    server.start()
    yield server
    server.stop()


@pytest_asyncio.fixture
async def redis_client(redis_base_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(with_redis_db(redis_base_url, USE_CASES_REDIS_DB))
    await client.flushdb()
    yield client
    await client.aclose()


def throttle(redis: aioredis.Redis, name: str, per_email: int, per_ip: int) -> Throttle:
    return Throttle(
        redis,
        prefix=f"throttle:{{{name}}}",
        limits={"email": per_email, "ip": per_ip},
        window=3600,
        error=TooManyRequests,
    )


@pytest_asyncio.fixture
async def ctx(
    tmp_path: Path, redis_client: aioredis.Redis, smtp: SmtpServer, clock: Clock
) -> AsyncIterator[AuthContext]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}"
    await asyncio.to_thread(upgrade, MIGRATIONS, url)
    db = Database(url)
    Outbox(db, redis_client, OutboxEvent, name="auth")  # its hooks store staged events
    mailer = Mailer(
        db,
        MailOutbox,
        smtp_url=f"smtp://127.0.0.1:{smtp.port}",
        mail_from="HealthConnect <no-reply@hc.example>",
        retry_max_seconds=0.2,
    )
    passwords = Passwords(time_cost=1, memory_kib=8, parallelism=1, workers=2)
    await passwords.start()

    async def caught_up(about: object = None) -> bool:
        return True

    context = AuthContext(
        db=db,
        passwords=passwords,
        issuer=TokenIssuer(
            Ed25519PrivateKey.generate(),
            issuer="healthconnect-auth",
            audience="healthconnect",
            ttl=dt.timedelta(minutes=15),
        ),
        limiter=LoginLimiter(redis_client, per_email=5, per_ip=100, window=900),
        revocations=RevocationList(redis_client),
        refresh_ttl=dt.timedelta(days=30),
        catch_up=caught_up,
        accounts=AccountMail(
            public_url="https://hc.example",
            signup=throttle(redis_client, "signup", 3, 4),
            resend=throttle(redis_client, "verify-resend", 3, 100),
            reset=throttle(redis_client, "password-reset", 3, 4),
        ),
        mfa_keys=totp.MfaKeys(b"mail use cases, a key for MFA secrets"),
        redis=redis_client,
    )
    task = asyncio.create_task(mailer.run())
    try:
        yield context
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        passwords.close()
        await db.dispose()


async def signup(ctx: AuthContext, email: str, ip: str = "192.0.2.1") -> service.Session:
    return await service.signup(
        ctx, name="Ada", email=email, password=PASSWORD, role="client", client=Client(ip=ip)
    )


async def mailed(smtp: SmtpServer, to: str, count: int = 1) -> list[str]:
    """The text bodies of the first `count` messages to `to`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        found = [m for m in smtp.handler.messages if m["To"] == to]
        if len(found) >= count:
            return [m.get_body(preferencelist=("plain",)).get_content() for m in found]
        assert loop.time() < deadline, f"no mail to {to}"
        await asyncio.sleep(0.01)


def token_in(text: str, fragment: str) -> str:
    match = re.search(rf"/#{fragment}=(\S+)", text)
    assert match, text
    return match.group(1)


def identity(session: service.Session) -> Identity:
    return Identity(
        user_id=session.user.id, role="client", jti="j", sid="none", expires_at=2_000_000_000
    )


async def test_a_verification_code_lasts_24_hours(ctx: AuthContext, smtp, clock: Clock) -> None:
    first = await signup(ctx, "early@example.com")
    late = await signup(ctx, "late@example.com")
    (early_text,) = await mailed(smtp, "early@example.com")
    (late_text,) = await mailed(smtp, "late@example.com")
    clock.advance(hours=23, minutes=59)
    user = await service.verify_email(ctx, token=token_in(early_text, "verify"))
    assert user.email_verified and user.id == first.user.id
    clock.advance(minutes=2)
    with pytest.raises(InvalidEmailToken):
        await service.verify_email(ctx, token=token_in(late_text, "verify"))
    # Expired, it stays refused; a resend gives a fresh one.
    await service.resend_verification(ctx, identity=identity(late), client_ip="192.0.2.1")
    texts = await mailed(smtp, "late@example.com", 2)
    assert (await service.verify_email(ctx, token=token_in(texts[1], "verify"))).email_verified
    with pytest.raises(AlreadyVerified):
        await service.resend_verification(ctx, identity=identity(late), client_ip="192.0.2.1")


async def test_a_reset_link_lasts_30_minutes_and_works_once(
    ctx: AuthContext, smtp, clock: Clock
) -> None:
    await signup(ctx, "reset@example.com")
    await service.request_password_reset(ctx, email="reset@example.com", client_ip="192.0.2.2")
    clock.advance(minutes=5)
    await service.request_password_reset(ctx, email="reset@example.com", client_ip="192.0.2.2")
    texts = await mailed(smtp, "reset@example.com", 3)  # the verification, then two resets
    first, second = token_in(texts[1], "reset"), token_in(texts[2], "reset")
    clock.advance(minutes=26)  # the first is 31 minutes old, the second 26
    with pytest.raises(InvalidEmailToken):
        await service.confirm_password_reset(ctx, token=first, password="new passphrase one")
    await service.confirm_password_reset(ctx, token=second, password="new passphrase two")
    with pytest.raises(InvalidEmailToken):  # used
        await service.confirm_password_reset(ctx, token=second, password="new passphrase 3")


async def test_a_reset_link_expires_even_when_unused(ctx: AuthContext, smtp, clock) -> None:
    await signup(ctx, "slow@example.com")
    await service.request_password_reset(ctx, email="slow@example.com", client_ip="192.0.2.3")
    texts = await mailed(smtp, "slow@example.com", 2)
    clock.advance(minutes=30)
    with pytest.raises(InvalidEmailToken):
        await service.confirm_password_reset(
            ctx, token=token_in(texts[1], "reset"), password="too late passphrase"
        )


async def test_an_unknown_address_does_the_same_work_and_gets_no_mail(
    ctx: AuthContext, smtp
) -> None:
    async def stored() -> int:
        stmt = select(func.count()).select_from(EmailToken).where(EmailToken.purpose == "reset")
        return await ctx.db.query(lambda s: s.scalar(stmt))

    await service.request_password_reset(ctx, email="ghost@example.com", client_ip="192.0.2.4")
    assert await stored() == 1  # a row of no account, which no token can ever use
    await asyncio.sleep(0.3)
    assert [m for m in smtp.handler.messages if m["To"] == "ghost@example.com"] == []


async def test_throttles_count_per_address_and_per_ip(ctx: AuthContext) -> None:
    # Per address: 3 resets an hour, from anywhere.
    for n in range(3):
        await service.request_password_reset(
            ctx, email="a@example.com", client_ip=f"198.51.100.{n}"
        )
    with pytest.raises(TooManyRequests) as refused:
        await service.request_password_reset(ctx, email="a@example.com", client_ip="198.51.100.9")
    assert 3500 <= refused.value.retry_after <= 3601
    # Per client IP: 4 resets an hour, whatever the address (one of them was refused
    # above: refused requests are not counted).
    for n in range(4):
        await service.request_password_reset(
            ctx, email=f"b{n}@example.com", client_ip="203.0.113.5"
        )
    with pytest.raises(TooManyRequests):
        await service.request_password_reset(ctx, email="c@example.com", client_ip="203.0.113.5")
    # Sign-up too: 4 per IP.
    for n in range(4):
        await signup(ctx, f"new{n}@example.com", ip="203.0.113.6")
    with pytest.raises(TooManyRequests):
        await signup(ctx, "new9@example.com", ip="203.0.113.6")


async def test_concurrent_requests_never_pass_a_limit(ctx: AuthContext) -> None:
    results = await asyncio.gather(
        *(
            service.request_password_reset(ctx, email="burst@example.com", client_ip=f"10.1.0.{n}")
            for n in range(10)
        ),
        return_exceptions=True,
    )
    assert sum(r is None for r in results) == 3
    assert all(isinstance(r, TooManyRequests) for r in results if r is not None)


async def test_wrong_current_passwords_count_as_failed_logins(ctx: AuthContext) -> None:
    session = await signup(ctx, "guess@example.com")
    for _ in range(5):
        with pytest.raises(WrongPassword):
            await service.change_password(
                ctx,
                identity=identity(session),
                current_password="a wrong guess",
                new_password="a new passphrase",
                client_ip="192.0.2.9",
            )
    with pytest.raises(RateLimited):  # even the right one, now
        await service.change_password(
            ctx,
            identity=identity(session),
            current_password=PASSWORD,
            new_password="a new passphrase",
            client_ip="192.0.2.9",
        )
