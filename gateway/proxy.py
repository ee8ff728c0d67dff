"""Reverse proxy to the services over one pooled client session."""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from services.common.outbox import (
    OUTBOX_ROW_HEADER,
    READ_AFTER_HEADER,
    UNPUBLISHED_HEADER,
    format_positions,
    parse_positions,
)
from services.common.problems import logged_path, unavailable
from services.common.web import read_body

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
# The gateway forwards the body decoded (it had to decode it to hold it to 64 KiB), so
# the coding the client declared no longer describes it.
BODY_HEADERS = frozenset({"content-encoding"})
# Identity and client-address headers are the gateway's to set, never the client's.
SPOOFABLE = frozenset(
    {
        "x-user-id",
        "x-user-role",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
        "forwarded",
        "x-request-id",
        READ_AFTER_HEADER.lower(),
    }
)
RESPONSE_DROP = HOP_BY_HOP | {
    "server",
    "date",
    OUTBOX_ROW_HEADER.lower(),
    UNPUBLISHED_HEADER.lower(),
}


class Positions:
    """The newest outbox row each stream's producer answered for, as this gateway saw it.

    Every change a service answers carries where its events are in the producer's outbox
    (`X-Outbox-Row`); every request goes on with all of them (`X-Read-After`), so a
    service whose answer depends on a copy first waits until those rows are on the stream
    and applied: a 2xx change is visible to every later call through this gateway, by
    anyone, even when its event reached the stream after the reply (Redis was down).
    """

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self.header = ""
        # The newest rows answered before they were on their stream (`X-Outbox-Unpublished`:
        # Redis was down): the notifier reads up to them before it appends anything.
        self.unpublished: dict[str, int] = {}

    def update(self, value: str, unpublished: str | None = None) -> None:
        changed = False
        for stream, row in parse_positions(value).items():
            if row > self.rows.get(stream, 0):
                self.rows[stream] = row
                changed = True
        if changed:
            self.header = format_positions(self.rows)
        if unpublished:
            for stream, row in parse_positions(unpublished).items():
                if row > self.unpublished.get(stream, 0):
                    self.unpublished[stream] = row


session_key = web.AppKey("upstream_session", aiohttp.ClientSession)
positions_key = web.AppKey("positions", Positions)


def _drop_listed(headers: CIMultiDict[str]) -> set[str]:
    """Header names that a `Connection:` header marks as hop-by-hop (RFC 9110 §7.6.1)."""
    listed: set[str] = set()
    for value in headers.getall("Connection", []):
        listed.update(name.strip().lower() for name in value.split(","))
    return listed


def request_headers(request: web.Request) -> CIMultiDict[str]:
    drop = HOP_BY_HOP | SPOOFABLE | BODY_HEADERS | _drop_listed(request.headers)
    out = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in drop)
    out["X-Forwarded-For"] = request.remote or ""
    out["X-Forwarded-Proto"] = request.scheme
    out["X-Request-Id"] = request["request_id"]
    if positions_key in request.app and (seen := request.app[positions_key].header):
        out[READ_AFTER_HEADER] = seen
    return out


def response_headers(upstream: aiohttp.ClientResponse) -> CIMultiDict[str]:
    drop = RESPONSE_DROP | _drop_listed(upstream.headers)
    return CIMultiDict((k, v) for k, v in upstream.headers.items() if k.lower() not in drop)


async def forward(request: web.Request, base_url: str, name: str) -> web.Response:
    """Send the request on to `base_url`; a service that cannot be reached is a 503.

    The body is read whole first, decoded, within the size limit and the body timeout
    (a stalled upload is a 408 here, and never holds a service's connection).
    """
    body = await read_body(request) if request.body_exists else None
    url = base_url + request.rel_url.raw_path_qs
    try:
        async with request.app[session_key].request(
            request.method,
            url,
            headers=request_headers(request),
            data=body,
            allow_redirects=False,
        ) as upstream:
            if (rows := upstream.headers.get(OUTBOX_ROW_HEADER)) and positions_key in request.app:
                request.app[positions_key].update(rows, upstream.headers.get(UNPUBLISHED_HEADER))
            payload = await upstream.read()
            return web.Response(
                status=upstream.status,
                reason=upstream.reason,
                body=payload,
                headers=response_headers(upstream),
            )
    except (TimeoutError, aiohttp.ClientConnectionError) as exc:
        log.warning(
            "upstream %s unavailable for %s %s: %r",
            name,
            request.method,
            logged_path(request.path),
            exc,
        )
        raise unavailable(f"The {name} service is unavailable, try again shortly.") from exc
    except aiohttp.ClientPayloadError as exc:
        raise unavailable(f"The {name} service broke off its response.") from exc
