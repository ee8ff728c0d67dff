"""Gateway app factory: routes, resources, health, and the process entry point."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, Literal

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from services.common.consumer import ReadBarrier
from services.common.health import CachedCheck, health_response, probe
from services.common.health import live as liveness
from services.common.openapi import PAGE_PARAMS, Route, document_paths, merge, register
from services.common.problems import Problem, unavailable
from services.common.service_app import background, redis_ctx, settings_key, verifier_for
from services.common.tokens import ensure_dev_keys
from services.common.web import (
    authenticate,
    base_app,
    configure_logging,
    json_response,
    redis_key,
    revocations_key,
    verifier_key,
)
from services.common.web import serve as serve_app

from . import live
from .config import GatewaySettings
from .cors import cors_middleware
from .hub import Hub
from .notifier import GROUP as NOTIFIER_GROUP
from .notifier import STREAMS as NOTIFIER_STREAMS
from .notifier import Notifier
from .proxy import Positions, forward, positions_key, session_key

VERSION = "1.0.0"
PUBLIC_PATHS = frozenset(
    {
        "/api/auth/signup",
        "/api/auth/login",
        "/api/auth/refresh",
        # Version 3 (mail): reached from a mail's link, signed out.
        "/api/auth/verify-email",
        "/api/auth/password-reset",
        "/api/auth/password-reset/confirm",
    }
)
upstreams_key = web.AppKey("upstreams", dict)
notifier_key = web.AppKey("notifier", Notifier)
openapi_parts_key = web.AppKey("openapi_parts", dict)
readiness_key = web.AppKey("readiness", CachedCheck)
health_session_key = web.AppKey("health_session", aiohttp.ClientSession)
STATIC_DIR = Path(__file__).resolve().parent / "static"
# The demo page talks only to this origin (REST and the WebSocket), nothing external.
PAGE_CSP = (
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _has_dot_segment(path: str) -> bool:
    """`.` or `..` as a segment of the decoded path (`%2e%2e` and `..%2f` included)."""
    return any(segment in (".", "..") for segment in path.split("/"))


def _upstream_route(
    name: str, *, public: frozenset[str] = frozenset(), anonymous: bool = False
) -> Any:
    """Forward to service `name`, with a valid token unless the path is in `public` (or
    the route is `anonymous`: the path itself is the credential, e.g. a feed's secret)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/")
        if _has_dot_segment(request.path):
            # The upstream URL would be normalised (`/api/auth/../../health` -> `/health`)
            # past this route's prefix: such a path names no route of the API.
            raise Problem(404, "not_found", "No such route.")
        if not anonymous and path not in public:
            # The gateway answers 401 itself: no unauthenticated request reaches a service
            # (the service checks the token again, so a direct call cannot forge one).
            # Revocations are checked against this process's copy of the list: the
            # service checks Redis itself, which covers a revocation still in flight.
            await authenticate(request, local_revocations=True)
        return await forward(request, request.app[upstreams_key][name], name)

    return handler


def _method_not_allowed(allowed: Iterable[str]) -> Any:
    """405 for a method the path does not take, with the `Allow` that RFC 9110 requires."""
    allow = ", ".join(sorted(set(allowed)))

    async def handler(request: web.Request) -> web.StreamResponse:
        raise Problem(
            405,
            "method_not_allowed",
            f"{request.method} is not allowed here.",
            headers={"Allow": allow},
        )

    return handler


async def not_found(request: web.Request) -> web.StreamResponse:
    raise Problem(404, "not_found", "No such route.")


async def index(request: web.Request) -> web.StreamResponse:
    """The live demo page (plain HTML/JS/CSS under gateway/static/, no build step)."""
    return web.FileResponse(
        STATIC_DIR / "index.html",
        headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"},
    )


def _static_handler() -> Any:
    """Serve the page's assets by name from a fixed list: no paths, and 404s as problems."""
    files = frozenset(p.name for p in STATIC_DIR.iterdir() if p.is_file())

    async def handler(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in files:
            raise Problem(404, "not_found", "No such file.")
        return web.FileResponse(STATIC_DIR / name, headers={"Cache-Control": "no-cache"})

    return handler


async def _readiness(app: web.Application) -> list[str]:
    """The dependencies that are down: Redis, a service (its own /health), the socket hub."""
    session = app[health_session_key]

    async def service_ready(url: str) -> None:
        async with session.get(url + "/health") as resp:
            await resp.read()  # so the connection is reused
            if resp.status != 200:
                raise RuntimeError(f"answered {resp.status}")

    names = ["redis", *app[upstreams_key]]
    failures = await asyncio.gather(
        probe(app[redis_key].ping()),
        *(probe(service_ready(url)) for url in app[upstreams_key].values()),
    )
    down = [name for name, failure in zip(names, failures, strict=True) if failure is not None]
    if not app[live.hub_key].connected:
        down.append("notifications")
    return down


async def health(request: web.Request) -> web.Response:
    """Readiness: 200 when Redis and every service are ready, else 503 naming what is down.

    Computed at most about once a second and shared by every caller (health.CachedCheck),
    so a load balancer polling hard costs the dependencies nothing. Anonymous callers
    learn the status and the names of what is down, never counters or error texts.
    """
    down = await request.app[readiness_key].get()
    if not down:
        return health_response({"status": "ok"}, True)
    return health_response({"status": "degraded", "down": down}, False)


async def openapi(request: web.Request) -> web.Response:
    """The one public document: the gateway's routes plus every service's own part."""
    app = request.app
    parts: dict[str, Any] = app[openapi_parts_key]
    missing = [name for name in app[upstreams_key] if name not in parts]

    async def fetch(name: str) -> None:
        url = app[upstreams_key][name] + "/openapi.json"
        async with app[session_key].get(url, timeout=aiohttp.ClientTimeout(total=3)) as resp:
            if resp.status == 200:
                parts[name] = await resp.json()

    await asyncio.gather(*(fetch(n) for n in missing), return_exceptions=True)
    if any(name not in parts for name in app[upstreams_key]):
        raise unavailable("A service did not describe its routes; try again shortly.")
    return json_response(public_document(parts.values()))


def public_document(service_parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The gateway's own routes merged with the parts the services describe."""
    own: dict[str, Any] = {"paths": {}, "components": {"schemas": {}}}
    own["paths"], own["components"]["schemas"] = document_paths(ROUTES, {})
    return merge([own, *service_parts], title="HealthConnect API", version=VERSION)


Dependency = Literal["redis", "auth", "connections", "activities", "notifications"]


class HealthOut(BaseModel):
    status: Literal["ok", "degraded"]
    down: list[Dependency] | None = Field(default=None, description="When degraded: what is down")


class LiveOut(BaseModel):
    status: Literal["ok"]


SINCE_QUERY = {
    "name": "since",
    "in": "query",
    "description": "A notification id such as 1732430000000-0; empty means from the start.",
    "schema": {"type": "string", "pattern": live.SINCE_PATTERN},
}


class OpenApiDocument(BaseModel):
    model_config = ConfigDict(extra="allow")

    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]
    components: dict[str, Any]


class Notification(BaseModel):
    id: str
    type: str
    occurred_at: str
    data: dict[str, Any]


ROUTES = [
    Route("GET", "/api/health", health,
          "Readiness: the gateway and every dependency (cached about 1 s)",
          response=HealthOut, auth=False, other_bodies={503: HealthOut}),
    Route("GET", "/api/health/live", liveness,
          "Liveness: the gateway process answers (no dependency is checked)",
          response=LiveOut, auth=False),
    Route("GET", "/api/openapi.json", openapi, "This document", response=OpenApiDocument,
          auth=False),
    Route("GET", "/api/notifications", live.notifications,
          "The caller's notifications after `since`, oldest first (`offset` counts after `since`)",
          response=Notification, many=True, query=[SINCE_QUERY, *PAGE_PARAMS]),
    Route("GET", "/api/ws", live.websocket,
          "Upgrade to a WebSocket of live notifications (`?since=` replays first)",
          status=101, query=[SINCE_QUERY]),
]  # fmt: skip


async def live_ctx(app: web.Application) -> AsyncIterator[None]:
    """The socket hub, its listeners, and this replica's notifier (active when leader)."""
    settings: GatewaySettings = app[settings_key]
    redis = app[redis_key]
    hub = Hub(redis, max_per_user=settings.max_sockets_per_user)
    app[live.hub_key] = hub
    positions = app[positions_key]
    app[notifier_key] = Notifier(
        redis,
        instance=f"gateway-{settings.instance_id}-{os.getpid()}",
        unpublished=lambda: positions.unpublished,
    )
    # GET /api/notifications right after a change lists its notification (the notifier's
    # own read barrier; its consumer wakes it).
    barrier = ReadBarrier(redis, group=NOTIFIER_GROUP, streams=NOTIFIER_STREAMS)
    app[live.barrier_key] = barrier
    app[notifier_key].consumer.on_settled = barrier.kick
    async with (
        background(hub.listen(), "hub-listen"),
        background(hub.sweep_revoked(), "hub-revocations"),
        background(app[notifier_key].run(), "notifier"),
        background(barrier.run(), "notifier-read-barrier"),
    ):
        yield


async def revocation_copy_ctx(app: web.Application) -> AsyncIterator[None]:
    """Keep the revocation list in memory, so proxied requests need no round trip for it."""
    revocations = app.get(revocations_key)
    if revocations is None:  # CHECK_REVOCATION=false
        yield
        return
    async with background(revocations.follow(), "revocation-copy"):
        yield


async def readiness_ctx(app: web.Application) -> AsyncIterator[None]:
    """The cached readiness check, on a small session of its own: a proxy pool that is
    saturated by traffic does not make busy services look down."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=8, keepalive_timeout=60),
        timeout=aiohttp.ClientTimeout(total=2, sock_connect=1),
        skip_auto_headers=("User-Agent",),
    )
    app[health_session_key] = session
    check: CachedCheck[list[str]] = CachedCheck(lambda: _readiness(app))
    app[readiness_key] = check
    yield
    await check.close()
    await session.close()


async def upstream_session_ctx(app: web.Application) -> AsyncIterator[None]:
    settings: GatewaySettings = app[settings_key]
    connector = aiohttp.TCPConnector(
        limit=settings.upstream_pool_size,
        limit_per_host=settings.upstream_pool_size,
        keepalive_timeout=60,
        ttl_dns_cache=300,
    )
    session = aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,  # pass compressed bodies through untouched
        timeout=aiohttp.ClientTimeout(total=settings.upstream_timeout_seconds, sock_connect=2),
        skip_auto_headers=("User-Agent",),
    )
    app[session_key] = session
    yield
    await session.close()


def create_app(settings: GatewaySettings | None = None) -> web.Application:
    settings = settings or GatewaySettings()
    app = base_app(settings, outer=[cors_middleware(settings.cors_origins)])
    app[settings_key] = settings
    app[verifier_key] = verifier_for(settings)
    app[positions_key] = Positions()
    app[upstreams_key] = {
        "auth": settings.auth_url.rstrip("/"),
        "connections": settings.connections_url.rstrip("/"),
        "activities": settings.activities_url.rstrip("/"),
    }
    app.cleanup_ctx.extend(
        [redis_ctx, revocation_copy_ctx, upstream_session_ctx, live_ctx, readiness_ctx]
    )
    app.on_shutdown.append(live.close_sockets)

    auth = _upstream_route("auth", public=PUBLIC_PATHS)
    users = _upstream_route("auth")
    connections = _upstream_route("connections")
    activities = _upstream_route("activities")
    app[openapi_parts_key] = {}
    register(app, ROUTES)
    router = app.router
    methods: dict[str, list[str]] = {}
    for route in ROUTES:  # other methods get 405 here, not the catch-all's 404
        methods.setdefault(route.path, []).append(route.method)
    for path, allowed in methods.items():
        for variant in (path, path + "/"):
            router.add_route("*", variant, _method_not_allowed(allowed))
    # The demo page: on the router directly, so it stays out of the API's OpenAPI document.
    router.add_get("/", index)
    router.add_get("/static/{name}", _static_handler())
    if not settings.production:
        # Development only: the mail the local sink kept (DATA_DIR/mail/), for the demo
        # page's mailbox panel. Never mounted with ENVIRONMENT=production.
        from dev.mailbox import add_routes as add_mailbox

        add_mailbox(app, settings.data_dir / "mail")
    router.add_route("*", "/api/auth/{tail:.*}", auth)
    router.add_route("*", "/api/users", users)
    router.add_route("*", "/api/users/{tail:.*}", users)
    router.add_route("*", "/api/connection", connections)
    router.add_route("*", "/api/connection/{tail:.*}", connections)
    router.add_route("*", "/api/activities", activities)
    router.add_route("*", "/api/activities/{tail:.*}", activities)
    _calendar_routes(router, activities)
    router.add_route("*", "/api/{tail:.*}", not_found)
    return app


# A calendar feed URL: the activities service answers 404 for any secret it did not hand out.
FEED_PATH = "/api/calendar/{secret}.ics"


def _calendar_routes(router: web.UrlDispatcher, activities: Any) -> None:
    """Calendar feeds, owned by activities: `/api/calendar.ics` and `/api/calendar/feed`
    need a token; a secret feed URL does not (calendar apps subscribe to it as it is)."""
    router.add_get(FEED_PATH, _upstream_route("activities", anonymous=True))
    router.add_route("*", "/api/calendar.ics", activities)
    router.add_route("*", "/api/calendar/{tail:.*}", activities)


def main() -> None:
    settings = GatewaySettings()
    configure_logging(settings.log_level)
    if not settings.production and not settings.jwt_public_key:
        ensure_dev_keys(settings.keys_dir / "jwt_ed25519.pem", settings.public_key_path)

    async def build() -> web.Application:
        return create_app(settings)

    serve_app(build, settings)
