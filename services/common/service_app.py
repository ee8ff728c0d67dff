"""The shape every service shares: app factory, cleanup contexts, health, entry point.

A service describes itself with a `ServiceSpec` (its tables' outbox model, routes,
domain errors, and what it consumes); everything else is built here once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from redis.asyncio import BlockingConnectionPool, Redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .consumer import Consumer, CopyBehind, Handler, ReadBarrier, Units
from .db import Database
from .events import Event
from .health import CachedCheck, health_response, probe
from .idempotency import Idempotency, IdempotencyMixin
from .mail import Mailer, MailOutboxMixin
from .mfa import MfaPolicy
from .migrations import WrongEncoding, upgrade
from .openapi import Route, openapi_handler, register
from .outbox import (
    READ_AFTER_HEADER,
    Outbox,
    OutboxMixin,
    parse_positions,
)
from .problems import DomainErrors, domain_error_middleware
from .settings import CommonSettings, ServiceSettings
from .tokens import RevocationList, TokenVerifier, ensure_dev_keys, load_public_key
from .web import (
    base_app,
    configure_logging,
    mfa_policy_key,
    redis_key,
    revocations_key,
    verifier_key,
)
from .web import serve as serve_app

log = logging.getLogger(__name__)

db_key = web.AppKey("db", Database)
outbox_key = web.AppKey("outbox", Outbox)
consumer_key = web.AppKey("consumer", Consumer)
idempotency_key = web.AppKey("idempotency", Idempotency)
settings_key = web.AppKey("settings", CommonSettings)
barrier_key = web.AppKey("barrier", ReadBarrier)
catch_up_key = web.AppKey("catch_up", object)
readiness_key = web.AppKey("readiness", CachedCheck)
mailer_key = web.AppKey("mailer", Mailer)

CleanupCtx = Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]


@dataclass
class Subscription:
    """What a service consumes: its group, the streams, and the handler given the DB."""

    group: str
    streams: Sequence[str]
    handler: Callable[[Database], Handler]


@dataclass
class ServiceSpec:
    name: str
    outbox_model: type[OutboxMixin]
    idempotency_model: type[IdempotencyMixin]
    routes: Sequence[Route]
    errors: DomainErrors
    migrations: Path
    subscription: Subscription | None = None
    # The use cases' context: stored under the key, built with `db=` and `catch_up=`.
    context: tuple[web.AppKey[Any], Callable[..., Any]] | None = None
    contexts: list[Any] = field(default_factory=list)
    # The secret that protects recorded answers of anonymous routes (see idempotency.py);
    # without one those routes take an Idempotency-Key but record nothing.
    idempotency_secret: Callable[[], bytes] | None = None
    # The service's `mail_outbox` table, when it sends mail (services/common/mail.py).
    mail_model: type[MailOutboxMixin] | None = None


REDIS_POOL_SIZE = 64


def make_redis(url: str) -> Redis:
    """A client whose pool is bounded: a burst of requests waits briefly for a connection
    instead of opening hundreds at once (seen: handshakes failing with 503 while
    thousands of sockets connected). One quick retry heals a connection broken by a
    Redis restart; more would only delay the 503 a caller should get while it is down."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_POOL_SIZE,
        timeout=5,
        socket_connect_timeout=2,
        socket_timeout=10,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 1),
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() disconnects it


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    client = make_redis(app[settings_key].redis_url)
    app[redis_key] = client
    if app[settings_key].check_revocation:
        app[revocations_key] = RevocationList(client)
    if roles := app[settings_key].auth_require_mfa:
        app[mfa_policy_key] = MfaPolicy(client, roles)
    yield
    await client.aclose()


def verifier_for(settings: CommonSettings) -> TokenVerifier:
    key = load_public_key(settings.jwt_public_key, settings.public_key_path)
    return TokenVerifier(key, issuer=settings.jwt_issuer, audience=settings.jwt_audience)


@contextlib.asynccontextmanager
async def background(coro: Any, name: str) -> AsyncIterator[asyncio.Task[Any]]:
    """Run a task for the app's lifetime; cancelled and awaited on shutdown."""
    task = asyncio.create_task(coro, name=name)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@web.middleware
async def idempotent(request: web.Request, handler: Any) -> web.StreamResponse:
    return await request.app[idempotency_key].middleware(request, handler)


@web.middleware
async def publish_before_reply(request: web.Request, handler: Any) -> web.StreamResponse:
    return await request.app[outbox_key].middleware(request, handler)


# The outbox rows the gateway has seen answered, per stream (X-Read-After), for this
# request's read barrier.
_read_after: ContextVar[dict[str, int] | None] = ContextVar("read_after", default=None)


# How long this request spent making sure its local copies were current (the read
# barrier), reported as `Server-Timing: copy;dur=<ms>` so a client or a benchmark sees it.
_copy_waits: ContextVar[list[float] | None] = ContextVar("copy_waits", default=None)


@web.middleware
async def read_after(request: web.Request, handler: Any) -> web.StreamResponse:
    value = request.headers.get(READ_AFTER_HEADER)
    token = _read_after.set(parse_positions(value) if value else None)
    waits: list[float] = []
    waits_token = _copy_waits.set(waits)
    try:
        response = await handler(request)
    finally:
        _read_after.reset(token)
        _copy_waits.reset(waits_token)
    if waits and not response.prepared:
        response.headers["Server-Timing"] = f"copy;dur={sum(waits) * 1000:.1f}"
    return response


def create_service_app(spec: ServiceSpec, settings: ServiceSettings) -> web.Application:
    errors = {
        **spec.errors,
        CopyBehind: (
            503,
            "service_unavailable",
            "This answer depends on another service's recent change, which has not reached "
            "this service yet; try again shortly.",
        ),
    }
    app = base_app(
        settings,
        middlewares=[
            read_after,
            idempotent,
            domain_error_middleware(errors),
            publish_before_reply,
        ],
    )
    app[settings_key] = settings
    app[verifier_key] = verifier_for(settings)

    async def database_ctx(app: web.Application) -> AsyncIterator[None]:
        db = Database(settings.database_url or "", pool_size=settings.db_pool_size)
        app[db_key] = db
        # Registered before the outbox's hooks (relay_ctx), as Idempotency requires.
        secret = spec.idempotency_secret() if spec.idempotency_secret else None
        idempotency = Idempotency(db, spec.idempotency_model, spec.routes, secret=secret)
        app[idempotency_key] = idempotency
        async with background(idempotency.purge_forever(), f"{spec.name}-idempotency-purge"):
            yield
        await db.dispose()

    async def relay_ctx(app: web.Application) -> AsyncIterator[None]:
        outbox = Outbox(
            app[db_key],
            app[redis_key],
            spec.outbox_model,
            name=spec.name,
            maxlen=settings.stream_maxlen,
        )
        app[outbox_key] = outbox
        app[idempotency_key].before_replay = _events_out_before(outbox)
        async with background(outbox.run(), f"{spec.name}-relay"):
            yield

    async def mail_ctx(app: web.Application) -> AsyncIterator[None]:
        if spec.mail_model is None:
            yield
            return
        mailer = Mailer(
            app[db_key],
            spec.mail_model,
            smtp_url=settings.smtp_url,
            mail_from=settings.mail_from,
            retry_max_seconds=settings.mail_retry_max_seconds,
            lease=dt.timedelta(seconds=settings.mail_claim_seconds),
            name=spec.name,
        )
        app[mailer_key] = mailer
        async with background(mailer.run(), f"{spec.name}-mail-sender"):
            yield

    async def consumer_ctx(app: web.Application) -> AsyncIterator[None]:
        sub = spec.subscription
        if sub is None:
            yield
            return
        handler = sub.handler(app[db_key])
        if isinstance(handler, Units):
            handler.outbox = app[outbox_key]
        consumer = Consumer(
            app[redis_key],
            group=sub.group,
            consumer=settings.consumer_name,
            streams=sub.streams,
            handler=handler,
            max_deliveries=settings.consumer_max_deliveries,
            claim_idle_ms=settings.consumer_claim_idle_ms,
            on_settled=app[barrier_key].kick if barrier_key in app else None,
        )
        app[consumer_key] = consumer
        async with background(consumer.run(), f"{spec.name}-consumer"):
            yield

    async def use_case_ctx(app: web.Application) -> AsyncIterator[None]:
        sub = spec.subscription
        barrier = None
        if sub is not None:
            barrier = ReadBarrier(app[redis_key], group=sub.group, streams=sub.streams)
            app[barrier_key] = barrier

        async def catch_up(about: Callable[[Event], bool] | None = None) -> bool:
            # Read-your-writes on the local copies (see consumer.ReadBarrier).
            if barrier is None:
                return True
            started = time.perf_counter()
            try:
                return await barrier.wait(about=about, after=_read_after.get())
            finally:
                if (waits := _copy_waits.get()) is not None:
                    waits.append(time.perf_counter() - started)

        app[catch_up_key] = catch_up
        if spec.context is not None:
            key, build = spec.context
            app[key] = build(db=app[db_key], catch_up=catch_up)
        if barrier is None:
            yield
            return
        async with background(barrier.run(), f"{spec.name}-read-barrier"):
            yield

    app.cleanup_ctx.extend(
        [database_ctx, redis_ctx, relay_ctx, mail_ctx, use_case_ctx, *spec.contexts, consumer_ctx]
    )
    app.cleanup_ctx.append(readiness_ctx)
    app.router.add_get("/health", health)
    app.router.add_get("/health/live", live)
    app.router.add_get("/openapi.json", openapi_handler(spec.routes, spec.errors))
    register(app, spec.routes)
    return app


def _events_out_before(outbox: Outbox) -> Callable[[web.Response], Awaitable[None]]:
    """What a replayed answer waits for: every event committed so far on its stream (Redis
    permitting), as the first answer waited for its own. After a kill -9 between commit and
    reply the first answer never left, and its events may still be in the outbox: a client
    acting on the replay must not race them (the same promise as `publish_before_reply`).
    The replay also carries the newest positions (X-Outbox-Row), for the gateway to pass
    on when they are not out yet (Redis down)."""

    async def wait(response: web.Response) -> None:
        await outbox.reply_after(response, await outbox.newest())

    return wait


async def _readiness(app: web.Application) -> dict[str, Any]:
    """This service's dependencies: database, Redis, relay and consumer, with counters."""
    db_failure, redis_failure = await asyncio.gather(
        probe(app[db_key].ping()), probe(app[redis_key].ping())
    )
    checks: dict[str, Any] = {
        "database": {"status": "down", "error": db_failure} if db_failure else {"status": "ok"},
        "redis": {"status": "down", "error": redis_failure} if redis_failure else {"status": "ok"},
    }
    outbox = app[outbox_key]
    checks["outbox_relay"] = {
        "status": "down" if outbox.last_error else "ok",
        "leader": outbox.leader,
        "published": outbox.published,
    }
    if consumer_key in app:
        consumer = app[consumer_key]
        checks["consumer"] = {
            "status": "ok" if consumer.running else "down",
            "processed": consumer.processed,
            "dead_lettered": consumer.dead_lettered,
        }
    if mailer_key in app:
        # Informative only: an SMTP server that is down delays mail (it waits in the
        # outbox), it does not make this service unable to serve.
        mailer = app[mailer_key]
        checks["mail"] = {
            "status": "ok",
            "sent": mailer.sent,
            "smtp": "retrying" if mailer.last_error else "ok",
        }
    ok = all(c["status"] == "ok" for c in checks.values())
    return {
        "status": "ok" if ok else "degraded",
        "service": app[settings_key].service_name,
        "checks": checks,
    }


async def health(request: web.Request) -> web.Response:
    """Readiness with details, on the service's own port only (the gateway does not proxy
    it). Computed at most about once a second, however often it is asked."""
    body = await request.app[readiness_key].get()
    return health_response(body, body["status"] == "ok")


async def live(request: web.Request) -> web.Response:
    """Liveness: the process serves requests (no I/O)."""
    return health_response(
        {"status": "ok", "service": request.app[settings_key].service_name}, True
    )


async def readiness_ctx(app: web.Application) -> AsyncIterator[None]:
    check: CachedCheck[dict[str, Any]] = CachedCheck(lambda: _readiness(app))
    app[readiness_key] = check
    yield
    await check.close()


def trusted_networks(values: Sequence[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(v, strict=False) for v in values]


def run_service(
    settings: ServiceSettings,
    migrations: Path,
    factory: Callable[[ServiceSettings], web.Application],
) -> None:
    """Entry point of a service process: dev keys if needed, migrate, then serve."""
    configure_logging(settings.log_level)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if not settings.production and not settings.jwt_public_key:
        ensure_dev_keys(settings.keys_dir / "jwt_ed25519.pem", settings.public_key_path)
    log.info("%s: migrating %s", settings.service_name, _safe_url(settings.database_url or ""))
    try:
        upgrade(migrations, settings.database_url or "")
    except WrongEncoding as exc:
        log.critical("%s: refusing to start: %s", settings.service_name, exc)
        raise SystemExit(2) from None

    async def build() -> web.Application:
        return factory(settings)

    serve_app(build, settings)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
