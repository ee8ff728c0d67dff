"""Activities service: app factory, its resources, and the process entry point."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from services.common.service_app import (
    ServiceSpec,
    Subscription,
    background,
    create_service_app,
    run_service,
)

from . import api, bus
from .config import ActivitiesSettings
from .service import ActivitiesContext, run_reminders
from .tables import IdempotencyKey, OutboxEvent

MIGRATIONS = Path(__file__).parent / "migrations"


async def reminders_ctx(app: web.Application) -> AsyncIterator[None]:
    """The reminder scheduler, in every replica (they claim different rows)."""
    async with background(run_reminders(app[api.ctx_key]), "activities-reminders"):
        yield


def create_app(settings: ActivitiesSettings | None = None) -> web.Application:
    settings = settings or ActivitiesSettings()
    context = functools.partial(
        ActivitiesContext,
        reminder_minutes=settings.reminder_minutes,
        public_url=settings.public_url,
    )
    spec = ServiceSpec(
        name="activities",
        outbox_model=OutboxEvent,
        idempotency_model=IdempotencyKey,
        routes=api.ROUTES,
        errors=api.ERRORS,
        migrations=MIGRATIONS,
        subscription=Subscription(group=bus.GROUP, streams=bus.STREAMS, handler=bus.handler),
        context=(api.ctx_key, context),
        contexts=[reminders_ctx],
    )
    return create_service_app(spec, settings)


def main() -> None:
    run_service(ActivitiesSettings(), MIGRATIONS, create_app)
