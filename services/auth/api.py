"""HTTP handlers of the auth service; domain errors become problems in one table."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from aiohttp import web
from pydantic import BaseModel, Field, StringConstraints, TypeAdapter, ValidationError

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
from .service import AuthContext, Client, user_data

ctx_key = web.AppKey("auth_ctx", AuthContext)
trusted_key = web.AppKey("trusted_proxies", list)

WRONG_CODE = "The code is not a current code of the authenticator app nor an unused recovery code."
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
    service.WrongPassword: (403, "invalid_credentials", "Wrong password."),
    service.MfaRequired: (
        401,
        "mfa_required",
        "This account has multi-factor authentication on: send `otp` too (a code of the "
        "authenticator app, or a recovery code).",
    ),
    service.InvalidLoginCode: (401, "invalid_code", WRONG_CODE),
    service.InvalidCode: (400, "invalid_code", WRONG_CODE),
    service.MfaAlreadyEnabled: (
        409,
        "mfa_already_enabled",
        "Multi-factor authentication is already on.",
    ),
    service.MfaNotEnabled: (409, "mfa_not_enabled", "Multi-factor authentication is not on."),
    service.SessionNotFound: (404, "session_not_found", "No such session of yours."),
    service.SessionExpired: (
        401,
        "session_expired",
        "The session has ended (idle too long, or past its lifetime): log in again.",
    ),
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


AnyPassword = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
# A TOTP code (6 digits) or a recovery code (10 characters); spaces and dashes are ignored.
Code = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class LoginBody(RequestModel):
    email: LoginEmail
    password: AnyPassword
    otp: Code | None = Field(
        None, description="For an account with MFA on: a TOTP code or an unused recovery code"
    )


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


def _session_json(session: service.Session, status: int) -> web.Response:
    return json_response(session_reply(session), status=status)


def session_reply(result: object) -> SessionOut | None:
    """What signup, login and refresh answer for their unit of work's result (refresh's is
    the reused token's row when it detects reuse: that request fails, nothing to record)."""
    if not isinstance(result, service.Session):
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


def client_of(request: web.Request) -> Client:
    """Where the request comes from, as a session records it."""
    return Client(ip=client_ip(request), user_agent=request.headers.get("User-Agent"))


async def signup(request: web.Request) -> web.Response:
    body = await read_json(request, SignupBody)
    session = await service.signup(
        request.app[ctx_key],
        name=body.name,
        email=body.email.lower(),
        password=body.password,
        role=body.role,
        client=client_of(request),
    )
    return _session_json(session, 201)


async def login(request: web.Request) -> web.Response:
    body = await read_json(request, LoginBody)
    client = client_of(request)
    session = await service.login(
        request.app[ctx_key],
        email=login_email(body.email),
        password=body.password,
        otp=body.otp,
        client_ip=client.ip or "unknown",
        client=client,
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


# --- sessions ---------------------------------------------------------------------------

SESSION_ID = re.compile(r"[0-9a-f]{32}")
SESSION_ID_SCHEMA = {"type": "string", "pattern": "^[0-9a-f]{32}$"}


class Session(BaseModel):
    """One of the caller's live sessions (a login, and the refreshes since)."""

    id: str
    created_at: str
    last_used_at: str = Field(description="The login, or the latest refresh")
    user_agent: str | None
    ip: str | None
    current: bool = Field(description="The session of the token that asks")


async def list_sessions(request: web.Request) -> web.Response:
    identity = await authenticate(request)
    limit, offset = page(request)
    sessions = await service.list_sessions(
        request.app[ctx_key], identity=identity, limit=limit, offset=offset
    )
    return json_response(sessions)


async def end_session(request: web.Request) -> web.Response:
    identity = await authenticate(request)
    session_id = request.match_info.get("id", "")
    if not SESSION_ID.fullmatch(session_id):
        raise service.SessionNotFound(session_id)
    await service.end_session(request.app[ctx_key], identity=identity, session_id=session_id)
    return web.Response(status=204)


# --- MFA ----------------------------------------------------------------------------------


class EnrolBody(RequestModel):
    password: AnyPassword


class CodeBody(RequestModel):
    code: Code


class EnrolmentOut(BaseModel):
    """A TOTP secret, not active until a code of it is confirmed."""

    secret: str = Field(description="Base32, for typing into an authenticator app")
    otpauth_uri: str
    qr_code: str = Field(description="The otpauth URI as a QR code: an SVG image in a data: URI")


class RecoveryCodesOut(BaseModel):
    recovery_codes: list[str] = Field(description="10 single-use codes, shown this once")


class NoContent(BaseModel):
    """The recorded answer of a 204 (an empty body)."""


def enrolment_reply(result: object) -> EnrolmentOut | None:
    if not isinstance(result, service.Enrolment):
        return None
    return EnrolmentOut(
        secret=result.secret, otpauth_uri=result.otpauth_uri, qr_code=result.qr_code
    )


def recovery_codes_reply(result: object) -> RecoveryCodesOut | None:
    if not isinstance(result, service.RecoveryCodes):
        return None
    return RecoveryCodesOut(recovery_codes=result.codes)


def mfa_off_reply(result: object) -> NoContent | None:
    """Only the unit of work that turns MFA off answers (the one that checks the code
    first does not: a wrong code must leave nothing to replay)."""
    return NoContent() if isinstance(result, service.MfaTurnedOff) else None


async def enrol_totp(request: web.Request) -> web.Response:
    identity = await authenticate(request)
    body = await read_json(request, EnrolBody)
    enrolment = await service.enrol_totp(
        request.app[ctx_key],
        identity=identity,
        password=body.password,
        client_ip=client_ip(request),
    )
    return json_response(enrolment_reply(enrolment), status=201)


async def confirm_totp(request: web.Request) -> web.Response:
    identity = await authenticate(request)
    body = await read_json(request, CodeBody)
    codes = await service.confirm_totp(request.app[ctx_key], identity=identity, code=body.code)
    return json_response(recovery_codes_reply(codes))


async def disable_totp(request: web.Request) -> web.Response:
    identity = await authenticate(request)
    body = await read_json(request, CodeBody)
    await service.disable_totp(
        request.app[ctx_key], identity=identity, code=body.code, client_ip=client_ip(request)
    )
    return web.Response(status=204)


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
          auth=False, raises=[service.InvalidCredentials, service.RateLimited,
                              service.MfaRequired, service.InvalidLoginCode],
          reply=session_reply),
    Route("POST", "/api/auth/refresh", refresh, "Rotate a refresh token", body=RefreshBody,
          response=SessionOut, auth=False,
          raises=[service.InvalidRefreshToken, service.SessionExpired], reply=session_reply),
    Route("POST", "/api/auth/logout", logout, "Log out", status=204, body=LogoutBody),
    Route("GET", "/api/auth/me", me, "The caller", response=UserData,
          raises=[service.UserNotFound]),
    Route("GET", "/api/auth/sessions", list_sessions, "The caller's live sessions, newest first",
          response=Session, many=True, query=PAGE_PARAMS),
    Route("DELETE", "/api/auth/sessions/{id}", end_session,
          "End one of the caller's sessions (its tokens stop working, its sockets close)",
          status=204, raises=[service.SessionNotFound], id_schema=SESSION_ID_SCHEMA),
    Route("POST", "/api/auth/mfa/totp", enrol_totp,
          "Start TOTP enrolment (not active until confirmed)", status=201, body=EnrolBody,
          response=EnrolmentOut,
          raises=[service.WrongPassword, service.MfaAlreadyEnabled, service.RateLimited,
                  service.UserNotFound],
          reply=enrolment_reply, secret=True),
    Route("POST", "/api/auth/mfa/totp/confirm", confirm_totp,
          "Confirm TOTP enrolment with a code: MFA is on", body=CodeBody,
          response=RecoveryCodesOut, raises=[service.InvalidCode, service.MfaAlreadyEnabled],
          reply=recovery_codes_reply, secret=True),
    Route("DELETE", "/api/auth/mfa/totp", disable_totp,
          "Turn MFA off with a TOTP code or a recovery code", status=204, body=CodeBody,
          raises=[service.InvalidCode, service.MfaNotEnabled, service.RateLimited,
                  service.UserNotFound],
          reply=mfa_off_reply, secret=True),
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
          raises=[service.WrongPassword, service.RateLimited, service.UserNotFound],
          secret=True),
]  # fmt: skip
