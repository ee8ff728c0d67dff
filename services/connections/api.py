"""HTTP handlers of the connections service (the domain arrives with its own issue)."""

from aiohttp import web

from services.common.problems import DomainErrors
from services.common.web import add_routes, not_ready

ERRORS: DomainErrors = {}


def setup_routes(app: web.Application) -> None:
    add_routes(
        app,
        [
            ("POST", "/api/connection/request-pro", not_ready),
            ("POST", "/api/connection/invite-client", not_ready),
            ("POST", "/api/connection/respond", not_ready),
            ("GET", "/api/connection/list", not_ready),
            ("DELETE", r"/api/connection/{id}", not_ready),
        ],
    )
