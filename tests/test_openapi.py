"""The OpenAPI document at /api/openapi.json is true to the routes the apps register."""

from __future__ import annotations

import pytest
from aiohttp import web

from gateway.app import ROUTES as GATEWAY_ROUTES
from services.activities import api as activities_api
from services.auth import api as auth_api
from services.common.openapi import Route
from services.connections import api as connections_api

from .api import Api

COMPONENTS = {
    "auth": (auth_api.ROUTES, auth_api.ERRORS),
    "connections": (connections_api.ROUTES, connections_api.ERRORS),
    "activities": (activities_api.ROUTES, activities_api.ERRORS),
    "gateway": (GATEWAY_ROUTES, {}),
}
INTERNAL = {"/health", "/health/live", "/openapi.json"}  # each service's own, never proxied
PAGE, PAGE_ASSETS = {"/"}, "/static/"  # the gateway's demo page, not part of the API
DEV_MAILBOX = "/dev/"  # the development-only mailbox view, not part of the API


def _registered(app: web.Application) -> set[tuple[str, str]]:
    found = set()
    for resource in app.router.resources():
        path = resource.canonical
        if path in INTERNAL or path in PAGE or path.startswith((PAGE_ASSETS, DEV_MAILBOX)):
            continue
        if "{tail" in path:
            continue
        for route in resource:
            if route.method in ("HEAD", "*"):
                continue
            found.add((route.method.lower(), path.rstrip("/") or "/"))
    return found


def _apps(root) -> dict[str, web.Application]:
    """Each component's app as it is built (building does no I/O beyond reading keys)."""
    from gateway.app import create_app as gateway_app
    from gateway.config import GatewaySettings
    from services.activities.app import create_app as activities_app
    from services.activities.config import ActivitiesSettings
    from services.auth.app import create_app as auth_app
    from services.auth.config import AuthSettings
    from services.connections.app import create_app as connections_app
    from services.connections.config import ConnectionsSettings

    return {
        "auth": auth_app(AuthSettings(data_dir=root)),
        "connections": connections_app(ConnectionsSettings(data_dir=root)),
        "activities": activities_app(ActivitiesSettings(data_dir=root)),
        "gateway": gateway_app(GatewaySettings(data_dir=root)),
    }


@pytest.fixture(scope="module")
async def document(http, stack) -> dict:
    reply = await Api(http, stack.gateway_url).call("GET", "/api/openapi.json")
    assert reply.status == 200, reply.text
    return reply.body


async def test_document_is_openapi_3_1(document: dict) -> None:
    assert document["openapi"].startswith("3.1")
    assert document["info"]["title"]
    assert "Problem" in document["components"]["schemas"]
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for ops in document["paths"].values():
        for op in ops.values():
            for ref in _refs(op):
                assert (
                    ref.removeprefix("#/components/schemas/") in document["components"]["schemas"]
                )


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        for value in node.values():
            found += _refs(value)
        return found
    if isinstance(node, list):
        return [r for item in node for r in _refs(item)]
    return []


async def test_every_registered_route_is_documented(document: dict, stack) -> None:
    documented = {
        (method, path.rstrip("/") or "/")
        for path, ops in document["paths"].items()
        for method in ops
    }
    for name, app in _apps(stack.root).items():
        missing = _registered(app) - documented
        assert not missing, f"{name} registers undocumented routes: {missing}"


def test_every_documented_status_is_one_the_route_can_return() -> None:
    from services.common.openapi import document_paths

    for name, (routes, errors) in COMPONENTS.items():
        paths, _ = document_paths(routes, errors)
        for route in routes:
            op = paths[route.path][route.method.lower()]
            documented = {int(s) for s in op["responses"]}
            possible = _possible(route, errors)
            assert documented <= possible, (name, route.path, documented - possible)
            # ... and every domain error the route declares is documented.
            for exc in route.raises:
                assert errors[exc][0] in documented, (name, route.path, exc)


def _possible(route: Route, errors: dict) -> set[int]:
    """What the plumbing and the route's declared domain errors can produce."""
    possible = {route.status, 503}
    if route.auth:
        possible |= {401}
    if route.role:
        possible |= {403}
    if route.auth and not route.path.startswith("/api/auth/"):
        possible |= {403}  # AUTH_REQUIRE_MFA: mfa_enrollment_required
    if route.body is not None:
        possible |= {400, 413, 415}
    if route.query:
        possible |= {400}
    if "{" in route.path:
        possible |= {404}
    possible |= {errors[e][0] for e in route.raises}
    possible |= set(route.extra_statuses)
    possible |= set(route.other_bodies)
    if route.method in {"POST", "PATCH", "DELETE"}:  # Idempotency-Key: bad, in flight, reused
        possible |= {400, 409, 422}
    return possible


def test_domain_errors_are_all_reachable_from_some_route() -> None:
    for name, (routes, errors) in COMPONENTS.items():
        raised = {e for r in routes for e in r.raises}
        assert set(errors) <= raised, (name, set(errors) - raised)


async def test_documented_statuses_match_api_md_rows(document: dict) -> None:
    paths = document["paths"]

    def statuses(path: str, method: str) -> set[int]:
        return {int(s) for s in paths[path][method]["responses"]}

    assert {201, 400, 409, 413, 415} <= statuses("/api/auth/signup", "post")
    assert {200, 401, 429} <= statuses("/api/auth/login", "post")
    assert {201, 403, 404, 409} <= statuses("/api/connection/request-pro", "post")
    assert {201, 400, 403, 409} <= statuses("/api/connection/invite-client", "post")
    assert {200, 403, 404, 409} <= statuses("/api/connection/respond", "post")
    assert {204, 404, 409} <= statuses("/api/connection/{id}", "delete")
    assert {201, 403} <= statuses("/api/activities/", "post")
    assert {201, 403, 404, 409} <= statuses("/api/activities/invite", "post")
    assert {200, 404, 409} <= statuses("/api/activities/respond", "post")
    assert {204, 404} <= statuses("/api/activities/{id}", "delete")
    assert {200, 503} <= statuses("/api/health", "get")


async def test_health_documents_its_json_answers(document: dict) -> None:
    """Readiness answers 503 with its own JSON body (not a problem); liveness is public."""
    schemas = document["components"]["schemas"]
    health = document["paths"]["/api/health"]["get"]
    assert "security" not in health
    for status in ("200", "503"):
        content = health["responses"][status]["content"]
        assert list(content) == ["application/json"], (status, content)
        ref = content["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
        assert set(schemas[ref]["properties"]) == {"status", "down"}
    live = document["paths"]["/api/health/live"]["get"]
    assert "security" not in live
    assert "application/json" in live["responses"]["200"]["content"]


def test_schemas_use_json_schema_keywords_only(document: dict) -> None:
    """A constraint pydantic cannot express (e.g. behind a before-validator) comes out under
    its own name (`gt`, `le`, ...), which no JSON Schema tool reads: it must not appear."""
    pydantic_only = {"gt", "ge", "lt", "le", "strict", "strip_whitespace", "min_length"}

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            if node.get("type") in ("integer", "number", "string"):
                leaked = pydantic_only & set(node)
                assert not leaked, (where, leaked)
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}/{i}")

    walk(document, "#")


def test_request_bodies_are_required_when_a_field_is(document: dict) -> None:
    schemas = document["components"]["schemas"]
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            body = op.get("requestBody")
            if body is None:
                continue
            ref = body["content"]["application/json"]["schema"]["$ref"]
            required = schemas[ref.rsplit("/", 1)[1]].get("required", [])
            assert body["required"] is bool(required), (method, path)
