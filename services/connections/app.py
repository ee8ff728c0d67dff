"""Connections service: app factory and the process entry point."""

from pathlib import Path

from aiohttp import web

from services.common.service_app import ServiceSpec, create_service_app, run_service

from . import api
from .config import ConnectionsSettings
from .tables import OutboxEvent

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: ConnectionsSettings | None = None) -> web.Application:
    spec = ServiceSpec(
        name="connections",
        outbox_model=OutboxEvent,
        setup_routes=api.setup_routes,
        errors=api.ERRORS,
        migrations=MIGRATIONS,
    )
    return create_service_app(spec, settings or ConnectionsSettings())


def main() -> None:
    run_service(ConnectionsSettings(), MIGRATIONS, create_app)
