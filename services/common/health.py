"""Health answers a load balancer can poll hard: liveness without I/O, readiness cached."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from aiohttp import web

from .web import json_response

T = TypeVar("T")

READY_TTL_SECONDS = 1.0  # a dependency that goes down is reported within about this long
PROBE_TIMEOUT_SECONDS = 2.0
RETRY_AFTER_SECONDS = "5"


class CachedCheck(Generic[T]):
    """The result of an async check, computed at most once per `ttl` seconds.

    Within `ttl` of the last result every caller gets it as it is. After that, the first
    caller starts one check and waits for it; callers that come while it runs get the
    previous result at once if it is younger than `max_stale` (so a dependency that hangs
    until the probe's timeout does not hold every probe), else they await the same check
    (single flight): a burst of probes costs one round of I/O, never one per probe. A
    caller that goes away does not cancel the check the others are waiting for.
    """

    def __init__(
        self,
        check: Callable[[], Awaitable[T]],
        ttl: float = READY_TTL_SECONDS,
        max_stale: float = READY_TTL_SECONDS + PROBE_TIMEOUT_SECONDS + 1,
    ) -> None:
        self._check = check
        self._ttl = ttl
        self._max_stale = max_stale
        self._value: T | None = None
        self._at = -math.inf
        self._inflight: asyncio.Task[T] | None = None
        self.runs = 0  # checks started, for tests and benchmarks

    async def get(self) -> T:
        loop = asyncio.get_running_loop()
        age = loop.time() - self._at
        if self._value is not None and age < self._ttl:
            return self._value
        if self._inflight is None:
            self._inflight = loop.create_task(self._run(), name="health-check")
        elif self._value is not None and age < self._max_stale:
            return self._value
        return await asyncio.shield(self._inflight)

    async def _run(self) -> T:
        self.runs += 1
        try:
            value = await self._check()
        finally:
            self._inflight = None
        # The age counts from the answer, so a slow check is not repeated back to back.
        self._value, self._at = value, asyncio.get_running_loop().time()
        return value

    async def close(self) -> None:
        """Cancel a check still running (app shutdown)."""
        task = self._inflight
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def probe(coro: Awaitable[Any]) -> str | None:
    """None when `coro` completes in time, else the name of what went wrong."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            await coro
    except Exception as exc:  # any failure means down; the caller reports which
        return type(exc).__name__
    return None


def health_response(body: dict[str, Any], ok: bool) -> web.Response:
    """200 or 503 with Retry-After; never stored by a cache on the way."""
    response = json_response(body, status=200 if ok else 503)
    response.headers["Cache-Control"] = "no-store"
    if not ok:
        response.headers["Retry-After"] = RETRY_AFTER_SECONDS
    return response


async def live(request: web.Request) -> web.Response:
    """Liveness: the process serves requests. No I/O, so it says nothing of dependencies."""
    return health_response({"status": "ok"}, True)
