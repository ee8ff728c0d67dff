"""Connections service: app factory, its resources, and the process entry point."""

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
from .config import ConnectionsSettings
from .service import ConnectionsContext
from .tables import IdempotencyKey, OutboxEvent

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: ConnectionsSettings | None = None) -> web.Application:
    spec = ServiceSpec(
        name="connections",
        outbox_model=OutboxEvent,
        idempotency_model=IdempotencyKey,
        routes=api.ROUTES,
        errors=api.ERRORS,
        migrations=MIGRATIONS,
        subscription=Subscription(group=bus.GROUP, streams=bus.STREAMS, handler=bus.handler),
        context=(api.ctx_key, ConnectionsContext),
    )
    return create_service_app(spec, settings or ConnectionsSettings())


def main() -> None:
    run_service(ConnectionsSettings(), MIGRATIONS, create_app)
