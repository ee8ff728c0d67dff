"""Auth use cases: sign up, log in, refresh, log out, and the users directory. No HTTP here."""

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

import sqlalchemy.exc
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from redis.asyncio import Redis
from sqlalchemy import Select, bindparam, or_, orm, select, update

from services.common.consumer import CatchUp, CopyBehind
from services.common.db import Database, utcnow
from services.common.events import (
    ConnectionEvent,
    Event,
    UserData,
    UserPayload,
    UserRegistered,
    format_timestamp,
)
from services.common.outbox import stage
from services.common.tokens import Identity, RevocationList, TokenIssuer, new_opaque_token

from .tables import ClientLink, RefreshToken, User

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


class LoginLimiter:
    """Sliding-window counts of failed logins per email and per client address, in Redis."""

    def __init__(self, redis: Redis, *, per_email: int, per_ip: int, window: int) -> None:
        self._redis = redis
        self._limits = {"email": per_email, "ip": per_ip}
        self._window = window

    @staticmethod
    def _keys(email: str, ip: str) -> dict[str, str]:
        digest = hashlib.sha256(email.encode()).hexdigest()[:32]  # no address in Redis keys
        return {"email": f"login:fail:email:{digest}", "ip": f"login:fail:ip:{ip}"}

    async def check(self, email: str, ip: str) -> None:
        now = time.time()
        keys = self._keys(email, ip)
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
            raise RateLimited(retry)

    async def failed(self, email: str, ip: str) -> None:
        now = time.time()
        member = f"{now:.6f}:{uuid.uuid4().hex[:8]}"
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in self._keys(email, ip).values():
                pipe.zadd(key, {member: now})
                pipe.expire(key, self._window + 60)
            await pipe.execute()

    async def succeeded(self, email: str, ip: str) -> None:
        await self._redis.delete(self._keys(email, ip)["email"])


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


@dataclass(frozen=True, slots=True)
class Session:
    user: User
    access_token: str
    refresh_token: str


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def user_data(user: User) -> UserData:
    return UserData(
        id=user.id, name=user.name, email=user.email, role=user.role, created_at=user.created_at
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


async def signup(ctx: AuthContext, *, name: str, email: str, password: str, role: str) -> Session:
    if await ctx.db.fetch(USER_BY_EMAIL, email=email):
        raise EmailTaken(email)
    password_hash = await ctx.passwords.hash(password)

    def create(session: orm.Session) -> Session:
        user = User(name=name, email=email, role=role, password_hash=password_hash)
        session.add(user)
        session.flush()
        row, access, refresh = _new_refresh(ctx, user, uuid.uuid4().hex)
        session.add(row)
        stage(session, UserRegistered(data=UserPayload(user=user_data(user))))
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


_USER_COLUMNS = (User.id, User.name, User.email, User.role, User.created_at)
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
