"""Routes declared once, with what they take and what they can answer; OpenAPI 3.1 from that.

Each component documents its own routes (services serve `GET /openapi.json`); the gateway
merges the parts into the one public document at `/api/openapi.json`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .problems import DomainErrors
from .web import MAX_ID, MAX_LIMIT, MAX_OFFSET

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}
# The IETF httpapi draft's header, accepted on every POST, PATCH and DELETE.
IDEMPOTENT_METHODS = frozenset({"POST", "PATCH", "DELETE"})
IDEMPOTENCY_PARAM: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": (
        "Makes a retry safe: the same key with the same request from the same caller within "
        "24 h gets the first 2xx answer again (with `Idempotent-Replayed: true`) and nothing "
        "is applied twice. The same key with another request is 422 "
        "`idempotency_key_reused`; while the first is still running, 409 "
        "`idempotency_key_in_flight`. 1-255 visible ASCII characters, optionally quoted."
    ),
    # Exactly what the services accept (idempotency.parse_key).
    "schema": {"type": "string", "pattern": '^(?:[!#-~]{1,255}|"[!#-~]{1,255}")$'},
}
IDEMPOTENCY_CODES = {
    400: "invalid_idempotency_key",
    409: "idempotency_key_in_flight",
    422: "idempotency_key_reused",
}
REPLAYED_HEADER: dict[str, Any] = {
    "description": "`true` when this is the recorded answer to an earlier request",
    "schema": {"type": "string", "enum": ["true"]},
}
LIMIT_PARAM = {
    "name": "limit",
    "in": "query",
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50},
}
PAGE_PARAMS = [
    LIMIT_PARAM,
    {
        "name": "offset",
        "in": "query",
        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
    },
]
# Path ids are ASCII digits (the route only matches those) naming a positive 64-bit integer.
ID_PARAM = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
}
ID_ROUTE_PATTERN = "{id:[0-9]+}"
# AUTH_REQUIRE_MFA may refuse a signed-in caller anywhere but under /api/auth/.
MFA_CODE = "mfa_enrollment_required"
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}


@dataclass(frozen=True)
class Route:
    """One route of the API: the handler, its input, its success, and what else it may answer."""

    method: str
    path: str
    handler: Handler
    summary: str
    status: int = 200
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None  # None for an empty body
    many: bool = False  # the response is a JSON array of `response`
    auth: bool = True
    role: str | None = None  # a required role means a possible 403
    raises: Sequence[type[Exception]] = ()  # domain errors, statuses from the ERRORS table
    query: Sequence[dict[str, Any]] = ()
    extra_statuses: Sequence[int] = ()  # statuses the handler answers itself (e.g. 429)
    # Statuses answered with a JSON body of a model instead of a problem (health's 503).
    other_bodies: Mapping[int, type[BaseModel]] = field(default_factory=dict)
    tags: Sequence[str] = field(default_factory=tuple)
    # What the use case's result becomes in the answer, when it is not a `response` model
    # itself (None: no answer can be told from it); used to record idempotent answers.
    reply: Callable[[Any], BaseModel | None] | None = None
    # The schema of `{id}` when it is not a numeric id (the route then matches any
    # segment, and its handler answers the route's 404 for one that names nothing).
    id_schema: Mapping[str, Any] | None = None
    # The body or the answer holds a secret (a password, a code): an Idempotency-Key's
    # record of it is keyed and sealed, as the anonymous routes' are (idempotency.py).
    secret: bool = False
    # A body that is not JSON (e.g. "text/calendar"): documented as a string of that type.
    media_type: str | None = None
    # False: no `Idempotency-Key` (an answer that must not be stored, such as a secret URL).
    idempotent: bool = True

    @property
    def mfa_gated(self) -> bool:
        """Whether AUTH_REQUIRE_MFA applies here (services/common/mfa.py)."""
        return self.auth and not self.path.startswith("/api/auth/")

    def statuses(self, errors: DomainErrors) -> set[int]:
        """Every status this route can answer, from its declaration alone."""
        found = {self.status, 503}  # any route meets a dependency that is down
        if self.body is not None:
            found |= {400, 413, 415}
        if self.query:
            found.add(400)
        if self.auth:
            found.add(401)
        if self.role or self.mfa_gated:
            found.add(403)
        if "{" in self.path:
            found.add(404)
        found |= {errors[e][0] for e in self.raises}
        found |= set(self.extra_statuses)
        found |= set(self.other_bodies)
        if self.method in IDEMPOTENT_METHODS:
            found |= set(IDEMPOTENCY_CODES)
        return found


def register(app: web.Application, routes: Iterable[Route]) -> None:
    """Add each route with and without a trailing slash (API.md: they are one route).

    `{id}` only matches digits, so `/api/activities/invite` is not also a `DELETE
    /api/activities/{id}` (its 405 would list DELETE) and `/api/activities/abc` names nothing.
    """
    for route in routes:
        path = route.path if route.id_schema else route.path.replace("{id}", ID_ROUTE_PATTERN)
        app.router.add_route(route.method, path, route.handler)
        alias = path[:-1] if path.endswith("/") else path + "/"
        if alias:
            app.router.add_route(route.method, alias, route.handler)


def _schema_of(models: Iterable[type[BaseModel]]) -> tuple[dict[Any, str], dict[str, Any]]:
    """JSON schemas of the models, with shared definitions in components."""
    refs: dict[Any, str] = {}
    components: dict[str, Any] = {}
    model_list = list(dict.fromkeys(models))
    if model_list:
        mapping, top = models_json_schema(
            [(m, "serialization") for m in model_list],
            ref_template="#/components/schemas/{model}",
        )
        components.update(top.get("$defs", {}))
        for (model, _mode), schema in mapping.items():
            refs[model] = schema.get("$ref") or model.__name__
    return refs, components


def document_paths(
    routes: Sequence[Route], errors: DomainErrors
) -> tuple[dict[str, Any], dict[str, Any]]:
    """OpenAPI `paths` and `components.schemas` for these routes."""
    models = [r.body for r in routes if r.body] + [r.response for r in routes if r.response]
    models += [m for r in routes for m in r.other_bodies.values()]
    refs, components = _schema_of(models)
    paths: dict[str, Any] = {}
    for route in routes:
        op: dict[str, Any] = {
            "summary": route.summary,
            "operationId": f"{route.method.lower()}_{route.path.strip('/').replace('/', '_')}",
            "responses": {},
        }
        if route.tags:
            op["tags"] = list(route.tags)
        if route.auth:
            op["security"] = [{"bearer": []}]
        params = [dict(p) for p in route.query]
        if "{id}" in route.path:
            params.append(
                {**ID_PARAM, "schema": dict(route.id_schema)} if route.id_schema else dict(ID_PARAM)
            )
        if route.method in IDEMPOTENT_METHODS and route.idempotent:
            params.append(dict(IDEMPOTENCY_PARAM))
        if params:
            op["parameters"] = params
        if route.body is not None:
            # An empty body counts as `{}`: it is only optional when no field is required.
            required = any(f.is_required() for f in route.body.model_fields.values())
            op["requestBody"] = {
                "required": required,
                "content": {"application/json": {"schema": {"$ref": refs[route.body]}}},
            }
        for status in sorted(route.statuses(errors)):
            response: dict[str, Any] = {"description": HTTPStatus(status).phrase}
            if status in (429, 503):
                response["headers"] = dict(RETRY_AFTER)
            if status == route.status and route.response is not None:
                response["content"] = {
                    "application/json": {"schema": _response_schema(route, refs)}
                }
            if status == route.status and route.media_type is not None:
                response["content"] = {route.media_type: {"schema": {"type": "string"}}}
            if status == route.status and route.method in IDEMPOTENT_METHODS and route.idempotent:
                response.setdefault("headers", {})["Idempotent-Replayed"] = REPLAYED_HEADER
            if status in route.other_bodies:
                ref = {"$ref": refs[route.other_bodies[status]]}
                response["content"] = {"application/json": {"schema": ref}}
            elif status >= 400:
                codes = {c for e, (s, c, _) in errors.items() if s == status and e in route.raises}
                if (
                    route.method in IDEMPOTENT_METHODS
                    and route.idempotent
                    and status in IDEMPOTENCY_CODES
                ):
                    codes.add(IDEMPOTENCY_CODES[status])
                if status == 403 and route.mfa_gated:
                    codes.add(MFA_CODE)
                if codes:
                    response["description"] += f" (code: {', '.join(sorted(codes))})"
                response["content"] = {
                    "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
                }
            op["responses"][str(status)] = response
        paths.setdefault(route.path, {})[route.method.lower()] = op
    components["Problem"] = PROBLEM_SCHEMA
    return paths, components


def _response_schema(route: Route, refs: dict[Any, str]) -> dict[str, Any]:
    item = {"$ref": refs[route.response]}
    return {"type": "array", "items": item} if route.many else item


def document_part(routes: Sequence[Route], errors: DomainErrors) -> dict[str, Any]:
    """One component's part of the public document, as its `GET /openapi.json` serves it."""
    paths, components = document_paths(routes, errors)
    return {"paths": paths, "components": {"schemas": components}}


def openapi_handler(routes: Sequence[Route], errors: DomainErrors) -> Handler:
    """`GET /openapi.json` of one component: its part of the public document."""
    body = document_part(routes, errors)

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(body)

    return handler


def merge(parts: Iterable[dict[str, Any]], *, title: str, version: str) -> dict[str, Any]:
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": {},
        "components": {
            "schemas": {},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }
    for part in parts:
        for path, ops in part.get("paths", {}).items():
            document["paths"].setdefault(path, {}).update(ops)
        document["components"]["schemas"].update(part.get("components", {}).get("schemas", {}))
    document["paths"] = dict(sorted(document["paths"].items()))
    return document
