"""HTTP handlers of the connections service; domain errors become problems in one table."""

from __future__ import annotations

from typing import Annotated, Literal

from aiohttp import web
from pydantic import EmailStr, Field

from services.common.problems import DomainErrors, Problem
from services.common.schemas import Id, RequestModel
from services.common.web import (
    add_routes,
    authenticate,
    json_response,
    page,
    path_id,
    read_json,
    require_role,
)

from . import service
from .service import ConnectionsContext

ctx_key = web.AppKey("connections_ctx", ConnectionsContext)

ERRORS: DomainErrors = {
    service.ProfessionalNotFound: (404, "professional_not_found", "No such professional."),
    service.NotAClient: (
        400,
        "not_a_client",
        "This email belongs to a professional; only clients can be invited.",
    ),
    service.ConnectionExists: (
        409,
        "connection_exists",
        "A pending or accepted connection between you already exists.",
    ),
    service.ConnectionNotFound: (404, "connection_not_found", "No such connection."),
    service.InitiatorCannotRespond: (
        403,
        "initiator_cannot_respond",
        "Only the other party can answer this connection.",
    ),
    service.NotPending: (409, "connection_not_pending", "This connection was already answered."),
    service.AlreadyClosed: (
        409,
        "connection_closed",
        "This connection was already rejected or removed.",
    ),
    service.AccountNotReady: (
        503,
        "account_not_ready",
        "Your account is still being set up; try again in a moment.",
    ),
}


class RequestProBody(RequestModel):
    professional_id: Id


class InviteClientBody(RequestModel):
    client_email: Annotated[EmailStr, Field(max_length=254)]


class RespondBody(RequestModel):
    connection_id: Id
    action: Literal["accept", "reject"]


async def request_pro(request: web.Request) -> web.Response:
    identity = await require_role(request, "client")
    body = await read_json(request, RequestProBody)
    connection = await service.request_pro(
        request.app[ctx_key], identity=identity, professional_id=body.professional_id
    )
    return json_response(connection, status=201)


async def invite_client(request: web.Request) -> web.Response:
    identity = await require_role(request, "professional")
    body = await read_json(request, InviteClientBody)
    connection = await service.invite_client(
        request.app[ctx_key], identity=identity, client_email=body.client_email.lower()
    )
    return json_response(connection, status=201)


async def respond(request: web.Request) -> web.Response:
    identity = await authenticate(request)
    body = await read_json(request, RespondBody)
    connection = await service.respond(
        request.app[ctx_key],
        identity=identity,
        connection_id=body.connection_id,
        accept=body.action == "accept",
    )
    return json_response(connection)


async def list_connections(request: web.Request) -> web.Response:
    identity = await authenticate(request)
    status = request.query.get("status")
    if status is not None and status not in service.STATUSES:
        raise Problem(
            400,
            "invalid_query",
            f"`status` must be one of {', '.join(service.STATUSES)}.",
            errors=[{"field": "status", "message": "unknown status"}],
        )
    limit, offset = page(request)
    connections = await service.list_connections(
        request.app[ctx_key], identity=identity, status=status, limit=limit, offset=offset
    )
    return json_response(connections)


async def remove(request: web.Request) -> web.Response:
    identity = await authenticate(request)
    await service.remove(request.app[ctx_key], identity=identity, connection_id=path_id(request))
    return web.Response(status=204)


def setup_routes(app: web.Application) -> None:
    add_routes(
        app,
        [
            ("POST", "/api/connection/request-pro", request_pro),
            ("POST", "/api/connection/invite-client", invite_client),
            ("POST", "/api/connection/respond", respond),
            ("GET", "/api/connection/list", list_connections),
            ("DELETE", "/api/connection/{id}", remove),
        ],
    )
