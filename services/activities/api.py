"""HTTP handlers of the activities service (the domain arrives with its own issue)."""

from aiohttp import web

from services.common.problems import DomainErrors
from services.common.web import add_routes, not_ready

ERRORS: DomainErrors = {}


def setup_routes(app: web.Application) -> None:
    add_routes(
        app,
        [
            ("POST", "/api/activities/", not_ready),
            ("POST", "/api/activities/invite", not_ready),
            ("POST", "/api/activities/respond", not_ready),
            ("GET", "/api/activities/list", not_ready),
            ("DELETE", r"/api/activities/{id}", not_ready),
        ],
    )
