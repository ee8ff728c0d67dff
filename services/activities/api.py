"""HTTP handlers of the activities service; domain errors become problems in one table."""

from __future__ import annotations

from typing import Annotated, Literal

from aiohttp import web
from pydantic import BeforeValidator, Field, RootModel

from services.common.events import ActivityData, InviteData
from services.common.openapi import PAGE_PARAMS, Route
from services.common.problems import DomainErrors
from services.common.schemas import Id, RequestModel, Timestamp, text, whole_number
from services.common.web import (
    authenticate,
    json_response,
    page,
    path_id,
    read_json,
    require_role,
)

from . import service
from .service import ActivitiesContext

ctx_key = web.AppKey("activities_ctx", ActivitiesContext)

ACTIVITY_NOT_FOUND = "No such activity of yours."
ERRORS: DomainErrors = {
    service.ActivityNotFound: (404, "activity_not_found", ACTIVITY_NOT_FOUND),
    service.NotConnected: (
        403,
        "not_connected",
        "You can only invite clients with an accepted connection to you.",
    ),
    service.AlreadyInvited: (
        409,
        "already_invited",
        "This client already has a pending or accepted invite to this activity.",
    ),
    service.InviteNotFound: (404, "invite_not_found", "No such invite for you."),
    service.InviteNotPending: (409, "invite_not_pending", "This invite was already answered."),
    service.ActivityFull: (409, "activity_full", "This activity has no places left."),
}


Title = text(1, 200)
Description = text(0, 2000, multiline=True)


class CreateActivityBody(RequestModel):
    title: Title
    description: Description = ""
    starts_at: Timestamp | None = None
    capacity: (
        Annotated[int, Field(strict=True, ge=1, le=100_000), BeforeValidator(whole_number)] | None
    ) = None


class InviteBody(RequestModel):
    activity_id: Id
    client_id: Id


class InviteRespondBody(RequestModel):
    invite_id: Id
    action: Literal["accept", "decline"]


async def create_activity(request: web.Request) -> web.Response:
    identity = await require_role(request, "professional")
    body = await read_json(request, CreateActivityBody)
    activity = await service.create_activity(
        request.app[ctx_key],
        identity=identity,
        title=body.title,
        description=body.description,
        starts_at=body.starts_at,
        capacity=body.capacity,
    )
    return json_response(activity, status=201)


async def invite(request: web.Request) -> web.Response:
    identity = await require_role(request, "professional")
    body = await read_json(request, InviteBody)
    data = await service.invite(
        request.app[ctx_key],
        identity=identity,
        activity_id=body.activity_id,
        client_id=body.client_id,
    )
    return json_response(data, status=201)


async def respond(request: web.Request) -> web.Response:
    identity = await require_role(request, "client")
    body = await read_json(request, InviteRespondBody)
    data = await service.respond(
        request.app[ctx_key],
        identity=identity,
        invite_id=body.invite_id,
        accept=body.action == "accept",
    )
    return json_response(data)


async def list_mine(request: web.Request) -> web.Response:
    """A professional gets the activities they created; a client, the invites sent to them."""
    identity = await authenticate(request)
    limit, offset = page(request)
    ctx = request.app[ctx_key]
    if identity.role == "professional":
        items = await service.list_activities(ctx, identity=identity, limit=limit, offset=offset)
    else:
        items = await service.list_invites(ctx, identity=identity, limit=limit, offset=offset)
    return json_response(items)


async def delete_activity(request: web.Request) -> web.Response:
    identity = await require_role(request, "professional")
    await service.delete_activity(
        request.app[ctx_key],
        identity=identity,
        activity_id=path_id(request, code="activity_not_found", detail=ACTIVITY_NOT_FOUND),
    )
    return web.Response(status=204)


class ActivityOrInvite(RootModel[ActivityData | InviteData]):
    """A professional's list holds activities; a client's list holds invites."""


ROUTES = [
    Route("POST", "/api/activities/", create_activity, "A professional creates an activity",
          status=201, body=CreateActivityBody, response=ActivityData, role="professional"),
    Route("POST", "/api/activities/invite", invite, "The owner invites a connected client",
          status=201, body=InviteBody, response=InviteData, role="professional",
          raises=[service.ActivityNotFound, service.NotConnected, service.AlreadyInvited]),
    Route("POST", "/api/activities/respond", respond, "The invitee accepts or declines",
          body=InviteRespondBody, response=InviteData, role="client",
          raises=[service.InviteNotFound, service.InviteNotPending, service.ActivityFull]),
    Route("GET", "/api/activities/list", list_mine,
          "Activities created (professional) or invites received (client)",
          response=ActivityOrInvite, many=True, query=PAGE_PARAMS),
    Route("DELETE", "/api/activities/{id}", delete_activity, "The owner deletes an activity",
          status=204, role="professional", raises=[service.ActivityNotFound]),
]  # fmt: skip
