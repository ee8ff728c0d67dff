"""HTTP handlers of the connections service; domain errors become problems in one table."""

from __future__ import annotations

import asyncio
from typing import Literal

from aiohttp import web

from services.common.consumer import ReadBarrier
from services.common.events import ConnectionData
from services.common.openapi import PAGE_PARAMS, Route
from services.common.outbox import AFTER_PUBLISHED
from services.common.problems import DomainErrors, Problem
from services.common.schemas import Email, Id, RequestModel
from services.common.web import (
    authenticate,
    json_response,
    page,
    path_id,
    read_json,
    require_role,
)

from . import service
from .service import ConnectionsContext

CASCADE_WAIT_SECONDS = 3.0
cascades_key = web.AppKey("cascades", list[ReadBarrier])
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
    client_email: Email


class ConnectionRespondBody(RequestModel):
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
    body = await read_json(request, ConnectionRespondBody)
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
    # An id that cannot exist gets the same answer as one that is not the caller's.
    connection_id = path_id(request, code="connection_not_found", detail="No such connection.")
    await service.remove(request.app[ctx_key], identity=identity, connection_id=connection_id)
    # Answer once the services that cascade a removal (activities cancels the pair's
    # invites) have applied it: the client's next change then comes after the cascade's
    # notifications, in the order API.md promises. Bounded (CASCADE_WAIT_SECONDS, enough
    # for a restarting service to catch up); a cascade stopped longer only loses that
    # ordering, never the answer.
    barriers = request.app.get(cascades_key) or []
    if barriers:

        async def cascaded() -> None:
            await asyncio.gather(*(b.wait(within=CASCADE_WAIT_SECONDS) for b in barriers))

        request[AFTER_PUBLISHED] = cascaded
    return web.Response(status=204)


STATUS_QUERY = {
    "name": "status",
    "in": "query",
    "schema": {"type": "string", "enum": list(service.STATUSES)},
}

ROUTES = [
    Route("POST", "/api/connection/request-pro", request_pro, "A client asks a professional",
          status=201, body=RequestProBody, response=ConnectionData, role="client",
          raises=[service.ProfessionalNotFound, service.ConnectionExists, service.AccountNotReady]),
    Route("POST", "/api/connection/invite-client", invite_client,
          "A professional invites a client by email", status=201, body=InviteClientBody,
          response=ConnectionData, role="professional",
          raises=[service.NotAClient, service.ConnectionExists, service.AccountNotReady]),
    Route("POST", "/api/connection/respond", respond, "The other party accepts or rejects",
          body=ConnectionRespondBody, response=ConnectionData,
          raises=[service.ConnectionNotFound, service.InitiatorCannotRespond, service.NotPending]),
    Route("GET", "/api/connection/list", list_connections, "The caller's connections",
          response=ConnectionData, many=True, query=[STATUS_QUERY, *PAGE_PARAMS]),
    Route("DELETE", "/api/connection/{id}", remove, "Either party removes a connection",
          status=204, raises=[service.ConnectionNotFound, service.AlreadyClosed]),
]  # fmt: skip
