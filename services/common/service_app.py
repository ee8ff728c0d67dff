"""The shape every service shares: app factory, cleanup contexts, health, entry point.

A service describes itself with a `ServiceSpec` (its tables' outbox model, routes,
domain errors, and what it consumes); everything else is built here once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from redis.asyncio import BlockingConnectionPool, Redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .consumer import Consumer, Handler, wait_caught_up
from .db import Database
from .migrations import WrongEncoding, upgrade
from .openapi import Route, openapi_handler, register
from .outbox import Outbox, OutboxMixin
from .problems import DomainErrors, domain_error_middleware
from .settings import CommonSettings, ServiceSettings
from .tokens import RevocationList, TokenVerifier, ensure_dev_keys, load_public_key
from .web import (
    base_app,
    configure_logging,
    json_response,
    redis_key,
    revocations_key,
    verifier_key,
)
from .web import serve as serve_app

log = logging.getLogger(__name__)

db_key = web.AppKey("db", Database)
outbox_key = web.AppKey("outbox", Outbox)
consumer_key = web.AppKey("consumer", Consumer)
settings_key = web.AppKey("settings", CommonSettings)
catch_up_key = web.AppKey("catch_up", object)

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
    routes: Sequence[Route]
    errors: DomainErrors
    migrations: Path
    subscription: Subscription | None = None
    # The use cases' context: stored under the key, built with `db=` and `catch_up=`.
    context: tuple[web.AppKey[Any], Callable[..., Any]] | None = None
    contexts: list[Any] = field(default_factory=list)


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
async def publish_before_reply(request: web.Request, handler: Any) -> web.StreamResponse:
    return await request.app[outbox_key].middleware(request, handler)


def create_service_app(spec: ServiceSpec, settings: ServiceSettings) -> web.Application:
    app = base_app(
        settings, middlewares=[domain_error_middleware(spec.errors), publish_before_reply]
    )
    app[settings_key] = settings
    app[verifier_key] = verifier_for(settings)

    async def database_ctx(app: web.Application) -> AsyncIterator[None]:
        db = Database(settings.database_url or "")
        app[db_key] = db
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
        async with background(outbox.run(), f"{spec.name}-relay"):
            yield

    async def consumer_ctx(app: web.Application) -> AsyncIterator[None]:
        sub = spec.subscription
        if sub is None:
            yield
            return
        consumer = Consumer(
            app[redis_key],
            group=sub.group,
            consumer=settings.consumer_name,
            streams=sub.streams,
            handler=sub.handler(app[db_key]),
            max_deliveries=settings.consumer_max_deliveries,
            claim_idle_ms=settings.consumer_claim_idle_ms,
        )
        app[consumer_key] = consumer
        async with background(consumer.run(), f"{spec.name}-consumer"):
            yield

    async def use_case_ctx(app: web.Application) -> AsyncIterator[None]:
        redis, sub = app[redis_key], spec.subscription

        async def catch_up() -> bool:
            # Read-your-writes on the local copies (see consumer.wait_caught_up).
            if sub is None:
                return True
            return await wait_caught_up(redis, group=sub.group, streams=sub.streams)

        app[catch_up_key] = catch_up
        if spec.context is not None:
            key, build = spec.context
            app[key] = build(db=app[db_key], catch_up=catch_up)
        yield

    app.cleanup_ctx.extend(
        [database_ctx, redis_ctx, relay_ctx, use_case_ctx, *spec.contexts, consumer_ctx]
    )
    app.router.add_get("/health", health)
    app.router.add_get("/openapi.json", openapi_handler(spec.routes, spec.errors))
    register(app, spec.routes)
    return app


async def health(request: web.Request) -> web.Response:
    """Liveness of this service's dependencies: database, Redis, relay and consumer."""
    app = request.app
    checks: dict[str, Any] = {}

    async def probe(name: str, coro: Any) -> None:
        try:
            async with asyncio.timeout(2):
                await coro
            checks[name] = {"status": "ok"}
        except Exception as exc:
            checks[name] = {"status": "down", "error": type(exc).__name__}

    await asyncio.gather(
        probe("database", app[db_key].ping()), probe("redis", app[redis_key].ping())
    )
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
    ok = all(c["status"] == "ok" for c in checks.values())
    body = {
        "status": "ok" if ok else "degraded",
        "service": app[settings_key].service_name,
        "checks": checks,
    }
    return json_response(body, status=200 if ok else 503)


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
