"""CORS for the allowed browser origins, on every response including errors and preflights.

A middleware rather than aiohttp-cors: the gateway's routes are catch-all proxies
(`/api/auth/{tail}` for any method), which aiohttp-cors cannot wrap.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, X-Request-Id, Idempotency-Key"
EXPOSE_HEADERS = "X-Request-Id, Retry-After, WWW-Authenticate, Idempotent-Replayed"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def cors_middleware(origins: Iterable[str]) -> Callable[..., Awaitable[web.StreamResponse]]:
    allowed = frozenset(o.rstrip("/") for o in origins)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if (
            request.method == "OPTIONS"
            and origin
            and "Access-Control-Request-Method" in request.headers
        ):
            response: web.StreamResponse = web.Response(status=204)
            if origin in allowed or "*" in allowed:
                response.headers.update(
                    {
                        "Access-Control-Allow-Methods": ALLOW_METHODS,
                        "Access-Control-Allow-Headers": ALLOW_HEADERS,
                        "Access-Control-Max-Age": "600",
                    }
                )
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                response = exc
            if isinstance(response, web.WebSocketResponse):
                return response
        if origin and (origin in allowed or "*" in allowed):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        response.headers.add("Vary", "Origin")
        if isinstance(response, web.HTTPException):
            raise response
        return response

    return middleware
