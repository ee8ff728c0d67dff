"""Connections service: app factory, its resources, and the process entry point."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from services.common.consumer import ReadBarrier
from services.common.events import CONNECTIONS_STREAM
from services.common.service_app import (
    ServiceSpec,
    Subscription,
    background,
    create_service_app,
    run_service,
)
from services.common.web import redis_key

from . import api, bus
from .config import ConnectionsSettings
from .service import ConnectionsContext
from .tables import IdempotencyKey, MailOutbox, OutboxEvent

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: ConnectionsSettings | None = None) -> web.Application:
    settings = settings or ConnectionsSettings()

    async def cascades_ctx(app: web.Application) -> AsyncIterator[None]:
        # One barrier (one shared poller) per group that cascades removals (api.remove).
        barriers = [
            ReadBarrier(app[redis_key], group=group, streams=[CONNECTIONS_STREAM])
            for group in settings.cascade_groups
        ]
        app[api.cascades_key] = barriers
        async with contextlib.AsyncExitStack() as stack:
            for barrier in barriers:
                await stack.enter_async_context(
                    background(barrier.run(), f"cascade-barrier-{barrier.group}")
                )
            yield

    spec = ServiceSpec(
        name="connections",
        outbox_model=OutboxEvent,
        idempotency_model=IdempotencyKey,
        routes=api.ROUTES,
        errors=api.ERRORS,
        migrations=MIGRATIONS,
        subscription=Subscription(group=bus.GROUP, streams=bus.STREAMS, handler=bus.handler),
        context=(
            api.ctx_key,
            functools.partial(ConnectionsContext, public_url=settings.public_url),
        ),
        contexts=[cascades_ctx],
        mail_model=MailOutbox,
    )
    return create_service_app(spec, settings)


def main() -> None:
    run_service(ConnectionsSettings(), MIGRATIONS, create_app)
