"""Auth use cases: accounts, sessions, verified addresses, passwords, the directory. No HTTP."""

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
from sqlalchemy import Select, bindparam, delete, func, or_, orm, select, update

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
from services.common.outbox import stage
from services.common.tasks import ErrorOnce
from services.common.tokens import Identity, RevocationList, TokenIssuer, new_opaque_token

from .tables import ClientLink, EmailToken, RefreshToken, User

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
    )


def _new_refresh(ctx: AuthContext, user: User, family_id: str) -> tuple[RefreshToken, str, str]:
    access, claims = ctx.issuer.issue(user_id=user.id, role=user.role, session_id=family_id)
    token = new_opaque_token()
    row = RefreshToken(
        user_id=user.id,
        family_id=family_id,
        token_hash=_hash_token(token),
        expires_at=utcnow() + ctx.refresh_ttl,
        access_jti=claims["jti"],
        access_expires_at=dt.datetime.fromtimestamp(claims["exp"], dt.UTC),
    )
    return row, access, token


async def signup(
    ctx: AuthContext, *, name: str, email: str, password: str, role: str, client_ip: str = ""
) -> Session:
    await ctx.accounts.signup.hit(email=email, ip=client_ip)
    if await ctx.db.fetch(USER_BY_EMAIL, email=email):
        raise EmailTaken(email)
    password_hash = await ctx.passwords.hash(password)

    def create(session: orm.Session) -> Session:
        user = User(
            name=name, email=email, role=role, password_hash=password_hash, email_verified=False
        )
        session.add(user)
        session.flush()
        row, access, refresh = _new_refresh(ctx, user, uuid.uuid4().hex)
        session.add(row)
        stage(session, UserRegistered(data=UserPayload(user=user_data(user))))
        _send_verification(ctx, session, user)
        return Session(user, access, refresh)

    try:
        return await ctx.db.write(create)
    except sqlalchemy.exc.IntegrityError as exc:  # a concurrent signup took the email
        raise EmailTaken(email) from exc


async def login(ctx: AuthContext, *, email: str, password: str, client_ip: str) -> Session:
    # Throttle before verifying: past the limit even the right password gets 429.
    await ctx.limiter.check(email, client_ip)
    user = await ctx.db.query(lambda session: session.scalar(select(User).filter_by(email=email)))
    ok = await ctx.passwords.verify(user.password_hash if user else None, password)
    if not (user and ok):
        await ctx.limiter.failed(email, client_ip)
        raise InvalidCredentials()
    await ctx.limiter.succeeded(email, client_ip)
    new_hash = None
    if ctx.passwords.needs_rehash(user.password_hash):
        new_hash = await ctx.passwords.hash(password)

    def start(session: orm.Session) -> Session:
        if new_hash:
            session.execute(update(User).where(User.id == user.id).values(password_hash=new_hash))
        row, access, refresh = _new_refresh(ctx, user, uuid.uuid4().hex)
        session.add(row)
        return Session(user, access, refresh)

    return await ctx.db.write(start)


async def refresh(ctx: AuthContext, *, refresh_token: str) -> Session:
    """Rotate a refresh token. Presenting a rotated one again revokes its whole family."""
    now = utcnow()

    def rotate(session: orm.Session) -> Session | RefreshToken:
        """The new session, or the reused row when the token was already rotated."""
        row = session.scalar(
            select(RefreshToken).where(RefreshToken.token_hash == _hash_token(refresh_token))
        )
        if row is None or row.revoked_at is not None or row.expires_at <= now:
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
        new_row, access, new_token = _new_refresh(ctx, user, row.family_id)
        session.add(new_row)
        return Session(user, access, new_token)

    rotated = await ctx.db.write(rotate)
    if isinstance(rotated, Session):
        return rotated
    # Reuse of a rotated token: someone holds a stolen copy. End the whole session.
    log.warning("refresh token reuse detected for user %s; revoking its family", rotated.user_id)
    await revoke_family(ctx, family_id=rotated.family_id)
    raise InvalidRefreshToken()


async def revoke_family(ctx: AuthContext, *, family_id: str) -> None:
    now = utcnow()

    def revoke(session: orm.Session) -> dt.datetime | None:
        session.execute(
            update(RefreshToken)
            .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        return session.scalar(
            select(RefreshToken.access_expires_at)
            .where(RefreshToken.family_id == family_id)
            .order_by(RefreshToken.access_expires_at.desc())
            .limit(1)
        )

    latest = await ctx.db.write(revoke)
    if latest and latest > now:
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
    revoke = (
        update(RefreshToken)
        .where(RefreshToken.family_id.in_(families), RefreshToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    await ctx.db.write(lambda session: session.execute(revoke))


_USER_COLUMNS = (User.id, User.name, User.email, User.role, User.created_at, User.email_verified)
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


class WrongPassword(AuthError):
    """The current password given to change it is wrong (403: the caller is signed in)."""


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
    """Revoke the user's refresh-token families (all, or all but `keep`); returns each
    ended family with its access tokens' latest expiry, for the revocation list."""
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
    session.execute(update(RefreshToken).where(*live).values(revoked_at=utcnow()))
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
