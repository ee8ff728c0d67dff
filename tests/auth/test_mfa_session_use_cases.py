"""MFA and sessions in-process: auth's use cases with a clock the test moves, on both databases.

Real SQLite / PostgreSQL (a fresh migrated database per test) and a real Redis (the
throttle and the revocation list); the codes are computed with pyotp from the secret the
enrolment returned, at the test's clock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace

import jwt
import pyotp
import pytest
import pytest_asyncio
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from redis.asyncio import Redis
from sqlalchemy import select

from services.auth import service, totp
from services.auth.app import MIGRATIONS
from services.auth.service import (
    AccountMail,
    AuthContext,
    Client,
    InvalidCode,
    InvalidCredentials,
    InvalidLoginCode,
    InvalidRefreshToken,
    LoginLimiter,
    MfaAlreadyEnabled,
    MfaNotEnabled,
    MfaRequired,
    Passwords,
    RateLimited,
    SessionExpired,
    SessionNotFound,
    Throttle,
    TooManyRequests,
    WrongPassword,
)
from services.auth.tables import AuthSession, MfaTotp, OutboxEvent, RecoveryCode, RefreshToken
from services.common.db import Database, UTCDateTime
from services.common.mfa import MfaPolicy, enrolled_key
from services.common.migrations import upgrade
from services.common.outbox import Outbox
from services.common.tokens import Identity, RevocationList, TokenIssuer

from ..stack import with_redis_db

PASSWORD = "correct horse battery"
IP = "203.0.113.7"
IDLE = dt.timedelta(minutes=30)
MAX = dt.timedelta(hours=12)
ACCESS_TTL = dt.timedelta(minutes=15)
REDIS_DB = 10  # a database of the private test Redis that no stack uses


class Clock:
    """Seconds since the epoch, as the use cases read them; the test moves it."""

    def __init__(self) -> None:
        # The middle of a TOTP step, so a few seconds either way stay in it.
        self.now = (time.time() // 30) * 30 + 15

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest_asyncio.fixture
async def redis(redis_base_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(with_redis_db(redis_base_url, REDIS_DB))
    await client.flushdb()  # each test's database numbers its users from 1 again
    yield client
    await client.aclose()


@pytest_asyncio.fixture
async def db(fresh_url: str) -> AsyncIterator[Database]:
    await asyncio.to_thread(upgrade, MIGRATIONS, fresh_url)
    database = Database(fresh_url, pool_size=2)
    Outbox(database, Redis(), OutboxEvent, name="auth")  # its hook writes staged events
    yield database
    await database.dispose()


@pytest_asyncio.fixture
async def passwords() -> AsyncIterator[Passwords]:
    hasher = Passwords(time_cost=1, memory_kib=1024, parallelism=1, workers=2)
    await hasher.start()
    yield hasher
    hasher.close()


def _throttle(redis: Redis, name: str) -> Throttle:
    """The mail use cases' throttles, out of the way of these tests."""
    limits = {"email": 1000, "ip": 1000}
    return Throttle(
        redis, prefix=f"throttle:{{{name}}}", limits=limits, window=3600, error=TooManyRequests
    )


@pytest.fixture
def ctx(db: Database, redis: Redis, passwords: Passwords, clock: Clock) -> Iterator[AuthContext]:
    async def catch_up(about: object = None) -> bool:
        return True

    yield AuthContext(
        db=db,
        passwords=passwords,
        issuer=TokenIssuer(
            Ed25519PrivateKey.generate(), issuer="test", audience="test", ttl=ACCESS_TTL
        ),
        limiter=LoginLimiter(redis, per_email=5, per_ip=1000, window=900),
        revocations=RevocationList(redis),
        refresh_ttl=dt.timedelta(days=30),
        catch_up=catch_up,
        accounts=AccountMail(
            public_url="https://hc.example",
            signup=_throttle(redis, "signup"),
            resend=_throttle(redis, "verify-resend"),
            reset=_throttle(redis, "password-reset"),
        ),
        mfa_keys=totp.MfaKeys(uuid.uuid4().bytes * 2),
        redis=redis,
        session_idle=IDLE,
        session_max=MAX,
        clock=clock,
    )


@dataclass
class Person:
    email: str
    session: service.Session

    @property
    def id(self) -> int:
        return self.session.user.id

    def identity(self, session: service.Session | None = None) -> Identity:
        """The identity the access token of `session` (default: the sign-up's) proves."""
        token = (session or self.session).access_token
        claims = jwt.decode(token, options={"verify_signature": False})
        return Identity(
            user_id=int(claims["sub"]),
            role=claims["role"],
            jti=claims["jti"],
            sid=claims["sid"],
            expires_at=claims["exp"],
            mfa=claims["mfa"],
        )


async def sign_up(ctx: AuthContext, role: str = "client", **client: str) -> Person:
    email = f"{role}-{uuid.uuid4().hex[:10]}@example.com"
    session = await service.signup(
        ctx,
        name="Test",
        email=email,
        password=PASSWORD,
        role=role,
        client=Client(**client) if client else None,
    )
    return Person(email, session)


async def log_in(ctx: AuthContext, person: Person, otp: str | None = None, **client: str):
    return await service.login(
        ctx,
        email=person.email,
        password=PASSWORD,
        client_ip=client.get("ip", IP),
        otp=otp,
        client=Client(**client) if client else None,
    )


def code_at(secret: str, clock: Clock, steps: int = 0) -> str:
    return pyotp.TOTP(secret).at(clock.now + 30 * steps)


async def with_mfa(
    ctx: AuthContext, clock: Clock, role: str = "client"
) -> tuple[Person, str, list]:
    """A user with MFA on: the person, their secret and their recovery codes. The code
    that confirmed is of the step before the clock's, so the clock's own is still good."""
    person = await sign_up(ctx, role)
    enrolment = await service.enrol_totp(
        ctx, identity=person.identity(), password=PASSWORD, client_ip=IP
    )
    codes = await service.confirm_totp(
        ctx, identity=person.identity(), code=code_at(enrolment.secret, clock, -1)
    )
    return person, enrolment.secret, codes.codes


# --- enrolment -------------------------------------------------------------------------------


async def test_enrolment_gives_a_secret_that_is_not_active_yet(ctx: AuthContext) -> None:
    person = await sign_up(ctx)
    enrolment = await service.enrol_totp(
        ctx, identity=person.identity(), password=PASSWORD, client_ip=IP
    )
    assert len(enrolment.secret) == 32 and set(enrolment.secret) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    )
    assert enrolment.otpauth_uri.startswith("otpauth://totp/HealthConnect:")
    parsed = pyotp.parse_uri(enrolment.otpauth_uri)
    assert parsed.secret == enrolment.secret and parsed.issuer == "HealthConnect"
    assert parsed.name == person.email
    assert enrolment.qr_code.startswith("data:image/svg+xml")
    # Not on until confirmed: a login needs no code.
    session = await log_in(ctx, person)
    assert session.user.mfa_enabled is False
    me = await service.get_user(ctx, user_id=person.id)
    assert me["mfa_enabled"] is False


async def test_a_new_enrolment_replaces_the_unconfirmed_one(ctx: AuthContext, clock: Clock) -> None:
    person = await sign_up(ctx)
    first = await service.enrol_totp(
        ctx, identity=person.identity(), password=PASSWORD, client_ip=IP
    )
    second = await service.enrol_totp(
        ctx, identity=person.identity(), password=PASSWORD, client_ip=IP
    )
    assert first.secret != second.secret
    with pytest.raises(InvalidCode):
        await service.confirm_totp(
            ctx, identity=person.identity(), code=code_at(first.secret, clock)
        )
    codes = await service.confirm_totp(
        ctx, identity=person.identity(), code=code_at(second.secret, clock)
    )
    assert len(codes.codes) == 10


async def test_enrolment_needs_the_password_and_wrong_ones_are_throttled(
    ctx: AuthContext,
) -> None:
    person = await sign_up(ctx)
    for _ in range(5):
        with pytest.raises(WrongPassword):
            await service.enrol_totp(
                ctx, identity=person.identity(), password="not the password", client_ip=IP
            )
    with pytest.raises(RateLimited):  # even with the right one, as a login would be
        await service.enrol_totp(ctx, identity=person.identity(), password=PASSWORD, client_ip=IP)
    assert await ctx.db.query(lambda s: s.get(MfaTotp, person.id)) is None
    # Counted apart from the logins: a stolen token cannot lock the owner out.
    await log_in(ctx, person)


async def test_confirm_needs_a_current_code_of_a_pending_secret(
    ctx: AuthContext, clock: Clock
) -> None:
    person = await sign_up(ctx)
    with pytest.raises(InvalidCode):  # nothing to confirm
        await service.confirm_totp(ctx, identity=person.identity(), code="123456")
    enrolment = await service.enrol_totp(
        ctx, identity=person.identity(), password=PASSWORD, client_ip=IP
    )
    wrong = f"{(int(code_at(enrolment.secret, clock)) + 1) % 1_000_000:06d}"
    for bad in (wrong, code_at(enrolment.secret, clock, -2), code_at(enrolment.secret, clock, 2)):
        with pytest.raises(InvalidCode):
            await service.confirm_totp(ctx, identity=person.identity(), code=bad)
    codes = await service.confirm_totp(
        ctx, identity=person.identity(), code=code_at(enrolment.secret, clock, 1)
    )
    assert len(codes.codes) == 10 and len(set(codes.codes)) == 10
    assert all(len(c) == 11 and c[5] == "-" for c in codes.codes)
    assert (await service.get_user(ctx, user_id=person.id))["mfa_enabled"] is True
    with pytest.raises(MfaAlreadyEnabled):
        await service.enrol_totp(ctx, identity=person.identity(), password=PASSWORD, client_ip=IP)
    with pytest.raises(MfaAlreadyEnabled):
        await service.confirm_totp(
            ctx, identity=person.identity(), code=code_at(enrolment.secret, clock)
        )


async def test_secrets_and_recovery_codes_are_unreadable_at_rest(
    ctx: AuthContext, clock: Clock
) -> None:
    person, secret, codes = await with_mfa(ctx, clock)
    row = await ctx.db.query(lambda s: s.get(MfaTotp, person.id))
    assert secret not in row.sealed_secret
    assert ctx.mfa_keys.unseal(person.id, row.sealed_secret) == secret
    assert ctx.mfa_keys.unseal(person.id + 1, row.sealed_secret) is None  # bound to its user
    assert totp.MfaKeys(b"another signing key").unseal(person.id, row.sealed_secret) is None
    hashes = await ctx.db.query(
        lambda s: s.scalars(select(RecoveryCode.code_hash).where(RecoveryCode.user_id == person.id))
    )
    stored = set(hashes)
    assert len(stored) == 10
    for code in codes:
        plain = totp.normalise(code)
        assert plain not in stored and hashlib.sha256(plain.encode()).hexdigest() not in stored


# --- login with MFA ----------------------------------------------------------------------------


async def test_login_with_mfa_needs_a_code_after_the_password(
    ctx: AuthContext, clock: Clock
) -> None:
    person, secret, _ = await with_mfa(ctx, clock)
    with pytest.raises(MfaRequired):
        await log_in(ctx, person)
    with pytest.raises(InvalidLoginCode):
        await log_in(ctx, person, otp="000000" if code_at(secret, clock) != "000000" else "111111")
    # A wrong password says nothing of MFA, whatever the code, and spends no code.
    with pytest.raises(InvalidCredentials):
        await service.login(
            ctx, email=person.email, password="wrong", client_ip=IP, otp=code_at(secret, clock)
        )
    session = await log_in(ctx, person, otp=code_at(secret, clock))
    assert session.user.id == person.id and session.user.mfa_enabled is True
    assert person.identity(session).mfa is True


async def test_a_totp_code_is_accepted_once_and_never_an_older_one(
    ctx: AuthContext, clock: Clock
) -> None:
    person, secret, _ = await with_mfa(ctx, clock)
    now_code, next_code = code_at(secret, clock), code_at(secret, clock, 1)
    await log_in(ctx, person, otp=now_code)
    with pytest.raises(InvalidLoginCode):  # replayed
        await log_in(ctx, person, otp=now_code)
    await log_in(ctx, person, otp=next_code)  # a step ahead: within the drift allowed
    clock.advance(30)
    with pytest.raises(InvalidLoginCode):  # the same code, though it is now the current one
        await log_in(ctx, person, otp=next_code)
    with pytest.raises(InvalidLoginCode):
        await log_in(ctx, person, otp=now_code)  # older than one accepted
    clock.advance(30)
    await log_in(ctx, person, otp=code_at(secret, clock))


async def test_clock_drift_of_one_step_is_allowed_not_two(ctx: AuthContext, clock: Clock) -> None:
    person, secret, _ = await with_mfa(ctx, clock)
    clock.advance(90)  # past the step that confirmed, with room behind
    with pytest.raises(InvalidLoginCode):
        await log_in(ctx, person, otp=code_at(secret, clock, -2))
    with pytest.raises(InvalidLoginCode):
        await log_in(ctx, person, otp=code_at(secret, clock, 2))
    await log_in(ctx, person, otp=code_at(secret, clock, -1))
    await log_in(ctx, person, otp=code_at(secret, clock, 1))


async def test_two_logins_racing_with_one_code_get_it_once(ctx: AuthContext, clock: Clock) -> None:
    person, secret, codes = await with_mfa(ctx, clock)
    for code in (code_at(secret, clock), codes[0]):
        results = await asyncio.gather(
            *(log_in(ctx, person, otp=code) for _ in range(4)), return_exceptions=True
        )
        assert sum(isinstance(r, service.Session) for r in results) == 1, results
        assert all(isinstance(r, service.Session | InvalidLoginCode) for r in results), results


async def test_each_recovery_code_works_once(ctx: AuthContext, clock: Clock) -> None:
    person, _, codes = await with_mfa(ctx, clock)
    for code in codes[:3]:
        await log_in(ctx, person, otp=code)
        with pytest.raises(InvalidLoginCode):
            await log_in(ctx, person, otp=code)
    # Typed loosely: upper case, spaces, no dash.
    loose = " ".join(codes[3].upper().replace("-", " "))
    await log_in(ctx, person, otp=loose)
    with pytest.raises(InvalidLoginCode):
        await log_in(ctx, person, otp=codes[3])
    used = await ctx.db.query(
        lambda s: s.scalars(
            select(RecoveryCode.used_at).where(RecoveryCode.user_id == person.id)
        ).all()
    )
    assert sum(u is not None for u in used) == 4


async def test_another_users_recovery_code_is_no_code(ctx: AuthContext, clock: Clock) -> None:
    alice, _, alice_codes = await with_mfa(ctx, clock)
    bob, _, _ = await with_mfa(ctx, clock)
    with pytest.raises(InvalidLoginCode):
        await log_in(ctx, bob, otp=alice_codes[0])
    await log_in(ctx, alice, otp=alice_codes[0])


async def test_wrong_codes_count_toward_the_login_throttle(ctx: AuthContext, clock: Clock) -> None:
    person, secret, _ = await with_mfa(ctx, clock)
    for _ in range(3):
        with pytest.raises(MfaRequired):  # the right password without a code is no failure
            await log_in(ctx, person)
    for _ in range(5):
        with pytest.raises(InvalidLoginCode):
            await log_in(ctx, person, otp="abcde-abcde")
    with pytest.raises(RateLimited):  # even with the right code
        await log_in(ctx, person, otp=code_at(secret, clock))


async def test_a_password_without_a_code_does_not_clear_the_throttle(
    ctx: AuthContext, clock: Clock
) -> None:
    person, secret, _ = await with_mfa(ctx, clock)
    for _ in range(4):
        with pytest.raises(InvalidLoginCode):
            await log_in(ctx, person, otp="999999" if code_at(secret, clock) != "999999" else "0")
        with pytest.raises(MfaRequired):
            await log_in(ctx, person)
    with pytest.raises(InvalidLoginCode):
        await log_in(ctx, person, otp="abcde-abcde")
    with pytest.raises(RateLimited):
        await log_in(ctx, person)


# --- turning MFA off ----------------------------------------------------------------------


async def test_disable_takes_a_totp_or_a_recovery_code(ctx: AuthContext, clock: Clock) -> None:
    person = await sign_up(ctx)
    with pytest.raises(MfaNotEnabled):
        await service.disable_totp(ctx, identity=person.identity(), code="123456", client_ip=IP)
    person, secret, codes = await with_mfa(ctx, clock)
    with pytest.raises(InvalidCode):
        await service.disable_totp(
            ctx, identity=person.identity(), code="zzzzz-zzzzz", client_ip=IP
        )
    await service.disable_totp(ctx, identity=person.identity(), code=codes[0], client_ip=IP)
    assert (await service.get_user(ctx, user_id=person.id))["mfa_enabled"] is False
    session = await log_in(ctx, person)  # no code needed any more
    assert person.identity(session).mfa is False
    assert await ctx.db.query(lambda s: s.get(MfaTotp, person.id)) is None
    # Enrolled again: the old secret and codes are gone.
    enrolment = await service.enrol_totp(
        ctx, identity=person.identity(), password=PASSWORD, client_ip=IP
    )
    with pytest.raises(InvalidCode):
        await service.confirm_totp(ctx, identity=person.identity(), code=code_at(secret, clock))
    await service.confirm_totp(
        ctx, identity=person.identity(), code=code_at(enrolment.secret, clock)
    )
    with pytest.raises(InvalidLoginCode):
        await log_in(ctx, person, otp=codes[1])
    await service.disable_totp(
        ctx, identity=person.identity(), code=code_at(enrolment.secret, clock, 1), client_ip=IP
    )


async def test_wrong_codes_to_disable_are_throttled(ctx: AuthContext, clock: Clock) -> None:
    person, secret, _ = await with_mfa(ctx, clock)
    for _ in range(5):
        with pytest.raises(InvalidCode):
            await service.disable_totp(
                ctx, identity=person.identity(), code="00000-00000", client_ip=IP
            )
    with pytest.raises(RateLimited):
        await service.disable_totp(
            ctx, identity=person.identity(), code=code_at(secret, clock), client_ip=IP
        )
    assert (await service.get_user(ctx, user_id=person.id))["mfa_enabled"] is True


async def test_with_the_requirement_enrolment_flags_and_disabling_revokes(
    ctx: AuthContext, clock: Clock, redis: Redis
) -> None:
    """AUTH_REQUIRE_MFA=professional: confirming sets the flag that lets the tokens the
    user holds through; turning MFA off drops it and revokes their live access tokens."""
    ctx = replace(ctx, mfa_policy=MfaPolicy(redis, ["professional"]))
    pro, secret, _ = await with_mfa(ctx, clock, role="professional")
    assert await redis.exists(enrolled_key(pro.id))
    assert 0 < await redis.ttl(enrolled_key(pro.id)) <= ACCESS_TTL.total_seconds() + 60
    other = await log_in(ctx, pro, otp=code_at(secret, clock))
    await service.disable_totp(
        ctx, identity=pro.identity(), code=code_at(secret, clock, 1), client_ip=IP
    )
    assert not await redis.exists(enrolled_key(pro.id))
    for session in (pro.session, other):
        assert await ctx.revocations.is_revoked(pro.identity(session))
    # A client's MFA is none of the policy's business: no flag, no revocation.
    client, client_secret, _ = await with_mfa(ctx, clock, role="client")
    assert not await redis.exists(enrolled_key(client.id))
    await service.disable_totp(
        ctx, identity=client.identity(), code=code_at(client_secret, clock), client_ip=IP
    )
    assert not await ctx.revocations.is_revoked(client.identity())


# --- sessions -----------------------------------------------------------------------------


async def test_sessions_are_listed_newest_first_with_where_they_come_from(
    ctx: AuthContext, clock: Clock
) -> None:
    person = await sign_up(ctx, ip="198.51.100.1", user_agent="SignupBrowser/1.0")
    clock.advance(1)
    second = await log_in(ctx, person, ip="198.51.100.2", user_agent="Phone\x00App/2 \u202e")
    clock.advance(1)
    third = await log_in(ctx, person, ip="2001:db8::1", user_agent="x" * 5000)
    listed = await service.list_sessions(ctx, identity=person.identity(second), limit=50, offset=0)
    assert [s["id"] for s in listed] == [
        person.identity(third).sid,
        person.identity(second).sid,
        person.identity().sid,
    ]
    assert [s["current"] for s in listed] == [False, True, False]
    assert [s["ip"] for s in listed] == ["2001:db8::1", "198.51.100.2", "198.51.100.1"]
    assert listed[0]["user_agent"] == "x" * 256  # bounded
    assert listed[1]["user_agent"] == "Phone App/2"  # no control or formatting characters
    assert listed[2]["user_agent"] == "SignupBrowser/1.0"
    for s in listed:
        assert set(s) == {"id", "created_at", "last_used_at", "user_agent", "ip", "current"}
        assert s["created_at"] == s["last_used_at"] and s["created_at"].endswith("Z")
    page = await service.list_sessions(ctx, identity=person.identity(), limit=1, offset=1)
    assert [s["id"] for s in page] == [person.identity(second).sid]
    stranger = await sign_up(ctx)
    theirs = await service.list_sessions(ctx, identity=stranger.identity(), limit=50, offset=0)
    assert [s["id"] for s in theirs] == [stranger.identity().sid]


async def test_a_refresh_is_the_sessions_last_use(ctx: AuthContext, clock: Clock) -> None:
    person = await sign_up(ctx)
    clock.advance(600)
    rotated = await service.refresh(ctx, refresh_token=person.session.refresh_token)
    assert person.identity(rotated).sid == person.identity().sid  # the same session
    [listed] = await service.list_sessions(ctx, identity=person.identity(), limit=50, offset=0)
    created = dt.datetime.fromisoformat(listed["created_at"])
    used = dt.datetime.fromisoformat(listed["last_used_at"])
    assert used - created == dt.timedelta(seconds=600)


async def test_ending_a_session_stops_its_tokens_at_once(ctx: AuthContext, clock: Clock) -> None:
    person = await sign_up(ctx)
    other = await log_in(ctx, person)
    rotated = await service.refresh(ctx, refresh_token=other.refresh_token)
    sid = person.identity(other).sid
    await service.end_session(ctx, identity=person.identity(), session_id=sid)
    for token in (other.refresh_token, rotated.refresh_token):
        with pytest.raises(InvalidRefreshToken):
            await service.refresh(ctx, refresh_token=token)
    for session in (other, rotated):
        assert await ctx.revocations.is_revoked(person.identity(session))
    assert not await ctx.revocations.is_revoked(person.identity())
    listed = await service.list_sessions(ctx, identity=person.identity(), limit=50, offset=0)
    assert [s["id"] for s in listed] == [person.identity().sid]
    with pytest.raises(SessionNotFound):  # already ended
        await service.end_session(ctx, identity=person.identity(), session_id=sid)


async def test_another_users_or_an_unknown_session_is_not_found(ctx: AuthContext) -> None:
    alice, bob = await sign_up(ctx), await sign_up(ctx)
    for sid in (bob.identity().sid, uuid.uuid4().hex):
        with pytest.raises(SessionNotFound):
            await service.end_session(ctx, identity=alice.identity(), session_id=sid)
    await service.refresh(ctx, refresh_token=bob.session.refresh_token)  # bob's still works


async def test_ending_ones_own_current_session(ctx: AuthContext) -> None:
    person = await sign_up(ctx)
    await service.end_session(ctx, identity=person.identity(), session_id=person.identity().sid)
    assert await ctx.revocations.is_revoked(person.identity())
    with pytest.raises(InvalidRefreshToken):
        await service.refresh(ctx, refresh_token=person.session.refresh_token)


async def test_logout_and_token_reuse_end_the_session(ctx: AuthContext) -> None:
    person = await sign_up(ctx)
    second = await log_in(ctx, person)
    await service.logout(ctx, identity=person.identity(), refresh_token=None)
    rotated = await service.refresh(ctx, refresh_token=second.refresh_token)
    with pytest.raises(InvalidRefreshToken):  # reuse of the rotated one
        await service.refresh(ctx, refresh_token=second.refresh_token)
    assert rotated
    ended = await ctx.db.query(
        lambda s: s.scalars(select(AuthSession.ended_at).where(AuthSession.user_id == person.id))
    )
    assert all(e is not None for e in ended)
    assert await service.list_sessions(ctx, identity=person.identity(), limit=50, offset=0) == []


# --- expiry -----------------------------------------------------------------------------


async def test_a_session_idle_too_long_expires_at_its_refresh(
    ctx: AuthContext, clock: Clock
) -> None:
    person = await sign_up(ctx)
    clock.advance(IDLE.total_seconds() - 1)
    fresh = await service.refresh(ctx, refresh_token=person.session.refresh_token)
    clock.advance(IDLE.total_seconds() - 1)  # idle counts from the last refresh
    fresh = await service.refresh(ctx, refresh_token=fresh.refresh_token)
    clock.advance(IDLE.total_seconds())
    assert await service.list_sessions(ctx, identity=person.identity(), limit=50, offset=0) == []
    with pytest.raises(SessionExpired):
        await service.refresh(ctx, refresh_token=fresh.refresh_token)
    assert await ctx.revocations.is_revoked(person.identity(fresh))
    with pytest.raises(InvalidRefreshToken):  # it has ended
        await service.refresh(ctx, refresh_token=fresh.refresh_token)
    ended = await ctx.db.query(lambda s: s.get(AuthSession, person.identity().sid))
    assert ended.ended_at is not None


async def test_a_session_ends_at_its_maximum_lifetime_however_used(
    ctx: AuthContext, clock: Clock
) -> None:
    person = await sign_up(ctx)
    token = person.session.refresh_token
    steps = int(MAX / dt.timedelta(minutes=20))
    for _ in range(steps - 1):
        clock.advance(20 * 60)
        token = (await service.refresh(ctx, refresh_token=token)).refresh_token
    clock.advance(20 * 60)
    with pytest.raises(SessionExpired):
        await service.refresh(ctx, refresh_token=token)


async def test_no_token_outlives_its_sessions_maximum(ctx: AuthContext, clock: Clock) -> None:
    ctx = replace(ctx, session_max=dt.timedelta(minutes=5), session_idle=dt.timedelta(minutes=5))
    clock.now = time.time()  # the issuer signs with the real time
    person = await sign_up(ctx)
    ends = clock.now + 300
    assert person.identity().expires_at <= ends + 1  # not the 15 minutes of its TTL
    row = await ctx.db.query(
        lambda s: s.scalar(select(RefreshToken).where(RefreshToken.user_id == person.id))
    )
    assert row.expires_at.timestamp() <= ends + 1  # not 30 days


async def test_sessions_of_before_this_release_are_kept(fresh_url: str) -> None:
    """Revision 0005 makes a session of each refresh-token family it finds."""
    await asyncio.to_thread(upgrade, MIGRATIONS, fresh_url, "0003")
    # The tables as revision 0003 has them (the ORM's have columns added since).
    users = sa.table(
        "users", *(sa.column(c) for c in ("id", "name", "email", "role", "password_hash")),
        sa.column("created_at", UTCDateTime),
    )  # fmt: skip
    tokens = sa.table(
        "refresh_tokens",
        *(sa.column(c) for c in ("user_id", "family_id", "token_hash", "access_jti")),
        *(sa.column(c, UTCDateTime) for c in ("created_at", "expires_at", "revoked_at",
                                              "access_expires_at")),
    )  # fmt: skip
    t0 = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)
    families = [("a" * 32, 0, None), ("a" * 32, 10, None), ("b" * 32, 5, t0)]

    def seed(session) -> None:
        session.execute(
            sa.insert(users).values(
                id=1, name="A", email="a@example.com", role="client", password_hash="x",
                created_at=t0,
            )
        )  # fmt: skip
        for family, minutes, revoked in families:
            session.execute(
                sa.insert(tokens).values(
                    user_id=1, family_id=family, token_hash=uuid.uuid4().hex, access_jti="j",
                    created_at=t0 + dt.timedelta(minutes=minutes), revoked_at=revoked,
                    expires_at=t0 + dt.timedelta(days=1), access_expires_at=t0,
                )
            )  # fmt: skip

    db = Database(fresh_url, pool_size=2)
    try:
        await db.write(seed)
    finally:
        await db.dispose()
    await asyncio.to_thread(upgrade, MIGRATIONS, fresh_url)
    db = Database(fresh_url, pool_size=2)
    try:
        rows = await db.query(
            lambda s: s.scalars(select(AuthSession).order_by(AuthSession.id)).all()
        )
    finally:
        await db.dispose()
    assert [(r.id, r.user_id) for r in rows] == [("a" * 32, 1), ("b" * 32, 1)]
    live, ended = rows
    assert (live.created_at, live.last_used_at, live.ended_at) == (
        t0,
        t0 + dt.timedelta(minutes=10),
        None,
    )
    assert ended.ended_at == t0
