"""HTTP handlers of the activities service; domain errors become problems in one table."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, RootModel

from services.common.events import ActivityData, InviteData
from services.common.openapi import PAGE_PARAMS, Route
from services.common.problems import DomainErrors
from services.common.schemas import AwareTimestamp, Id, RequestModel, text, whole_number
from services.common.web import (
    authenticate,
    json_response,
    page,
    path_id,
    read_json,
    require_role,
)

from . import calendar, service
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
    service.InviteNotAccepted: (
        409,
        "invite_not_accepted",
        "Only an accepted or waitlisted invite can be withdrawn.",
    ),
    service.ActivityIsCancelled: (
        409,
        "activity_cancelled",
        "This activity was cancelled; it can no longer be changed.",
    ),
    service.CapacityBelowAccepted: (
        409,
        "capacity_below_accepted",
        "More invites are accepted than this capacity allows.",
    ),
    service.StartsInPast: (400, "validation_error", "`starts_at` must be in the future."),
    service.FeedNotFound: (404, "feed_not_found", "No such calendar feed."),
}


Title = text(1, 200)
Description = text(0, 2000, multiline=True)
Capacity = Annotated[int, Field(strict=True, ge=1, le=100_000), BeforeValidator(whole_number)]
Duration = Annotated[int, Field(strict=True, ge=5, le=1440), BeforeValidator(whole_number)]
StartsAt = Annotated[
    AwareTimestamp,
    Field(description="With an explicit UTC offset (`Z` or `+hh:mm`), in the future."),
]


class CreateActivityBody(RequestModel):
    title: Title
    description: Description = ""
    starts_at: StartsAt | None = None
    capacity: Capacity | None = None
    duration_minutes: Duration = 60
    waitlist: bool = False


def _no_defaults(schema: dict[str, Any]) -> None:
    # A field left out changes nothing: there is no default to document (schemathesis
    # would send a `null` default where only `starts_at` and `capacity` take null).
    for prop in schema.get("properties", {}).values():
        prop.pop("default", None)


class UpdateActivityBody(RequestModel):
    """Any of the fields; one left out stays as it is. `starts_at` or `capacity` null
    clears it (no start, no limit). An empty body changes nothing (200)."""

    model_config = ConfigDict(json_schema_extra=_no_defaults)

    title: Title = None  # type: ignore[assignment]
    description: Description = None  # type: ignore[assignment]
    starts_at: StartsAt | None = None
    duration_minutes: Duration = None  # type: ignore[assignment]
    capacity: Capacity | None = None
    waitlist: bool = None  # type: ignore[assignment]


class InviteBody(RequestModel):
    activity_id: Id
    client_id: Id


class InviteRespondBody(RequestModel):
    invite_id: Id
    action: Literal["accept", "decline", "withdraw"]


class CalendarFeedOut(BaseModel):
    url: str = Field(description="`<PUBLIC_URL>/api/calendar/<secret>.ics`, shown only now")


FEED_SECRET = re.compile(r"[A-Za-z0-9_-]{20,100}")
SECRET_PARAM = {
    "name": "secret",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{20,100}$"},
}


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
        duration_minutes=body.duration_minutes,
        waitlist=body.waitlist,
    )
    return json_response(activity, status=201)


async def update_activity(request: web.Request) -> web.Response:
    identity = await require_role(request, "professional")
    activity_id = path_id(request, code="activity_not_found", detail=ACTIVITY_NOT_FOUND)
    body = await read_json(request, UpdateActivityBody)
    activity = await service.update_activity(
        request.app[ctx_key],
        identity=identity,
        activity_id=activity_id,
        changes={name: getattr(body, name) for name in body.model_fields_set},
    )
    return json_response(activity)


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
        action=body.action,
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


def _calendar(entries: list[service.CalendarEntry]) -> web.Response:
    return web.Response(
        body=calendar.render(entries),
        content_type=calendar.MEDIA_TYPE,
        charset="utf-8",
        headers={
            "Content-Disposition": 'inline; filename="healthconnect.ics"',
            "Cache-Control": "private, no-cache",
        },
    )


async def my_calendar(request: web.Request) -> web.Response:
    identity = await authenticate(request)
    entries = await service.calendar_entries(
        request.app[ctx_key], user_id=identity.user_id, role=identity.role
    )
    return _calendar(entries)


async def rotate_feed(request: web.Request) -> web.Response:
    identity = await authenticate(request)
    url = await service.rotate_feed(request.app[ctx_key], identity=identity)
    return json_response(CalendarFeedOut(url=url), status=201)


async def feed(request: web.Request) -> web.Response:
    """Anyone with the URL: the secret is the credential (calendar apps send no token)."""
    secret = request.match_info.get("secret", "")
    if not FEED_SECRET.fullmatch(secret):
        raise service.FeedNotFound()
    return _calendar(await service.feed_entries(request.app[ctx_key], secret=secret))


class ActivityOrInvite(RootModel[ActivityData | InviteData]):
    """A professional's list holds activities; a client's list holds invites."""


ROUTES = [
    Route("POST", "/api/activities/", create_activity, "A professional creates an activity",
          status=201, body=CreateActivityBody, response=ActivityData, role="professional"),
    Route("POST", "/api/activities/invite", invite, "The owner invites a connected client",
          status=201, body=InviteBody, response=InviteData, role="professional",
          raises=[service.ActivityNotFound, service.NotConnected, service.AlreadyInvited]),
    Route("POST", "/api/activities/respond", respond,
          "The invitee accepts (waitlisted when full with a waitlist), declines or withdraws",
          body=InviteRespondBody, response=InviteData, role="client",
          raises=[service.InviteNotFound, service.InviteNotPending, service.ActivityFull,
                  service.InviteNotAccepted]),
    Route("GET", "/api/activities/list", list_mine,
          "Activities created (professional) or invites received (client)",
          response=ActivityOrInvite, many=True, query=PAGE_PARAMS),
    Route("DELETE", "/api/activities/{id}", delete_activity, "The owner deletes an activity",
          status=204, role="professional", raises=[service.ActivityNotFound]),
    Route("PATCH", "/api/activities/{id}", update_activity,
          "The owner changes an activity (an empty body changes nothing)",
          body=UpdateActivityBody, response=ActivityData, role="professional",
          raises=[service.StartsInPast, service.ActivityNotFound, service.ActivityIsCancelled,
                  service.CapacityBelowAccepted]),
    Route("GET", "/api/calendar.ics", my_calendar,
          "The caller's activities with a start, as iCalendar (RFC 5545)",
          media_type=calendar.MEDIA_TYPE),
    Route("POST", "/api/calendar/feed", rotate_feed,
          "A new secret calendar feed URL for the caller; the one before stops working",
          status=201, response=CalendarFeedOut, idempotent=False),
    Route("GET", "/api/calendar/{secret}.ics", feed,
          "The calendar behind a secret feed URL (no token: the URL is the credential)",
          auth=False, media_type=calendar.MEDIA_TYPE, query=[SECRET_PARAM],
          raises=[service.FeedNotFound]),
]  # fmt: skip
