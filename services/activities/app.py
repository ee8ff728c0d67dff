"""Activities service: app factory and the process entry point."""

from pathlib import Path

from aiohttp import web

from services.common.service_app import ServiceSpec, create_service_app, run_service

from . import api
from .config import ActivitiesSettings
from .tables import OutboxEvent

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: ActivitiesSettings | None = None) -> web.Application:
    spec = ServiceSpec(
        name="activities",
        outbox_model=OutboxEvent,
        setup_routes=api.setup_routes,
        errors=api.ERRORS,
        migrations=MIGRATIONS,
    )
    return create_service_app(spec, settings or ActivitiesSettings())


def main() -> None:
    run_service(ActivitiesSettings(), MIGRATIONS, create_app)
