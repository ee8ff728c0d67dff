"""`Idempotency-Key` on POST, PATCH and DELETE: a retried request gets the first answer again.

The key, its caller (the scope), a fingerprint of the request and the answer are stored in
the service's own database, in the same transaction as the change (a before-commit hook of
`Database`), so a change and its record commit or roll back together: after a kill -9
between the commit and the reply the retry finds the record and replays it, and nothing is
applied twice. Only 2xx answers are kept; a failed request changed nothing, so a retry
simply runs again. Records live 24 hours (IETF httpapi "Idempotency-Key" draft).

Duplicates that overlap: this process answers 409 at once from its map of keys in flight;
across replicas the unique constraint on (scope, key) decides, and the loser, rolled back,
replays what the winner stored.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import hashlib
import hmac
import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy.exc
from aiohttp import web
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel
from sqlalchemy import (
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    bindparam,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.orm import Mapped, Session, declared_attr, mapped_column

from .db import UNIT_RESULT, Database, UTCDateTime, utcnow
from .openapi import Route
from .problems import Problem
from .tables import Id
from .web import MAX_BODY, authenticate

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
METHODS = frozenset({"POST", "PATCH", "DELETE"})
TTL = dt.timedelta(hours=24)
PURGE_EVERY_SECONDS = 600.0
# 1-255 visible ASCII characters, optionally as a quoted string (the draft makes the
# header a Structured Field string; clients commonly send the bare value).
_KEY = re.compile(r"[\x21\x23-\x7e]{1,255}")

# The idempotent request being handled in this task (set by the middleware), read by the
# before-commit hook of the unit of work that applies it.
_pending: ContextVar[Pending | None] = ContextVar("idempotency_pending", default=None)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class IdempotencyMixin:
    """Columns of a service's `idempotency_keys` table; each service maps it on its Base."""

    __tablename__ = "idempotency_keys"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    # "user:<id>" for a signed-in caller; "anonymous:<secret's tag>" for signup, login and
    # refresh.
    scope: Mapped[str] = mapped_column(String(80))
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))  # method, path and body
    status: Mapped[int] = mapped_column(Integer)
    body: Mapped[str] = mapped_column(Text)  # JSON text, or base64 of it encrypted
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        return (
            UniqueConstraint("scope", "key", name="uq_idempotency_keys_scope_key"),
            Index("ix_idempotency_keys_created_at", "created_at"),
        )


def parse_key(values: list[str]) -> str:
    """The key of the request's one `Idempotency-Key` header, else 400."""
    value = values[0].strip() if len(values) == 1 else ""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not _KEY.fullmatch(value):
        raise Problem(
            400,
            "invalid_idempotency_key",
            "Idempotency-Key must be one header of 1 to 255 visible ASCII characters "
            "(optionally quoted).",
            errors=[{"field": HEADER, "message": "1 to 255 visible ASCII characters"}],
        )
    return value


def _canonical(raw: bytes) -> bytes:
    """The body with JSON objects' keys sorted and no spacing, so that a client which
    serialises the same object again is not taken for a different request."""
    if not raw.strip():
        return b""
    try:
        return orjson.dumps(orjson.loads(raw), option=orjson.OPT_SORT_KEYS)
    except (orjson.JSONDecodeError, TypeError):
        return raw


def secret_from_key(key_bytes: bytes) -> bytes:
    """A secret for the anonymous routes' records, derived from a key the service keeps."""
    return hmac.new(key_bytes, b"healthconnect idempotency records", hashlib.sha256).digest()


@dataclass(slots=True)
class Stored:
    status: int
    body: bytes


@dataclass(slots=True)
class Pending:
    """An idempotent request on its way: what the hook records, and what it recorded."""

    scope: str
    key: str
    fingerprint: str
    route: Route
    cipher_key: bytes | None  # anonymous routes: their answers are stored encrypted
    owner: Idempotency  # whose database records it (one per `Database`, but be sure)
    staged: Stored | None = None  # inserted in the current transaction
    recorded: Stored | None = None  # committed
    collided: bool = False  # the insert met another request's record
    # The lookup met a record of this key that is no answer any more (expired, or sealed
    # under a secret since replaced): its creation time, so that it can be replaced.
    stale: dt.datetime | None = None


def answer_of(route: Route, result: Any) -> Stored | None:
    """The answer a route gives for its unit of work's `result`, or None if it cannot tell
    (then nothing is recorded in that transaction).

    Every mutating route answers its declared status with its use case's result: a model
    of `route.response` as JSON (`route.reply` turns another result into one), or an empty
    body when it declares none.
    """
    if route.reply is not None:
        result = route.reply(result)
        if result is None:
            return None
    if route.response is None:
        return Stored(route.status, b"")
    if isinstance(result, route.response) and isinstance(result, BaseModel):
        return Stored(route.status, result.model_dump_json().encode())
    return None


class Idempotency:
    """Records and replays the answers of one service's idempotent requests."""

    def __init__(
        self,
        db: Database,
        model: type[IdempotencyMixin],
        routes: Iterable[Route],
        *,
        secret: bytes | None = None,
    ) -> None:
        self.db = db
        self.model = model
        self.secret = secret
        self.routes = {r.handler: r for r in routes if r.method in METHODS and r.idempotent}
        self.in_flight: set[tuple[str, str]] = set()
        # Awaited before a replay leaves (the service waits for its outbox there).
        self.before_replay: Callable[[web.Response], Awaitable[None]] | None = None
        tag = hmac.new(secret, b"scope", hashlib.sha256).hexdigest()[:12] if secret else ""
        self._anonymous_scope = f"anonymous:{tag}"
        table = model.__table__
        self._insert = insert(table)
        self._lookup = select(model.fingerprint, model.status, model.body, model.created_at).where(
            model.scope == bindparam("scope"), model.key == bindparam("key")
        )
        self._stale_one = delete(table).where(
            model.scope == bindparam("scope"),
            model.key == bindparam("key"),
            model.created_at == bindparam("created_at"),
        )
        # Must run before the outbox's hook: on PostgreSQL that one takes an advisory lock
        # until commit, and waiting on another transaction's key while holding it could
        # deadlock with that transaction waiting for the lock.
        db.on_before_commit(self._stage)
        db.on_after_commit(self._committed)

    # -- inside the unit of work ------------------------------------------------------

    def _stage(self, session: Session) -> None:
        pending = _pending.get()
        if pending is None or pending.owner is not self or pending.recorded is not None:
            return
        answer = answer_of(pending.route, session.info.get(UNIT_RESULT))
        if answer is None:
            return
        now = utcnow()
        ids = {"scope": pending.scope, "key": pending.key}
        if pending.stale is not None:  # no longer an answer: the key starts afresh
            session.execute(self._stale_one, {**ids, "created_at": pending.stale})
        try:
            session.execute(
                self._insert,
                {
                    **ids,
                    "fingerprint": pending.fingerprint,
                    "status": answer.status,
                    "body": self._seal(pending, answer.body),
                    "created_at": now,
                },
            )
        except sqlalchemy.exc.IntegrityError:
            # Another replica recorded this key first: roll the change back (raising
            # aborts the unit of work) and replay that replica's answer instead.
            pending.collided = True
            raise
        pending.staged = answer

    def _committed(self, session: Session) -> None:
        pending = _pending.get()
        if pending is not None and pending.owner is self and pending.staged is not None:
            pending.recorded, pending.staged = pending.staged, None

    # -- around the handler -----------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method not in METHODS or HEADER not in request.headers:
            return await handler(request)
        route = self.routes.get(getattr(request.match_info.route, "handler", None))
        if route is None:  # no such route (nothing will be applied), or one that takes no key
            return await handler(request)
        key = parse_key(request.headers.getall(HEADER))
        if request.content_length is not None and request.content_length > MAX_BODY:
            return await handler(request)  # answered 413 by the handler; nothing to record
        body = _canonical(await request.read())
        material = f"{request.method} {request.path.rstrip('/')}\n".encode() + body
        scope = self._anonymous_scope
        if route.auth:
            identity = await authenticate(request)
            scope = f"user:{identity.user_id}"
        if route.auth and not route.secret:
            fingerprint = hashlib.sha256(material).hexdigest()
            cipher_key = None
        elif self.secret is not None:
            # Anonymous (signup, login, refresh): there is no caller to scope by, so these
            # keys share one scope and the key alone names the request (clients draw keys
            # at random, e.g. UUIDs); the fingerprint still tells a replay (the very same
            # body, so the same password or refresh token) from another request (422,
            # which reveals nothing about the first). The fingerprint is keyed with the
            # service's secret so that the stored value is no fast test of a guessed
            # password, and the answer (live tokens) is stored encrypted under a key
            # derived from the body and that secret: the database alone cannot read it,
            # just as it cannot read refresh tokens (stored hashed).
            # The scope names the secret, so that after a new signing key the records made
            # under the old one are simply not found (they could not be checked or opened).
            # A signed-in route whose body or answer holds a secret (a password, an MFA
            # code, a TOTP secret, recovery codes: `Route.secret`) is recorded the same
            # way, under its user's scope.
            fingerprint = hmac.new(self.secret, material, hashlib.sha256).hexdigest()
            cipher_key = hmac.new(self.secret, b"seal\n" + material, hashlib.sha256).digest()
        else:
            return await handler(request)  # no secret to protect anonymous answers with
        pending = Pending(scope, key, fingerprint, route, cipher_key, self)
        slot = (scope, key)
        if slot in self.in_flight:
            raise _in_flight()
        self.in_flight.add(slot)  # before any await: a duplicate arriving now gets 409
        token = _pending.set(pending)
        try:
            found = await self._find(pending)
            if found is not None:
                return found
            try:
                response = await handler(request)
            except Exception:
                if pending.recorded is None:
                    # Beaten by a duplicate on another replica (the unique key, or a lock
                    # on the rows both change): that one's answer is this one's too.
                    found = await self._find(pending)
                    if found is not None:
                        return found
                if pending.collided:
                    raise _in_flight() from None
                raise
            return await self._settle(pending, response)
        finally:
            _pending.reset(token)
            self.in_flight.discard(slot)

    async def _settle(self, pending: Pending, response: web.StreamResponse) -> web.StreamResponse:
        """Check the recorded answer against the real one; record a 2xx that wrote none."""
        if not 200 <= response.status < 300 or not isinstance(response, web.Response):
            if pending.recorded is None:
                found = await self._find(pending)
                if found is not None:
                    return found
            return response
        actual = Stored(response.status, bytes(response.body or b""))
        if pending.recorded == actual:
            return response
        body = self._seal(pending, actual.body)
        m = self.model
        if pending.recorded is not None:
            log.error(
                "idempotency: %s answered %s, not the %s recorded in its transaction; fixed",
                pending.route.path,
                actual.status,
                pending.recorded.status,
            )
            fix = (
                update(m)
                .where(m.scope == pending.scope, m.key == pending.key)
                .values(status=actual.status, body=body)
            )
            await self.db.write(lambda session: session.execute(fix))
            return response
        # A 2xx that changed nothing in this database (e.g. a logout with no session rows
        # left): record it on its own; a retry after a crash here may safely run again.
        pending.recorded = actual  # this unit of work is the record: the hook stays out
        now = utcnow()
        row = {
            "scope": pending.scope,
            "key": pending.key,
            "fingerprint": pending.fingerprint,
            "status": actual.status,
            "body": body,
            "created_at": now,
        }
        stale = {"scope": pending.scope, "key": pending.key, "created_at": pending.stale}

        def record(session: Session) -> None:
            if pending.stale is not None:
                session.execute(self._stale_one, stale)
            session.execute(self._insert, row)

        with contextlib.suppress(sqlalchemy.exc.IntegrityError):  # a duplicate's record won
            await self.db.write(record)
        return response

    async def _find(self, pending: Pending) -> web.Response | None:
        """The recorded answer to replay (or 422 for another request under this key)."""
        rows = await self.db.fetch(self._lookup, scope=pending.scope, key=pending.key)
        if not rows:
            return None
        if rows[0]["created_at"] < utcnow() - TTL:
            pending.stale = rows[0]["created_at"]
            return None
        row = rows[0]
        if not hmac.compare_digest(row["fingerprint"], pending.fingerprint):
            raise Problem(
                422,
                "idempotency_key_reused",
                "This Idempotency-Key was used for a different request; use a new key.",
            )
        body = self._open(pending, row["body"])
        if body is None:  # cannot be opened (damaged): no answer, the key starts afresh
            pending.stale = row["created_at"]
            return None
        response = web.Response(status=row["status"], body=body or None)
        if body:
            response.content_type = "application/json"
        response.headers[REPLAYED] = "true"
        if self.before_replay is not None:
            await self.before_replay(response)
        return response

    def _seal(self, pending: Pending, body: bytes) -> str:
        if pending.cipher_key is None:
            return body.decode()
        nonce = os.urandom(12)
        sealed = AESGCM(pending.cipher_key).encrypt(nonce, body, _bound_to(pending))
        return base64.b64encode(nonce + sealed).decode()

    def _open(self, pending: Pending, stored: str) -> bytes | None:
        if pending.cipher_key is None:
            return stored.encode()
        try:
            raw = base64.b64decode(stored)
            return AESGCM(pending.cipher_key).decrypt(raw[:12], raw[12:], _bound_to(pending))
        except (binascii.Error, ValueError, InvalidTag):  # not sealed under this secret
            return None

    async def purge(self) -> None:
        m = self.model
        old = delete(m).where(m.created_at < utcnow() - TTL)
        await self.db.write(lambda session: session.execute(old))

    async def purge_forever(self) -> None:
        """Drop expired records every few minutes (an expired one is ignored anyway)."""
        failing = False
        while True:
            await asyncio.sleep(PURGE_EVERY_SECONDS)
            try:
                await self.purge()
                failing = False
            except sqlalchemy.exc.SQLAlchemyError:
                if not failing:  # once per outage, not every round
                    log.warning("idempotency: purge failed; will retry", exc_info=True)
                failing = True


def _bound_to(pending: Pending) -> bytes:
    """Associated data of a sealed answer: it opens only as the record it was made for."""
    return f"{pending.scope}\n{pending.key}".encode()


def _in_flight() -> Problem:
    return Problem(
        409,
        "idempotency_key_in_flight",
        "A request with this Idempotency-Key is still being processed; retry shortly.",
        headers={"Retry-After": "1"},
    )
