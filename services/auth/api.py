"""HTTP handlers of the auth service; domain errors become problems in one table."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from aiohttp import web
from pydantic import BaseModel, StringConstraints, TypeAdapter, ValidationError

from services.common.events import UserData
from services.common.openapi import PAGE_PARAMS, Route
from services.common.problems import DomainErrors, Problem
from services.common.schemas import Email, RequestModel, text
from services.common.tokens import Identity
from services.common.web import (
    authenticate,
    json_response,
    page,
    read_json,
)

from . import service
from .service import AuthContext, Session, user_data

ctx_key = web.AppKey("auth_ctx", AuthContext)
trusted_key = web.AppKey("trusted_proxies", list)

ERRORS: DomainErrors = {
    service.EmailTaken: (409, "email_taken", "An account with this email already exists."),
    service.InvalidCredentials: (401, "invalid_credentials", "Wrong email or password."),
    service.InvalidRefreshToken: (
        401,
        "invalid_refresh_token",
        "The refresh token is invalid, expired or revoked.",
    ),
    service.RateLimited: (429, "rate_limited", "Too many failed logins; try again later."),
    service.UserNotFound: (404, "user_not_found", "No such user."),
}


Name = text(1, 100)
Password = Annotated[str, StringConstraints(min_length=8, max_length=128)]


class SignupBody(RequestModel):
    name: Name
    email: Email
    password: Password
    role: Literal["professional", "client"]


_email = TypeAdapter(Email)


def login_email(raw: str) -> str:
    """The address as signup stores it (same normalisation, then lower-case), so the very
    string accepted at signup also logs in; anything else is only lower-cased."""
    try:
        return _email.validate_python(raw).lower()
    except ValidationError:
        return raw.lower()


# Any string may be tried as a login email, but not control characters: PostgreSQL
# rejects a NUL in a query parameter, which was a 500.
LoginEmail = text(1, 320)


class LoginBody(RequestModel):
    email: LoginEmail
    password: Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class RefreshBody(RequestModel):
    refresh_token: Annotated[str, StringConstraints(min_length=1, max_length=512)]


class LogoutBody(RequestModel):
    refresh_token: Annotated[str, StringConstraints(max_length=512)] | None = None


class SessionOut(BaseModel):
    """What sign-up, login and refresh answer."""

    user: UserData
    token: str
    refresh_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - a scheme name, not a secret


def _session_json(session: Session, status: int) -> web.Response:
    return json_response(session_reply(session), status=status)


def session_reply(result: object) -> SessionOut | None:
    """What signup, login and refresh answer for their unit of work's result (refresh's is
    the reused token's row when it detects reuse: that request fails, nothing to record)."""
    if not isinstance(result, Session):
        return None
    return SessionOut(
        user=user_data(result.user), token=result.access_token, refresh_token=result.refresh_token
    )


def client_ip(request: web.Request) -> str:
    """The caller's address; X-Forwarded-For only counts when sent by a trusted proxy."""
    peer = request.remote or "unknown"
    forwarded = request.headers.get("X-Forwarded-For")
    if not forwarded:
        return peer
    try:
        peer_ip = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    if not any(peer_ip in net for net in request.app[trusted_key]):
        return peer
    hop = forwarded.split(",")[-1].strip()
    try:
        return str(ipaddress.ip_address(hop))
    except ValueError:
        return peer


async def signup(request: web.Request) -> web.Response:
    body = await read_json(request, SignupBody)
    session = await service.signup(
        request.app[ctx_key],
        name=body.name,
        email=body.email.lower(),
        password=body.password,
        role=body.role,
    )
    return _session_json(session, 201)


async def login(request: web.Request) -> web.Response:
    body = await read_json(request, LoginBody)
    session = await service.login(
        request.app[ctx_key],
        email=login_email(body.email),
        password=body.password,
        client_ip=client_ip(request),
    )
    return _session_json(session, 200)


async def refresh(request: web.Request) -> web.Response:
    body = await read_json(request, RefreshBody)
    session = await service.refresh(request.app[ctx_key], refresh_token=body.refresh_token)
    return _session_json(session, 200)


async def logout(request: web.Request) -> web.Response:
    identity: Identity = await authenticate(request)
    body = await read_json(request, LogoutBody)
    await service.logout(request.app[ctx_key], identity=identity, refresh_token=body.refresh_token)
    return web.Response(status=204)


async def me(request: web.Request) -> web.Response:
    identity = await authenticate(request)
    return json_response(await service.get_user(request.app[ctx_key], user_id=identity.user_id))


async def list_users(request: web.Request) -> web.Response:
    identity = await authenticate(request)
    role = request.query.get("role")
    if role is not None and role not in ("professional", "client"):
        raise Problem(
            400,
            "invalid_query",
            "`role` must be `professional` or `client`.",
            errors=[{"field": "role", "message": "must be professional or client"}],
        )
    limit, offset = page(request)
    users = await service.list_users(
        request.app[ctx_key], viewer=identity, role=role, limit=limit, offset=offset
    )
    return json_response(users)


ROLE_QUERY = {
    "name": "role",
    "in": "query",
    "schema": {"type": "string", "enum": ["professional", "client"]},
}

ROUTES = [
    Route("POST", "/api/auth/signup", signup, "Create an account", status=201, body=SignupBody,
          response=SessionOut, auth=False, raises=[service.EmailTaken], reply=session_reply),
    Route("POST", "/api/auth/login", login, "Log in", body=LoginBody, response=SessionOut,
          auth=False, raises=[service.InvalidCredentials, service.RateLimited],
          reply=session_reply),
    Route("POST", "/api/auth/refresh", refresh, "Rotate a refresh token", body=RefreshBody,
          response=SessionOut, auth=False, raises=[service.InvalidRefreshToken],
          reply=session_reply),
    Route("POST", "/api/auth/logout", logout, "Log out", status=204, body=LogoutBody),
    Route("GET", "/api/auth/me", me, "The caller", response=UserData,
          raises=[service.UserNotFound]),
    Route("GET", "/api/users", list_users, "The users directory", response=UserData, many=True,
          query=[ROLE_QUERY, *PAGE_PARAMS]),
]  # fmt: skip
