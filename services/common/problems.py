"""RFC 9457 problem details and the one middleware that turns every error into one."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import orjson
import redis.exceptions
import sqlalchemy.exc
from aiohttp import web

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_SECONDS = 5


class Problem(Exception):
    """An error that reaches the client as problem+json with a stable machine `code`."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str = "",
        *,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        close_connection: bool = False,
        **extra: Any,
    ) -> None:
        super().__init__(detail or code)
        self.status = status
        self.code = code
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}
        self.close_connection = close_connection  # the request's bytes cannot be trusted
        self.extra = extra

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": "about:blank",
            "title": HTTPStatus(self.status).phrase,
            "status": self.status,
            "detail": self.detail or HTTPStatus(self.status).description,
            "code": self.code,
        }
        if self.errors is not None:
            body["errors"] = self.errors
        body.update(self.extra)
        return body


def problem_response(problem: Problem) -> web.Response:
    response = web.Response(
        status=problem.status,
        body=orjson.dumps(problem.body()),
        content_type=PROBLEM_JSON,
        headers=problem.headers,
    )
    if problem.close_connection:
        response.force_close()
    return response


def unavailable(detail: str = "A dependency is unavailable, try again shortly.") -> Problem:
    return Problem(
        503, "service_unavailable", detail, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
    )


# aiohttp's own HTTP errors (no route, wrong method, body too large) keep their status but
# get a problem+json body and a stable code.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}

# Errors meaning "a dependency is down": answered with 503, never 500.
_UNAVAILABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    sqlalchemy.exc.DisconnectionError,
    sqlalchemy.exc.InterfaceError,
    ConnectionError,
    TimeoutError,
)


# SQLSTATE classes of a database that cannot serve now: connection exceptions (08),
# insufficient resources such as "too many clients" (53), operator intervention such as
# "the database system is starting up" (57P).
_UNAVAILABLE_SQLSTATES = ("08", "53", "57P")


def is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, _UNAVAILABLE):
        return True
    for err in (exc, getattr(exc, "orig", None), getattr(exc, "__cause__", None)):
        state = getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)
        if isinstance(state, str) and state.startswith(_UNAVAILABLE_SQLSTATES):
            return True
    if isinstance(exc, sqlalchemy.exc.OperationalError):
        # "database is locked" past busy_timeout, or PostgreSQL gone: both transient.
        return True
    return isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# A path that is itself a secret (a calendar feed's URL): logged with a prefix of it only.
_SECRET_PATH = re.compile(r"^(/api/calendar/)([^/]{0,6})[^/]*(\.ics)$")


def logged_path(path: str) -> str:
    """`path` as a log line may show it: the secret of a feed URL cut to its first characters."""
    return _SECRET_PATH.sub(r"\1\2...\3", path)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as problem:
        return problem_response(problem)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == PROBLEM_JSON:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        detail = exc.reason
        if exc.status == 413:
            detail = "The request body is larger than 64 KiB."
        headers = {k: v for k, v in exc.headers.items() if k.lower() in {"allow", "retry-after"}}
        return problem_response(Problem(exc.status, code, detail, headers=headers))
    except Exception as exc:
        if is_unavailable(exc):
            path = logged_path(request.path)
            log.warning("dependency unavailable on %s %s: %r", request.method, path, exc)
            return problem_response(unavailable())
        log.exception("unhandled error on %s %s", request.method, logged_path(request.path))
        return problem_response(
            Problem(500, "internal_error", "An unexpected error occurred; it has been logged.")
        )


DomainErrors = dict[type[Exception], tuple[int, str, str]]


def domain_error_middleware(mapping: DomainErrors) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Map a service's typed domain errors to problems, in one place per service."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except tuple(mapping) as exc:
            for cls in type(exc).__mro__:
                if cls in mapping:
                    status, code, detail = mapping[cls]
                    headers = {}
                    if retry := getattr(exc, "retry_after", None):
                        headers["Retry-After"] = str(retry)
                    elif status == 503:  # API.md: every 503 says when to try again
                        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
                    # A domain error about one field of the body (e.g. a start in the past)
                    # names it, as a validation error does.
                    errors = getattr(exc, "errors", None)
                    raise Problem(status, code, detail, headers=headers, errors=errors) from exc
            raise

    return middleware
