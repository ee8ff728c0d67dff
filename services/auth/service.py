"""Auth use cases: accounts, sessions, MFA, verified addresses, passwords, the users
directory. No HTTP here."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import redis.exceptions
import sqlalchemy.exc
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from redis.asyncio import Redis
from sqlalchemy import Select, bindparam, delete, func, insert, or_, orm, select, update

from services.common.consumer import CatchUp, CopyBehind
from services.common.db import Database, utcnow
from services.common.events import (
    ConnectionEvent,
    Event,
    UserData,
    UserEmailVerified,
    UserPayload,
    UserRegistered,
    format_timestamp,
)
from services.common.mail import Mail, link, render, stage_mail
from services.common.mfa import MfaPolicy, enrolled_key
from services.common.outbox import stage
from services.common.tasks import ErrorOnce
from services.common.tokens import Identity, RevocationList, TokenIssuer, new_opaque_token

from . import totp
from .tables import (
    AuthSession,
    ClientLink,
    EmailToken,
    MfaTotp,
    RecoveryCode,
    RefreshToken,
    User,
)

log = logging.getLogger(__name__)


class AuthError(Exception):
    """Base of the auth service's domain errors."""


class EmailTaken(AuthError):
    pass


class InvalidCredentials(AuthError):
    pass


class InvalidRefreshToken(AuthError):
    pass


class UserNotFound(AuthError):
    pass


class WrongPassword(AuthError):
    """The signed-in user's own password, given to confirm a change, is wrong."""


class MfaRequired(AuthError):
    """Right password, but the account has MFA on and no code came with it."""


class InvalidCode(AuthError):
    """Not a current TOTP code of the account, nor one of its unused recovery codes."""


class InvalidLoginCode(AuthError):
    """A login's `otp` is not a current TOTP code nor an unused recovery code (a 401 there,
    where `InvalidCode` is a 400 for the signed-in user's own MFA changes)."""


class MfaAlreadyEnabled(AuthError):
    pass


class MfaNotEnabled(AuthError):
    pass


class SessionNotFound(AuthError):
    """No live session of the caller's has this id."""


class SessionExpired(AuthError):
    """Idle too long, or past its maximum lifetime: the refresh ended the session."""


class RateLimited(AuthError):
    def __init__(self, retry_after: int) -> None:
        super().__init__("too many failed logins")
        self.retry_after = retry_after


class TooManyRequests(RateLimited):
    """Over a throttle of signup, verification resend or password reset."""


class Passwords:
    """argon2id hashing on worker threads, so a hash never blocks the event loop."""

    def __init__(self, *, time_cost: int, memory_kib: int, parallelism: int, workers: int) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism
        )
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="argon2")
        self._dummy: str | None = None

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def start(self) -> None:
        # A real hash to verify against when the email is unknown, so an unknown email
        # costs the same time as a wrong password and timing reveals nothing.
        self._dummy = await self.hash(uuid.uuid4().hex)

    async def hash(self, password: str) -> str:
        return await self._run(self._hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        try:
            return await self._run(self._hasher.verify, stored or self._dummy, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        return self._hasher.check_needs_rehash(stored)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# Atomic check-and-count over every key of one throttle: either all count this request or
# (some limit reached) none does and the longest wait is returned. KEYS: the keys; ARGV:
# now, window, member, then each key's limit.
HIT = """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local retry = 0
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, 0, now - window)
  if redis.call('ZCARD', key) >= tonumber(ARGV[3 + i]) then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    local wait = math.floor(tonumber(oldest[2]) + window - now) + 1
    if wait > retry then retry = wait end
  end
end
if retry == 0 then
  for _, key in ipairs(KEYS) do
    redis.call('ZADD', key, now, ARGV[3])
    redis.call('EXPIRE', key, math.ceil(window) + 60)
  end
end
return retry
"""


class Throttle:
    """Sliding-window counts per kind of key (an address, a client IP), in Redis.

    `hit` counts a request unless a limit is reached (then RateLimited, nothing counted);
    `check` and `record` do the two halves apart, for counts of failures (the login
    throttle counts a login only when it failed). Addresses are hashed: no address in a
    Redis key. `fail_open`: while Redis cannot be reached, `hit` lets requests through
    (sign-ups and mail go on during an outage) instead of answering 503.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str,
        limits: Mapping[str, int],
        window: int,
        error: type[RateLimited] | None = None,
        fail_open: bool = False,
    ) -> None:
        self._fail_open = fail_open
        self._errors = ErrorOnce(log, f"{prefix} throttle")
        self._redis = redis
        self._prefix = prefix
        self._limits = dict(limits)
        self._window = window
        self._error = error or RateLimited
        self._hit = redis.register_script(HIT)

    def _keys(self, values: Mapping[str, str]) -> dict[str, str]:
        keys = {}
        for kind, value in values.items():
            if kind == "email":
                value = hashlib.sha256(value.encode()).hexdigest()[:32]
            keys[kind] = f"{self._prefix}:{kind}:{value}"
        return keys

    async def hit(self, **values: str) -> None:
        keys = self._keys(values)
        member = f"{time.time():.6f}:{uuid.uuid4().hex[:8]}"
        try:
            retry = await self._hit(
                keys=list(keys.values()),
                args=[time.time(), self._window, member, *(self._limits[k] for k in keys)],
            )
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            if not self._fail_open:
                raise
            self._errors.note(exc, expected=True)
            return
        self._errors.clear()
        if retry:
            raise self._error(int(retry))

    async def check(self, **values: str) -> None:
        now = time.time()
        keys = self._keys(values)
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys.values():
                pipe.zremrangebyscore(key, 0, now - self._window)
                pipe.zcard(key)
                pipe.zrange(key, 0, 0, withscores=True)
            replies = await pipe.execute()
        retry = 0
        for i, kind in enumerate(keys):
            count, oldest = replies[3 * i + 1], replies[3 * i + 2]
            if count >= self._limits[kind] and oldest:
                retry = max(retry, int(oldest[0][1] + self._window - now) + 1)
        if retry:
            raise self._error(retry)

    async def record(self, **values: str) -> None:
        now = time.time()
        member = f"{now:.6f}:{uuid.uuid4().hex[:8]}"
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in self._keys(values).values():
                pipe.zadd(key, {member: now})
                pipe.expire(key, self._window + 60)
            await pipe.execute()

    async def forget(self, kind: str, value: str) -> None:
        await self._redis.delete(self._keys({kind: value})[kind])


class LoginLimiter(Throttle):
    """Failed logins per email and per client address (the login throttle)."""

    def __init__(self, redis: Redis, *, per_email: int, per_ip: int, window: int) -> None:
        super().__init__(
            redis, prefix="login:fail", limits={"email": per_email, "ip": per_ip}, window=window
        )

    async def check(self, email: str, ip: str) -> None:  # type: ignore[override]
        await super().check(email=email, ip=ip)

    async def failed(self, email: str, ip: str) -> None:
        await self.record(email=email, ip=ip)

    async def succeeded(self, email: str, ip: str) -> None:
        await self.forget("email", email)


@dataclass(slots=True)
class AuthContext:
    """Everything the use cases need, built once by the app factory."""

    db: Database
    passwords: Passwords
    issuer: TokenIssuer
    limiter: LoginLimiter
    revocations: RevocationList
    refresh_ttl: dt.timedelta
    # Waits until the copy of connections has applied every event already published.
    catch_up: CatchUp
    # Version 3 (mail): links, lifetimes and throttles of the mail-sending use cases.
    accounts: AccountMail
    mfa_keys: totp.MfaKeys
    redis: Redis
    # A session ends after this long without a refresh, and this long after its login.
    session_idle: dt.timedelta = dt.timedelta(minutes=30)
    session_max: dt.timedelta = dt.timedelta(hours=12)
    # AUTH_REQUIRE_MFA: None when it names no role (services/common/mfa.py).
    mfa_policy: MfaPolicy | None = None
    # Seconds since the epoch: sessions' times and TOTP steps (tests move it).
    clock: Callable[[], float] = time.time

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC)


@dataclass(slots=True)
class AccountMail:
    """What the mail-sending use cases need: where links point, how long their secrets
    live, and the throttles of signup, verification resend and password reset."""

    public_url: str
    signup: Throttle
    resend: Throttle
    reset: Throttle
    verify_ttl: dt.timedelta = dt.timedelta(hours=24)
    reset_ttl: dt.timedelta = dt.timedelta(minutes=30)


@dataclass(frozen=True, slots=True)
class Session:
    user: User
    access_token: str
    refresh_token: str


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def user_data(user: User) -> UserData:
    return UserData(
        id=user.id,
        name=user.name,
        email=user.email,
        role=user.role,
        created_at=user.created_at,
        email_verified=bool(user.email_verified),
        mfa_enabled=bool(user.mfa_enabled),
    )


@dataclass(frozen=True, slots=True)
class Client:
    """Where a login comes from, as the user sees it in their list of sessions."""

    ip: str | None = None
    user_agent: str | None = None


USER_AGENT_MAX = 256
IP_MAX = 45  # the longest IPv6 text (with an embedded IPv4 address)


def _bounded_agent(value: str | None) -> str | None:
    """At most 256 characters of printable text: a header may carry anything else."""
    if not value:
        return None
    text = value.encode("utf-8", "replace").decode("utf-8")  # lone surrogates from bytes
    text = "".join(ch if ch.isprintable() else " " for ch in text[:USER_AGENT_MAX]).strip()
    return text or None


def _new_refresh(
    ctx: AuthContext, user: User, family_id: str, *, started: dt.datetime
) -> tuple[RefreshToken, str, str]:
    """A new pair of the session `family_id`, begun at `started`: neither token outlives
    the session's maximum lifetime."""
    ends = started + ctx.session_max
    access, claims = ctx.issuer.issue(
        user_id=user.id,
        role=user.role,
        session_id=family_id,
        mfa=bool(user.mfa_enabled),
        not_after=ends,
    )
    token = new_opaque_token()
    row = RefreshToken(
        user_id=user.id,
        family_id=family_id,
        token_hash=_hash_token(token),
        expires_at=min(ctx.now() + ctx.refresh_ttl, ends),
        access_jti=claims["jti"],
        access_expires_at=dt.datetime.fromtimestamp(claims["exp"], dt.UTC),
    )
    return row, access, token


def _start_session(
    ctx: AuthContext, session: orm.Session, user: User, client: Client
) -> tuple[str, str]:
    """A new session (a new refresh-token family) for `user`: its access and refresh token."""
    now = ctx.now()
    family_id = uuid.uuid4().hex
    session.add(
        AuthSession(
            id=family_id,
            user_id=user.id,
            created_at=now,
            last_used_at=now,
            user_agent=_bounded_agent(client.user_agent),
            ip=client.ip[:IP_MAX] if client.ip else None,
        )
    )
    row, access, refresh_token = _new_refresh(ctx, user, family_id, started=now)
    session.add(row)
    return access, refresh_token


async def signup(
    ctx: AuthContext,
    *,
    name: str,
    email: str,
    password: str,
    role: str,
    client: Client | None = None,
) -> Session:
    await ctx.accounts.signup.hit(email=email, ip=(client.ip if client else None) or "")
    if await ctx.db.fetch(USER_BY_EMAIL, email=email):
        raise EmailTaken(email)
    password_hash = await ctx.passwords.hash(password)

    def create(session: orm.Session) -> Session:
        user = User(
            name=name,
            email=email,
            role=role,
            password_hash=password_hash,
            email_verified=False,
            mfa_enabled=False,
        )
        session.add(user)
        session.flush()
        access, refresh_token = _start_session(ctx, session, user, client or Client())
        stage(session, UserRegistered(data=UserPayload(user=user_data(user))))
        _send_verification(ctx, session, user)
        return Session(user, access, refresh_token)

    try:
        return await ctx.db.write(create)
    except sqlalchemy.exc.IntegrityError as exc:  # a concurrent signup took the email
        raise EmailTaken(email) from exc


async def login(
    ctx: AuthContext,
    *,
    email: str,
    password: str,
    client_ip: str,
    otp: str | None = None,
    client: Client | None = None,
) -> Session:
    """The password first, whatever `otp` says (a wrong one is `InvalidCredentials`, and
    says nothing of MFA); then, for an account with MFA on, a TOTP or an unused recovery
    code. A wrong code counts as a failed login for the throttle, like a wrong password,
    and only a whole success clears the count (else a known password would let the codes
    be guessed without end)."""
    # Throttle before verifying: past the limit even the right password gets 429.
    await ctx.limiter.check(email, client_ip)
    user = await ctx.db.query(lambda session: session.scalar(select(User).filter_by(email=email)))
    ok = await ctx.passwords.verify(user.password_hash if user else None, password)
    if not (user and ok):
        await ctx.limiter.failed(email, client_ip)
        raise InvalidCredentials()
    if user.mfa_enabled and otp is None:
        raise MfaRequired()
    new_hash = None
    if ctx.passwords.needs_rehash(user.password_hash):
        new_hash = await ctx.passwords.hash(password)

    def start(session: orm.Session) -> Session | None:
        """The new session, or None when the account's MFA code is wrong."""
        if user.mfa_enabled and not _use_code(ctx, session, user.id, otp or ""):
            return None
        if new_hash:
            session.execute(update(User).where(User.id == user.id).values(password_hash=new_hash))
        access, refresh_token = _start_session(ctx, session, user, client or Client(client_ip))
        return Session(user, access, refresh_token)

    started = await ctx.db.write(start)
    if started is None:
        await ctx.limiter.failed(email, client_ip)
        raise InvalidLoginCode()
    await ctx.limiter.succeeded(email, client_ip)
    return started


@dataclass(frozen=True, slots=True)
class Expired:
    """What a refresh of an expired session returns from its unit of work: the session,
    now ended, and until when its access tokens must stay revoked."""

    family_id: str
    revoke_until: dt.datetime


def _expired(ctx: AuthContext, row: AuthSession, now: dt.datetime) -> bool:
    return now - row.last_used_at >= ctx.session_idle or now - row.created_at >= ctx.session_max


async def refresh(ctx: AuthContext, *, refresh_token: str) -> Session:
    """Rotate a refresh token. Presenting a rotated one again revokes its whole family; a
    session idle too long or past its lifetime ends here (`SessionExpired`)."""
    now = ctx.now()

    def rotate(session: orm.Session) -> Session | RefreshToken | Expired:
        """The new session, the reused row when the token was already rotated, or the
        session that this refresh found expired (and ended)."""
        row = session.scalar(
            select(RefreshToken).where(RefreshToken.token_hash == _hash_token(refresh_token))
        )
        if row is None or row.revoked_at is not None:
            raise InvalidRefreshToken()
        sess = session.get(AuthSession, row.family_id)
        if sess is None:  # a family begun by a replica of before sessions were recorded
            sess = AuthSession(
                id=row.family_id,
                user_id=row.user_id,
                created_at=row.created_at,
                last_used_at=row.created_at,
            )
            session.add(sess)
        if sess.ended_at is not None:
            raise InvalidRefreshToken()
        if _expired(ctx, sess, now):
            _end_families(session, [row.family_id], now)
            return Expired(row.family_id, _revoke_until(ctx, session, sess))
        if row.expires_at <= now:
            raise InvalidRefreshToken()
        # Compare-and-set so two concurrent uses of one token cannot both rotate it.
        claimed = session.execute(
            update(RefreshToken)
            .where(RefreshToken.id == row.id, RefreshToken.rotated_at.is_(None))
            .values(rotated_at=now)
        )
        if claimed.rowcount != 1:
            return row
        user = session.get(User, row.user_id)
        if user is None:
            raise InvalidRefreshToken()
        sess.last_used_at = now
        new_row, access, new_token = _new_refresh(ctx, user, row.family_id, started=sess.created_at)
        session.add(new_row)
        return Session(user, access, new_token)

    rotated = await ctx.db.write(rotate)
    if isinstance(rotated, Session):
        return rotated
    if isinstance(rotated, Expired):
        await ctx.revocations.revoke(
            jti=None, sid=rotated.family_id, expires_at=int(rotated.revoke_until.timestamp())
        )
        raise SessionExpired()
    # Reuse of a rotated token: someone holds a stolen copy. End the whole session.
    log.warning("refresh token reuse detected for user %s; revoking its family", rotated.user_id)
    await revoke_family(ctx, family_id=rotated.family_id)
    raise InvalidRefreshToken()


def _end_families(session: orm.Session, family_ids: list[str], now: dt.datetime) -> None:
    """The sessions end: their refresh tokens stop working (the caller revokes their
    access tokens, by `sid`, in the revocation list)."""
    session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id.in_(family_ids), RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    session.execute(
        update(AuthSession)
        .where(AuthSession.id.in_(family_ids), AuthSession.ended_at.is_(None))
        .values(ended_at=now)
    )


def _revoke_until(ctx: AuthContext, session: orm.Session, sess: AuthSession) -> dt.datetime:
    """How long a revocation of the session's `sid` must last: past every access token it
    issued (capped at the session's maximum lifetime, except those minted before the cap
    existed, which the latest expiry covers)."""
    latest = session.scalar(
        select(func.max(RefreshToken.access_expires_at)).where(RefreshToken.family_id == sess.id)
    )
    ends = sess.created_at + ctx.session_max
    return max(ends, latest) if latest else ends


async def revoke_family(ctx: AuthContext, *, family_id: str) -> None:
    now = ctx.now()

    def revoke(session: orm.Session) -> dt.datetime | None:
        _end_families(session, [family_id], now)
        return session.scalar(
            select(RefreshToken.access_expires_at)
            .where(RefreshToken.family_id == family_id)
            .order_by(RefreshToken.access_expires_at.desc())
            .limit(1)
        )

    latest = await ctx.db.write(revoke)
    if latest and latest > utcnow():
        # Every access token of the family carries `sid`: revoking it covers them all.
        await ctx.revocations.revoke(jti=None, sid=family_id, expires_at=int(latest.timestamp()))


async def logout(ctx: AuthContext, *, identity: Identity, refresh_token: str | None) -> None:
    """The presented access token and the session's refresh token stop working at once."""
    await ctx.revocations.revoke(jti=identity.jti, sid=identity.sid, expires_at=identity.expires_at)
    families = {identity.sid} if identity.sid else set()
    if refresh_token:
        rows = await ctx.db.fetch(
            FAMILY_OF_TOKEN, token_hash=_hash_token(refresh_token), uid=identity.user_id
        )
        if rows:
            families.add(rows[0]["family_id"])
    if not families:
        return
    now = ctx.now()
    await ctx.db.write(lambda session: _end_families(session, sorted(families), now))


_USER_COLUMNS = (
    User.id,
    User.name,
    User.email,
    User.role,
    User.created_at,
    User.email_verified,
    User.mfa_enabled,
)
GET_USER = select(*_USER_COLUMNS).where(User.id == bindparam("uid"))
USER_BY_EMAIL = select(User.id).where(User.email == bindparam("email"))
FAMILY_OF_TOKEN = select(RefreshToken.family_id).where(
    RefreshToken.token_hash == bindparam("token_hash"), RefreshToken.user_id == bindparam("uid")
)


def _users_statement(viewer_role: str, role: str | None) -> Select:
    visible = [User.role == "professional", User.id == bindparam("uid")]
    if viewer_role == "professional" and role != "professional":
        visible.append(
            User.id.in_(
                select(ClientLink.client_id).where(
                    ClientLink.professional_id == bindparam("uid"),
                    ClientLink.status == "accepted",
                )
            )
        )
    query = select(*_USER_COLUMNS).where(or_(*visible))
    if role:
        query = query.where(User.role == role)
    return query.order_by(User.id.desc()).limit(bindparam("limit")).offset(bindparam("offset"))


# Built once; the directory is read without the ORM (see Database.fetch).
USERS_STATEMENTS = {
    (viewer, role): _users_statement(viewer, role)
    for viewer in ("professional", "client")
    for role in (None, "professional", "client")
}


def user_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """The User object of API.md from one row (same shape as `user_data`)."""
    return {
        "id": row["id"],
        "name": row["name"],
        "email": row["email"],
        "role": row["role"],
        "created_at": format_timestamp(row["created_at"]),
        "email_verified": bool(row["email_verified"]),
        "mfa_enabled": bool(row["mfa_enabled"]),
    }


async def get_user(ctx: AuthContext, *, user_id: int) -> dict[str, Any]:
    rows = await ctx.db.fetch(GET_USER, uid=user_id)
    if not rows:
        raise UserNotFound(user_id)
    return user_json(rows[0])


def _connections_of(professional_id: int) -> Callable[[Event], bool]:
    def about(event: Event) -> bool:
        return (
            isinstance(event, ConnectionEvent)
            and event.data.connection.professional.id == professional_id
        )

    return about


async def list_users(
    ctx: AuthContext, *, viewer: Identity, role: str | None, limit: int, offset: int
) -> list[dict[str, Any]]:
    """Professionals are listed to everyone; a client only to themself and to the
    professionals with an accepted connection to them."""
    # A connection accepted a moment ago makes its client visible to the professional.
    needs_copy = viewer.role == "professional" and role != "professional"
    if needs_copy and not await ctx.catch_up(about=_connections_of(viewer.user_id)):
        raise CopyBehind(viewer.user_id)
    stmt = USERS_STATEMENTS[(viewer.role, role)]
    rows = await ctx.db.fetch(stmt, uid=viewer.user_id, limit=limit, offset=offset)
    return [user_json(row) for row in rows]


# -- version 3: verified addresses, password reset and change (mail) ---------------------


class InvalidEmailToken(AuthError):
    """A verification or reset token that is unknown, expired or already used."""


class AlreadyVerified(AuthError):
    pass


VERIFY, RESET = "verify", "reset"
TOKEN_PURGE_SECONDS = 600.0
TOKEN_KEEP = dt.timedelta(days=1)  # expired or used tokens kept this long, then deleted

USER_AUTH_BY_ID = select(*_USER_COLUMNS, User.password_hash).where(User.id == bindparam("uid"))
USER_AUTH_BY_EMAIL = select(*_USER_COLUMNS).where(User.email == bindparam("email"))
RESET_TOKEN = select(
    EmailToken.id, EmailToken.user_id, EmailToken.expires_at, EmailToken.used_at
).where(EmailToken.token_hash == bindparam("token_hash"), EmailToken.purpose == RESET)


def _hours(ttl: dt.timedelta) -> str:
    minutes = int(ttl.total_seconds() // 60)
    if minutes % 60:
        return f"{minutes} minutes"
    hours = minutes // 60
    return "1 hour" if hours == 1 else f"{hours} hours"


def _new_email_token(
    session: orm.Session, *, user_id: int | None, purpose: str, ttl: dt.timedelta
) -> str:
    """A fresh single-use secret for a mail; only its hash is stored."""
    token = new_opaque_token()
    session.add(
        EmailToken(
            user_id=user_id,
            purpose=purpose,
            token_hash=_hash_token(token),
            created_at=utcnow(),
            expires_at=utcnow() + ttl,
        )
    )
    return token


def _send_verification(ctx: AuthContext, session: orm.Session, user: User) -> None:
    """Queue the verification mail (code and link) in the transaction of `session`."""
    accounts = ctx.accounts
    token = _new_email_token(session, user_id=user.id, purpose=VERIFY, ttl=accounts.verify_ttl)
    text, html = render(
        greeting=f"Hello {user.name},",
        paragraphs=[
            "Please confirm that this address is yours: the professionals who invite you "
            "by email reach you only once it is verified.",
            f"The link and the code are valid for {_hours(accounts.verify_ttl)} and work once.",
        ],
        action=("Verify my address", link(accounts.public_url, "verify", token)),
        code=("Verification code", token),
        footer="If you did not sign up for HealthConnect, ignore this message.",
    )
    mail = Mail(to=user.email, subject="Verify your HealthConnect address", text=text, html=html)
    stage_mail(session, mail)


def _mark_verified(session: orm.Session, user: User) -> None:
    """The address is proven: flag it, spend the other verification tokens, tell others."""
    if not user.email_verified:
        user.email_verified = True
        stage(session, UserEmailVerified(data=UserPayload(user=user_data(user))))
    session.execute(
        update(EmailToken)
        .where(
            EmailToken.user_id == user.id,
            EmailToken.purpose == VERIFY,
            EmailToken.used_at.is_(None),
        )
        .values(used_at=utcnow())
    )


async def verify_email(ctx: AuthContext, *, token: str) -> UserData:
    """Spend a verification token: the account's address is verified (200 User)."""
    token_hash = _hash_token(token)

    def verify(session: orm.Session) -> UserData:
        now = utcnow()
        row = session.scalar(
            select(EmailToken).where(
                EmailToken.token_hash == token_hash, EmailToken.purpose == VERIFY
            )
        )
        if row is None or row.user_id is None or row.used_at is not None or row.expires_at <= now:
            raise InvalidEmailToken()
        # Compare-and-set: of two concurrent uses of one token only one succeeds.
        claimed = session.execute(
            update(EmailToken)
            .where(EmailToken.id == row.id, EmailToken.used_at.is_(None))
            .values(used_at=now)
        )
        user = session.get(User, row.user_id)
        if claimed.rowcount != 1 or user is None:
            raise InvalidEmailToken()
        _mark_verified(session, user)
        return user_data(user)

    return await ctx.db.write(verify)


async def resend_verification(ctx: AuthContext, *, identity: Identity, client_ip: str) -> None:
    """A new verification mail (the earlier ones keep working until they expire)."""
    rows = await ctx.db.fetch(GET_USER, uid=identity.user_id)
    if not rows:
        raise UserNotFound(identity.user_id)
    if rows[0]["email_verified"]:
        raise AlreadyVerified(identity.user_id)
    await ctx.accounts.resend.hit(email=rows[0]["email"], ip=client_ip)

    def send(session: orm.Session) -> None:
        user = session.get(User, identity.user_id)
        if user is None:
            raise UserNotFound(identity.user_id)
        if user.email_verified:
            raise AlreadyVerified(identity.user_id)
        _send_verification(ctx, session, user)

    await ctx.db.write(send)


async def request_password_reset(ctx: AuthContext, *, email: str, client_ip: str) -> None:
    """Mail a reset link to the account of `email`, if there is one.

    The same work for every address, known or not (the throttle, the lookup, a token and
    a stored row), so neither the answer nor its time tells whether the address has an
    account; only the mail, which goes to the address itself, differs.
    """
    await ctx.accounts.reset.hit(email=email, ip=client_ip)
    rows = await ctx.db.fetch(USER_AUTH_BY_EMAIL, email=email)
    user = rows[0] if rows else None
    accounts = ctx.accounts

    def store(session: orm.Session) -> None:
        uid = user["id"] if user else None
        token = _new_email_token(session, user_id=uid, purpose=RESET, ttl=accounts.reset_ttl)
        if user is None:
            return
        text, html = render(
            greeting=f"Hello {user['name']},",
            paragraphs=[
                "Someone (hopefully you) asked to reset the password of your HealthConnect "
                "account.",
                f"The link is valid for {_hours(accounts.reset_ttl)} and works once. Setting a "
                "new password ends every session of the account.",
            ],
            action=("Choose a new password", link(accounts.public_url, "reset", token)),
            footer="If you did not ask for this, ignore this message: your password stays "
            "as it is.",
        )
        subject = "Reset your HealthConnect password"
        stage_mail(session, Mail(to=user["email"], subject=subject, text=text, html=html))

    await ctx.db.write(store)


def _end_sessions(
    session: orm.Session, user_id: int, *, keep: str | None
) -> list[tuple[str, dt.datetime]]:
    """End the user's sessions (all, or all but `keep`): their refresh-token families and
    their rows in the sessions list; returns each ended family with its access tokens'
    latest expiry, for the revocation list."""
    live = (
        RefreshToken.user_id == user_id,
        RefreshToken.revoked_at.is_(None),
        *((RefreshToken.family_id != keep,) if keep else ()),
    )
    families = session.execute(
        select(RefreshToken.family_id, func.max(RefreshToken.access_expires_at))
        .where(*live)
        .group_by(RefreshToken.family_id)
    ).all()
    listed = select(AuthSession.id).where(
        AuthSession.user_id == user_id,
        AuthSession.ended_at.is_(None),
        *((AuthSession.id != keep,) if keep else ()),
    )
    ended = {family for family, _ in families} | set(session.scalars(listed))
    if ended:
        _end_families(session, sorted(ended), utcnow())
    return [(family, expires) for family, expires in families]


async def _revoke_access(ctx: AuthContext, families: list[tuple[str, dt.datetime]]) -> None:
    """Put the ended sessions on the revocation list: their access tokens stop working at
    once, and the gateways close the sockets opened with them (4001)."""
    now = utcnow()
    for family, expires in families:
        if expires > now:
            await ctx.revocations.revoke(jti=None, sid=family, expires_at=int(expires.timestamp()))


def _send_password_notice(ctx: AuthContext, session: orm.Session, user: User, *, how: str) -> None:
    """Tell the address that its password changed (no secret in it)."""
    text, html = render(
        greeting=f"Hello {user.name},",
        paragraphs=[
            f"The password of your HealthConnect account was {how}, and the account's "
            "other sessions were ended.",
            "If this was not you, choose a new password now with “Forgot your password?” "
            "on the sign-in page, and tell the people you work with.",
        ],
        action=("Open HealthConnect", ctx.accounts.public_url.rstrip("/") + "/"),
    )
    subject = "Your HealthConnect password was changed"
    stage_mail(session, Mail(to=user.email, subject=subject, text=text, html=html))


async def confirm_password_reset(ctx: AuthContext, *, token: str, password: str) -> None:
    """Set a new password with a reset token: every session of the account ends.

    Following the link also proves the address, so an unverified one becomes verified.
    """
    token_hash = _hash_token(token)
    rows = await ctx.db.fetch(RESET_TOKEN, token_hash=token_hash)
    now = utcnow()
    if not rows or rows[0]["user_id"] is None or rows[0]["used_at"] is not None:
        raise InvalidEmailToken()
    if rows[0]["expires_at"] <= now:
        raise InvalidEmailToken()
    row_id, user_id = rows[0]["id"], rows[0]["user_id"]
    new_hash = await ctx.passwords.hash(password)

    def apply(session: orm.Session) -> list[tuple[str, dt.datetime]]:
        claimed = session.execute(
            update(EmailToken)
            .where(
                EmailToken.id == row_id,
                EmailToken.used_at.is_(None),
                EmailToken.expires_at > utcnow(),
            )
            .values(used_at=utcnow())
        )
        user = session.get(User, user_id)
        if claimed.rowcount != 1 or user is None:
            raise InvalidEmailToken()
        user.password_hash = new_hash
        # The account's other reset links die with this one.
        session.execute(
            update(EmailToken)
            .where(
                EmailToken.user_id == user_id,
                EmailToken.purpose == RESET,
                EmailToken.used_at.is_(None),
            )
            .values(used_at=utcnow())
        )
        _mark_verified(session, user)
        _send_password_notice(ctx, session, user, how="reset")
        return _end_sessions(session, user_id, keep=None)

    await _revoke_access(ctx, await ctx.db.write(apply))


async def change_password(
    ctx: AuthContext,
    *,
    identity: Identity,
    current_password: str,
    new_password: str,
    client_ip: str,
) -> None:
    """Change the caller's password: every other session ends (the caller's stays).

    A wrong current password counts as a failed login (the login throttle), so a stolen
    access token cannot be used to guess the password.
    """
    rows = await ctx.db.fetch(USER_AUTH_BY_ID, uid=identity.user_id)
    if not rows:
        raise UserNotFound(identity.user_id)
    email = rows[0]["email"]
    await ctx.limiter.check(email, client_ip)
    if not await ctx.passwords.verify(rows[0]["password_hash"], current_password):
        await ctx.limiter.failed(email, client_ip)
        raise WrongPassword()
    new_hash = await ctx.passwords.hash(new_password)

    def apply(session: orm.Session) -> list[tuple[str, dt.datetime]]:
        user = session.get(User, identity.user_id)
        if user is None:
            raise UserNotFound(identity.user_id)
        user.password_hash = new_hash
        _send_password_notice(ctx, session, user, how="changed")
        return _end_sessions(session, user.id, keep=identity.sid)

    await _revoke_access(ctx, await ctx.db.write(apply))


async def purge_email_tokens_forever(ctx: AuthContext) -> None:
    """Delete verification and reset tokens a day after they expired."""
    failing = False
    while True:
        await asyncio.sleep(TOKEN_PURGE_SECONDS)
        old = delete(EmailToken).where(EmailToken.expires_at < utcnow() - TOKEN_KEEP)
        try:
            await ctx.db.write(lambda session, old=old: session.execute(old))
            failing = False
        except sqlalchemy.exc.SQLAlchemyError:
            if not failing:
                log.warning("email tokens: purge failed; will retry", exc_info=True)
            failing = True


# --- sessions -----------------------------------------------------------------------------

_SESSION_COLUMNS = (
    AuthSession.id,
    AuthSession.created_at,
    AuthSession.last_used_at,
    AuthSession.user_agent,
    AuthSession.ip,
)
# Live: not ended, used within the idle timeout, begun within the maximum lifetime.
_LIVE = (
    AuthSession.user_id == bindparam("uid"),
    AuthSession.ended_at.is_(None),
    AuthSession.last_used_at > bindparam("idle_since"),
    AuthSession.created_at > bindparam("started_since"),
)
LIVE_SESSIONS = (
    select(*_SESSION_COLUMNS)
    .where(*_LIVE)
    .order_by(AuthSession.created_at.desc(), AuthSession.id.desc())
    .limit(bindparam("limit"))
    .offset(bindparam("offset"))
)
LIVE_SESSION = select(AuthSession.id, AuthSession.created_at).where(
    *_LIVE, AuthSession.id == bindparam("sid")
)


def _live_params(ctx: AuthContext, user_id: int) -> dict[str, Any]:
    now = ctx.now()
    return {
        "uid": user_id,
        "idle_since": now - ctx.session_idle,
        "started_since": now - ctx.session_max,
    }


def session_json(row: Mapping[str, Any], current_sid: str) -> dict[str, Any]:
    return {
        "id": row["id"],
        "created_at": format_timestamp(row["created_at"]),
        "last_used_at": format_timestamp(row["last_used_at"]),
        "user_agent": row["user_agent"],
        "ip": row["ip"],
        "current": row["id"] == current_sid,
    }


async def list_sessions(
    ctx: AuthContext, *, identity: Identity, limit: int, offset: int
) -> list[dict[str, Any]]:
    """The caller's live sessions, newest first."""
    params = _live_params(ctx, identity.user_id)
    rows = await ctx.db.fetch(LIVE_SESSIONS, **params, limit=limit, offset=offset)
    return [session_json(row, identity.sid) for row in rows]


async def end_session(ctx: AuthContext, *, identity: Identity, session_id: str) -> None:
    """End one of the caller's live sessions: its refresh token and every access token it
    issued stop working at once, and the sockets opened with them close (by `sid`).

    The revocation goes to Redis first, for as long as any token of the session can live
    (tokens are capped at its maximum lifetime), so a refresh racing with this cannot mint
    a token that outlives it; then the database ends the session.
    """
    rows = await ctx.db.fetch(LIVE_SESSION, **_live_params(ctx, identity.user_id), sid=session_id)
    if not rows:
        raise SessionNotFound(session_id)
    now = ctx.now()
    latest = await ctx.db.query(
        lambda session: session.scalar(
            select(func.max(RefreshToken.access_expires_at)).where(
                RefreshToken.family_id == session_id
            )
        )
    )
    until = rows[0]["created_at"] + ctx.session_max
    if latest and latest > until:
        until = latest
    await ctx.revocations.revoke(jti=None, sid=session_id, expires_at=int(until.timestamp()))
    await ctx.db.write(lambda session: _end_families(session, [session_id], now))


# --- MFA (TOTP and recovery codes) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enrolment:
    """A TOTP secret waiting for its first code, and how to hand it to an authenticator."""

    secret: str
    otpauth_uri: str
    qr_code: str  # the URI as a QR code: an SVG in a data: URI


@dataclass(frozen=True, slots=True)
class RecoveryCodes:
    codes: list[str]


class MfaTurnedOff:
    """What the unit of work that turns MFA off returns (the answer to record)."""


MFA_OFF = MfaTurnedOff()


def _use_code(ctx: AuthContext, session: orm.Session, user_id: int, code: str) -> bool:
    """Accept a current TOTP code of the confirmed secret, or an unused recovery code, once.

    Compare-and-set in the database: of two requests with one code, only one gets it
    (a TOTP's time step must be newer than the last accepted; a recovery code unused).
    """
    secret_row = session.get(MfaTotp, user_id)
    if secret_row is None or secret_row.confirmed_at is None:
        return False
    if totp.looks_like_totp(code):
        secret = ctx.mfa_keys.unseal(user_id, secret_row.sealed_secret)
        if secret is None:
            log.error("TOTP secret of user %s does not decrypt under this signing key", user_id)
            return False
        step = totp.matching_step(secret, code, now=ctx.clock(), after=secret_row.last_step)
        if step is None:
            return False
        claimed = session.execute(
            update(MfaTotp)
            .where(
                MfaTotp.user_id == user_id,
                or_(MfaTotp.last_step.is_(None), MfaTotp.last_step < step),
            )
            .values(last_step=step)
        )
        return claimed.rowcount == 1
    used = session.execute(
        update(RecoveryCode)
        .where(
            RecoveryCode.user_id == user_id,
            RecoveryCode.code_hash == ctx.mfa_keys.code_hash(user_id, code),
            RecoveryCode.used_at.is_(None),
        )
        .values(used_at=ctx.now())
    )
    return used.rowcount == 1


def _reauth(user_id: int) -> str:
    """The throttle's name for a signed-in user proving themself again (a password to
    enrol, a code to turn MFA off): counted like failed logins (the same limits, and per
    client address with them), but apart from the account's logins, so that whoever holds
    a stolen access token cannot lock the owner out of logging in."""
    return f"user:{user_id}"


async def _user(ctx: AuthContext, user_id: int) -> User:
    user = await ctx.db.query(lambda session: session.get(User, user_id))
    if user is None:
        raise UserNotFound(user_id)
    return user


async def enrol_totp(
    ctx: AuthContext, *, identity: Identity, password: str, client_ip: str
) -> Enrolment:
    """A new TOTP secret, not active until confirmed; it replaces one not yet confirmed.

    The password is checked as a login's is, and throttled (`_reauth`), so a stolen access
    token alone can neither enrol nor guess the password here.
    """
    user = await _user(ctx, identity.user_id)
    await ctx.limiter.check(_reauth(user.id), client_ip)
    if not await ctx.passwords.verify(user.password_hash, password):
        await ctx.limiter.failed(_reauth(user.id), client_ip)
        raise WrongPassword()
    if user.mfa_enabled:
        raise MfaAlreadyEnabled()
    secret = totp.new_secret()
    uri = totp.otpauth_uri(secret, user.email)
    enrolment = Enrolment(secret, uri, totp.qr_svg_data_uri(uri))
    sealed = ctx.mfa_keys.seal(user.id, secret)

    def replace(session: orm.Session) -> Enrolment:
        if session.scalar(select(User.mfa_enabled).where(User.id == user.id)):
            raise MfaAlreadyEnabled()  # confirmed meanwhile
        session.execute(delete(MfaTotp).where(MfaTotp.user_id == user.id))
        session.add(MfaTotp(user_id=user.id, sealed_secret=sealed, created_at=ctx.now()))
        return enrolment

    return await ctx.db.write(replace)


async def confirm_totp(ctx: AuthContext, *, identity: Identity, code: str) -> RecoveryCodes:
    """A current code of the pending secret turns MFA on; 10 new recovery codes (stored
    keyed-hashed, shown this once)."""
    user_id = identity.user_id
    codes = totp.new_recovery_codes()
    hashes = [ctx.mfa_keys.code_hash(user_id, c) for c in codes]
    now = ctx.now()

    def confirm(session: orm.Session) -> RecoveryCodes:
        if session.scalar(select(User.mfa_enabled).where(User.id == user_id)):
            raise MfaAlreadyEnabled()
        pending = session.get(MfaTotp, user_id)
        if pending is None or pending.confirmed_at is not None:
            raise InvalidCode()  # nothing to confirm: no code can be right
        secret = ctx.mfa_keys.unseal(user_id, pending.sealed_secret)
        step = (
            totp.matching_step(secret, code, now=ctx.clock(), after=pending.last_step)
            if secret
            else None
        )
        if step is None:
            raise InvalidCode()
        confirmed = session.execute(
            update(MfaTotp)
            .where(MfaTotp.user_id == user_id, MfaTotp.confirmed_at.is_(None))
            .values(confirmed_at=now, last_step=step)
        )
        if confirmed.rowcount != 1:
            raise InvalidCode()
        session.execute(update(User).where(User.id == user_id).values(mfa_enabled=True))
        session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
        session.execute(
            insert(RecoveryCode), [{"user_id": user_id, "code_hash": h} for h in hashes]
        )
        return RecoveryCodes(codes)

    result = await ctx.db.write(confirm)
    if ctx.mfa_policy is not None and ctx.mfa_policy.covers(identity.role):
        # Lets the tokens the user holds through at once (services/common/mfa.py). Best
        # effort: MFA is on and the codes must reach the user; without the flag their next
        # refresh gets a token that says so.
        try:
            ttl = int(ctx.issuer.ttl.total_seconds()) + 60
            await ctx.redis.set(enrolled_key(user_id), 1, ex=ttl)
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("MFA enrolment flag of user %s not set: %r", user_id, exc)
    return result


async def disable_totp(
    ctx: AuthContext, *, identity: Identity, code: str, client_ip: str
) -> MfaTurnedOff:
    """A current TOTP code or an unused recovery code turns MFA off. Wrong codes are
    throttled (`_reauth`), so a stolen access token cannot guess its way to turning it off."""
    user = await _user(ctx, identity.user_id)
    if not user.mfa_enabled:
        raise MfaNotEnabled()
    await ctx.limiter.check(_reauth(user.id), client_ip)
    if not await ctx.db.write(lambda session: _use_code(ctx, session, user.id, code)):
        await ctx.limiter.failed(_reauth(user.id), client_ip)
        raise InvalidCode()
    if ctx.mfa_policy is not None and ctx.mfa_policy.covers(user.role):
        # Before MFA is off, so that no token saying it is on outlives this answer: the
        # client refreshes and gets one that says it is off (services/common/mfa.py).
        await _revoke_access_tokens(ctx, user.id)

    def turn_off(session: orm.Session) -> MfaTurnedOff:
        session.execute(delete(MfaTotp).where(MfaTotp.user_id == user.id))
        session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
        session.execute(update(User).where(User.id == user.id).values(mfa_enabled=False))
        return MFA_OFF

    return await ctx.db.write(turn_off)


async def _revoke_access_tokens(ctx: AuthContext, user_id: int) -> None:
    """Every live access token of the user stops working (their sessions go on)."""
    now = utcnow()
    rows = await ctx.db.query(
        lambda session: session.execute(
            select(RefreshToken.access_jti, RefreshToken.access_expires_at).where(
                RefreshToken.user_id == user_id, RefreshToken.access_expires_at > now
            )
        ).all()
    )
    await ctx.redis.delete(enrolled_key(user_id))
    for jti, expires_at in rows:
        await ctx.revocations.revoke(jti=jti, sid=None, expires_at=int(expires_at.timestamp()))
