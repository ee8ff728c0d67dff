"""Activities service: app factory, its resources, and the process entry point."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from services.common.service_app import (
    ServiceSpec,
    Subscription,
    create_service_app,
    run_service,
)

from . import api, bus
from .config import ActivitiesSettings
from .service import ActivitiesContext
from .tables import IdempotencyKey, OutboxEvent

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: ActivitiesSettings | None = None) -> web.Application:
    spec = ServiceSpec(
        name="activities",
        outbox_model=OutboxEvent,
        idempotency_model=IdempotencyKey,
        routes=api.ROUTES,
        errors=api.ERRORS,
        migrations=MIGRATIONS,
        subscription=Subscription(group=bus.GROUP, streams=bus.STREAMS, handler=bus.handler),
        context=(api.ctx_key, ActivitiesContext),
    )
    return create_service_app(spec, settings or ActivitiesSettings())


def main() -> None:
    run_service(ActivitiesSettings(), MIGRATIONS, create_app)
