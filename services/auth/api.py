"""HTTP handlers of the auth service; domain errors become problems in one table."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from aiohttp import web
from pydantic import BaseModel, StringConstraints, TypeAdapter, ValidationError

from services.common.events import UserData
from services.common.openapi import PAGE_PARAMS, Route
from services.common.problems import DomainErrors, Problem
from services.common.schemas import Email, NewPassword, RequestModel, text
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
    # Version 3 (mail).
    service.TooManyRequests: (429, "rate_limited", "Too many requests; try again later."),
    service.InvalidEmailToken: (
        400,
        "invalid_token",
        "This code or link is unknown, expired or already used.",
    ),
    service.AlreadyVerified: (409, "already_verified", "Your address is already verified."),
    service.WrongPassword: (403, "invalid_credentials", "The current password is wrong."),
}


Name = text(1, 100)


class SignupBody(RequestModel):
    name: Name
    email: Email
    password: NewPassword
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
        client_ip=client_ip(request),
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


# -- version 3: verified addresses, password reset and change ----------------------------

# A token from a mail (URL-safe base64 of 32 random bytes); anything else is simply unknown.
MailToken = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class VerifyEmailBody(RequestModel):
    token: MailToken


class PasswordResetBody(RequestModel):
    email: Email


class PasswordResetConfirmBody(RequestModel):
    token: MailToken
    password: NewPassword


class PasswordChangeBody(RequestModel):
    current_password: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    new_password: NewPassword


async def verify_email(request: web.Request) -> web.Response:
    body = await read_json(request, VerifyEmailBody)
    return json_response(await service.verify_email(request.app[ctx_key], token=body.token))


async def resend_verification(request: web.Request) -> web.Response:
    identity = await authenticate(request)
    await read_json(request, EmptyBody)
    await service.resend_verification(
        request.app[ctx_key], identity=identity, client_ip=client_ip(request)
    )
    return web.Response(status=202)


async def password_reset(request: web.Request) -> web.Response:
    body = await read_json(request, PasswordResetBody)
    await service.request_password_reset(
        request.app[ctx_key], email=body.email.lower(), client_ip=client_ip(request)
    )
    return web.Response(status=202)


async def password_reset_confirm(request: web.Request) -> web.Response:
    body = await read_json(request, PasswordResetConfirmBody)
    await service.confirm_password_reset(
        request.app[ctx_key], token=body.token, password=body.password
    )
    return web.Response(status=204)


async def change_password(request: web.Request) -> web.Response:
    identity = await authenticate(request)
    body = await read_json(request, PasswordChangeBody)
    await service.change_password(
        request.app[ctx_key],
        identity=identity,
        current_password=body.current_password,
        new_password=body.new_password,
        client_ip=client_ip(request),
    )
    return web.Response(status=204)


class EmptyBody(RequestModel):
    """No fields (any sent are ignored)."""


ROLE_QUERY = {
    "name": "role",
    "in": "query",
    "schema": {"type": "string", "enum": ["professional", "client"]},
}

ROUTES = [
    Route("POST", "/api/auth/signup", signup, "Create an account", status=201, body=SignupBody,
          response=SessionOut, auth=False, raises=[service.EmailTaken, service.TooManyRequests],
          reply=session_reply),
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
    # Version 3 (mail).
    Route("POST", "/api/auth/verify-email", verify_email,
          "Verify the account's address with the code or link from the mail",
          body=VerifyEmailBody, response=UserData, auth=False,
          raises=[service.InvalidEmailToken]),
    Route("POST", "/api/auth/verify-email/resend", resend_verification,
          "Send the verification mail again (3 an hour)", status=202, body=EmptyBody,
          raises=[service.AlreadyVerified, service.TooManyRequests, service.UserNotFound]),
    Route("POST", "/api/auth/password-reset", password_reset,
          "Mail a password reset link (the same answer for every address)", status=202,
          body=PasswordResetBody, auth=False, raises=[service.TooManyRequests]),
    Route("POST", "/api/auth/password-reset/confirm", password_reset_confirm,
          "Set a new password with the reset link's token; every session ends", status=204,
          body=PasswordResetConfirmBody, auth=False, raises=[service.InvalidEmailToken]),
    Route("POST", "/api/auth/password", change_password,
          "Change the password; every other session ends", status=204,
          body=PasswordChangeBody,
          raises=[service.WrongPassword, service.RateLimited, service.UserNotFound]),
]  # fmt: skip
