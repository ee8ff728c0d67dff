"""HTTP plumbing shared by the services and the gateway: JSON in and out, identity,
pagination, request ids, an access log without secrets, and the process entry point."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import PayloadEncodingError
from aiohttp.web_protocol import RequestPayloadError
from pydantic import BaseModel, ValidationError
from redis.asyncio import Redis

from .mfa import MfaPolicy
from .problems import Problem, error_middleware, logged_path
from .settings import CommonSettings
from .tokens import Identity, InvalidToken, RevocationList, TokenVerifier, bearer_token

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
# Content codings a body may arrive in: the ones aiohttp decodes (br and zstd with the
# Brotli and backports.zstd packages). Any other coding it would hand on still coded.
BODY_CODINGS = frozenset({"", "identity", "gzip", "deflate", "br", "zstd"})
# A request line or header of up to 64 KiB reaches the app, whose answer is a problem; past
# aiohttp's default 8 KiB its parser answered a plain-text 400 itself (schemathesis sent
# such query strings).
MAX_LINE = 64 * 1024
GC_THRESHOLD = 10_000  # allocations between young-generation passes (CPython: 700)
MAX_ID = 2**63 - 1
MAX_LIMIT = 200
MAX_OFFSET = 10**9
JSON_TYPES = ("application/json",)
DEFAULT_BODY_TIMEOUT = 15.0  # seconds for a whole request body to arrive

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

body_timeout_key = web.AppKey("body_timeout", float)
verifier_key = web.AppKey("verifier", TokenVerifier)
revocations_key = web.AppKey("revocations", RevocationList)
redis_key = web.AppKey("redis", Redis)
mfa_policy_key = web.AppKey("mfa_policy", MfaPolicy)  # only when AUTH_REQUIRE_MFA names roles
identity_key = web.RequestKey("identity", Identity)


def dumps(data: Any) -> bytes:
    return orjson.dumps(data, default=_default)


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def json_response(data: Any, status: int = 200) -> web.Response:
    body = data.model_dump_json().encode() if isinstance(data, BaseModel) else dumps(data)
    return web.Response(body=body, status=status, content_type="application/json")


def _is_json(content_type: str) -> bool:
    return content_type in JSON_TYPES or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


def _field_errors(exc: ValidationError) -> list[dict[str, str]]:
    errors = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        errors.append({"field": loc, "message": err["msg"]})
    return errors


def _too_large() -> Problem:
    return Problem(413, "payload_too_large", "The request body is larger than 64 KiB.")


def check_body_coding(request: web.BaseRequest) -> None:
    """415 for a Content-Encoding that the server would not decode (it would hand the
    coded bytes on as if they were the body)."""
    codings = request.headers.getall("Content-Encoding", [])
    # Two header lines are two codings, of which aiohttp would undo only the first.
    coding = codings[0].strip().lower() if len(codings) == 1 else "" if not codings else ","
    if coding not in BODY_CODINGS:
        raise Problem(
            415,
            "unsupported_content_encoding",
            "Send the body uncoded, or coded with gzip, deflate, br or zstd.",
            headers={"Accept-Encoding": "gzip, deflate, br, zstd"},
        )


async def read_body(request: web.Request) -> bytes:
    """The whole body, decoded: 415 for an unknown coding, 400 for a body that does not
    decode, 413 past 64 KiB (counted after decoding, so a zip bomb is refused while it
    inflates), 408 when it has not all arrived within the body timeout."""
    check_body_coding(request)
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise _too_large()
    timeout = request.app.get(body_timeout_key, DEFAULT_BODY_TIMEOUT)
    try:
        async with asyncio.timeout(timeout):
            # client_max_size turns an oversize (decoded or chunked) body into 413.
            return await request.read()
    except TimeoutError as exc:
        _abandon_body(request)
        raise Problem(
            408,
            "request_timeout",
            f"The request body did not arrive within {timeout:g} seconds.",
            close_connection=True,
        ) from exc
    except web.HTTPRequestEntityTooLarge as exc:
        raise _too_large() from exc
    except (RequestPayloadError, PayloadEncodingError) as exc:
        # aiohttp reports a body that fails to inflate (garbage gzip or deflate) this way.
        _abandon_body(request)
        raise Problem(
            400,
            "malformed_body",
            "The request body does not decode as its Content-Encoding says.",
            close_connection=True,
        ) from exc


def _abandon_body(request: web.BaseRequest) -> None:
    """Take the body as ended: the answer goes out at once and the connection closes,
    instead of aiohttp reading on for up to 10 s (and logging the broken body's error)."""
    request.content.feed_eof()


async def read_json(request: web.Request, model: type[M]) -> M:
    """Parse and validate the body: 413 if too large, 415 if not JSON, 400 if invalid.

    An empty body counts as `{}`; unknown fields are ignored (the models decide).
    """
    raw = await read_body(request)
    if not raw.strip():
        raw = b"{}"
    elif not _is_json(request.content_type):
        raise Problem(415, "unsupported_media_type", "Send the body as application/json.")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Problem(400, "malformed_json", "The request body is not valid JSON.") from exc
    if not isinstance(data, dict):
        raise Problem(
            400,
            "validation_error",
            "The request body must be a JSON object.",
            errors=[{"field": "body", "message": "expected a JSON object"}],
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Problem(
            400, "validation_error", "The request body is invalid.", errors=_field_errors(exc)
        ) from exc


def ascii_int(raw: str, max_digits: int) -> int | None:
    """The value of a string of 1 to `max_digits` ASCII digits, else None.

    `int()` alone also takes other scripts' digits (Arabic-Indic "\\u0661\\u0660"; and
    superscript "\\u00b9" passes `isdigit()` but not `int()`), underscores ("1_0"), signs
    and spaces, and fails past 4,300 digits.
    """
    if 0 < len(raw) <= max_digits and raw.isascii() and raw.isdigit():
        return int(raw)
    return None


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    value = ascii_int(raw, len(str(high)))
    if value is None or not low <= value <= high:
        raise Problem(
            400,
            "invalid_query",
            f"`{name}` must be an integer from {low} to {high}.",
            errors=[{"field": name, "message": f"must be an integer from {low} to {high}"}],
        )
    return value


def page(request: web.Request) -> tuple[int, int]:
    """`?limit=` (1-200, default 50) and `?offset=` (0-10^9, default 0)."""
    limit = query_int(request, "limit", 50, 1, MAX_LIMIT)
    offset = query_int(request, "offset", 0, 0, MAX_OFFSET)
    return limit, offset


def path_id(
    request: web.Request,
    name: str = "id",
    *,
    code: str = "not_found",
    detail: str = "No such resource.",
) -> int:
    """A positive id from the path; anything else names nothing, so it is the route's 404.

    Only ASCII digits, and within a 64-bit signed integer (PostgreSQL's BIGINT and
    SQLite's INTEGER), so a lookup can never overflow the database.
    """
    value = ascii_int(request.match_info.get(name, ""), len(str(MAX_ID)))
    if value is None or not 0 < value <= MAX_ID:
        raise Problem(404, code, detail)
    return value


async def authenticate(request: web.Request, *, local_revocations: bool = False) -> Identity:
    """The caller's identity from a verified bearer token, else 401; then 403 when
    AUTH_REQUIRE_MFA refuses the caller on this path (`require_mfa`).

    `local_revocations`: check the process's copy of the revocation list when it has one
    (no round trip); only for callers whose request is checked again downstream.
    """
    cached = request.get(identity_key)
    if cached is not None:
        return cached
    token = bearer_token(request.headers.get("Authorization"))
    identity = await verify_token(request.app, token, local_revocations=local_revocations)
    await require_mfa(request, identity)
    request[identity_key] = identity
    return identity


async def require_mfa(request: web.Request, identity: Identity) -> None:
    """AUTH_REQUIRE_MFA (services/common/mfa.py); nothing at all when it is not set."""
    policy = request.app.get(mfa_policy_key)
    if policy is not None:
        await policy.check(identity, request.path)


async def verify_token(
    app: web.Application, token: str | None, *, local_revocations: bool = False
) -> Identity:
    """Signature, expiry and claims, then the revocation list; any failure is a 401."""
    if not token:
        raise Problem(
            401,
            "unauthorized",
            "A bearer access token is required.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        identity = app[verifier_key].verify(token)
    except InvalidToken as exc:
        raise Problem(
            401,
            "invalid_token",
            "The access token is invalid or expired.",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        ) from exc
    revocations = app.get(revocations_key)
    if revocations is not None and await revocations.is_revoked(identity, local=local_revocations):
        raise Problem(
            401,
            "token_revoked",
            "The access token has been revoked.",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    return identity


async def require_role(request: web.Request, role: str) -> Identity:
    identity = await authenticate(request)
    if identity.role != role:
        raise Problem(403, "forbidden_role", f"Only a {role} may do this.")
    return identity


_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Keep a well-formed incoming X-Request-Id (from the gateway), else make one."""
    incoming = request.headers.get("X-Request-Id", "")
    rid = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
    request["request_id"] = rid
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers["X-Request-Id"] = rid
        raise
    response.headers["X-Request-Id"] = rid
    return response


SECRET_PARAMS = frozenset({"token", "access_token", "refresh_token"})


def redacted_path(request: web.BaseRequest) -> str:
    """The path and query as logged: values of token-bearing parameters never appear, nor a
    feed URL's secret in full.

    Judged by the decoded name, so `?%74oken=` (which the server reads as `token`) is
    redacted too.
    """
    query = request.rel_url.query
    path = logged_path(request.path)
    if not query:
        return path
    parts = [
        f"{name}=[redacted]" if name.lower() in SECRET_PARAMS else f"{name}={value}"
        for name, value in query.items()
    ]
    return path + "?" + "&".join(parts)


class AccessLogger(AbstractAccessLogger):
    """One line per request; never the query values or headers that may carry a token."""

    @property
    def enabled(self) -> bool:
        # aiohttp skips `log` (and building its arguments) when this is False.
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s %d %.1fms rid=%s",
            request.remote,
            request.method,
            redacted_path(request),
            response.status,
            time * 1000,
            response.headers.get("X-Request-Id", "-"),
        )


def base_app(
    settings: CommonSettings,
    *,
    middlewares: list[Any] | None = None,
    outer: list[Any] | None = None,
) -> web.Application:
    """An application with the shared middlewares and body limit.

    `outer` middlewares wrap everything but the request id (they see final responses,
    errors included);
    `middlewares` run inside the error handler (their exceptions become problems).
    """
    app = web.Application(
        middlewares=[request_id_middleware, *(outer or []), error_middleware, *(middlewares or [])],
        client_max_size=MAX_BODY,
    )
    app[body_timeout_key] = settings.body_timeout_seconds
    return app


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


async def _freeze_startup_objects(_app: web.Application) -> None:
    """Leave what startup built (modules, mappers, schemas) out of every later GC pass,
    and collect less often: a request allocates many short-lived objects, and the full
    passes over a few hundred thousand long-lived ones showed as latency spikes."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)


def serve(app_factory: Callable[[], Awaitable[web.Application]], settings: CommonSettings) -> None:
    """Run an app until SIGINT/SIGTERM; sockets and tasks are closed within a few seconds."""
    configure_logging(settings.log_level)
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover - uvloop is a pinned dependency
        pass

    async def tuned() -> web.Application:
        app = await app_factory()
        app.on_startup.append(_freeze_startup_objects)  # after the resources are built
        return app

    web.run_app(
        tuned(),
        host=settings.host,
        port=settings.port,
        access_log_class=AccessLogger,
        shutdown_timeout=3.0,
        keepalive_timeout=settings.keepalive_timeout_seconds,
        print=None,
        backlog=1024,
        max_line_size=MAX_LINE,
        max_field_size=MAX_LINE,
    )
