"""Activities service: app factory, its resources, and the process entry point."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from services.common.consumer import wait_caught_up
from services.common.service_app import (
    ServiceSpec,
    Subscription,
    create_service_app,
    db_key,
    run_service,
)
from services.common.web import redis_key

from . import api, bus
from .config import ActivitiesSettings
from .service import ActivitiesContext
from .tables import OutboxEvent

MIGRATIONS = Path(__file__).parent / "migrations"


async def activities_ctx(app: web.Application) -> AsyncIterator[None]:
    redis = app[redis_key]

    async def catch_up() -> bool:
        return await wait_caught_up(redis, group=bus.GROUP, streams=bus.STREAMS)

    app[api.ctx_key] = ActivitiesContext(db=app[db_key], catch_up=catch_up)
    yield


def create_app(settings: ActivitiesSettings | None = None) -> web.Application:
    spec = ServiceSpec(
        name="activities",
        outbox_model=OutboxEvent,
        routes=api.ROUTES,
        errors=api.ERRORS,
        migrations=MIGRATIONS,
        subscription=Subscription(group=bus.GROUP, streams=bus.STREAMS, handler=bus.handler),
        contexts=[activities_ctx],
    )
    return create_service_app(spec, settings or ActivitiesSettings())


def main() -> None:
    run_service(ActivitiesSettings(), MIGRATIONS, create_app)
