"""One WebSocket per user that records every frame and, whenever it is dropped (a gateway
killed, say), reconnects with `?since=` the last id it got, as API.md tells clients to."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

log = logging.getLogger(__name__)

RECONNECT_S = 0.2


def id_key(notification_id: str) -> tuple[int, int]:
    ms, _, seq = notification_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class Frame:
    session: int  # 1 for the first connection, then one more per reconnect
    message: dict[str, Any]


@dataclass
class SocketRecorder:
    base: str  # the gateway, http://...
    user_id: int
    token: str
    frames: list[Frame] = field(default_factory=list)
    sessions: int = 0
    last: str = "0"  # the first connection replays the whole log
    task: asyncio.Task[None] | None = None
    _news: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"ws-recorder-{self.user_id}")

    def url(self) -> str:
        ws_base = self.base.replace("http://", "ws://", 1)
        return f"{ws_base}/api/ws?{urlencode({'since': self.last})}"

    async def _run(self) -> None:
        while True:
            try:
                async with connect(
                    self.url(),
                    additional_headers={"Authorization": f"Bearer {self.token}"},
                    proxy=None,
                    compression=None,
                    open_timeout=10,
                    max_queue=None,
                ) as ws:
                    self.sessions += 1
                    async for raw in ws:
                        message = orjson.loads(raw)
                        self.frames.append(Frame(self.sessions, message))
                        if message.get("type") != "reset" and isinstance(message.get("id"), str):
                            self.last = message["id"]
                        self._news.set()
            except (OSError, TimeoutError, WebSocketException) as exc:
                log.debug("socket of user %s dropped: %r", self.user_id, exc)
            await asyncio.sleep(RECONNECT_S)

    async def wait_for(self, last_id: str | None, within: float) -> bool:
        """Wait until the frame with `last_id` (the log's newest) has arrived."""
        if last_id is None:
            return True

        async def arrived() -> None:
            while id_key(self.last) < id_key(last_id):
                self._news.clear()
                await self._news.wait()

        try:
            await asyncio.wait_for(arrived(), within)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
