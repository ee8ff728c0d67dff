"""Activities' subscribers: `connection.*` keeps the copy of connections and cascades removals."""

from __future__ import annotations

from services.common.consumer import Handler
from services.common.db import Database
from services.common.events import CONNECTIONS_STREAM, Event

from .service import on_connection_changed

GROUP = "activities"
STREAMS = [CONNECTIONS_STREAM]


def handler(db: Database) -> Handler:
    async def handle(event: Event) -> None:
        if event.type.startswith("connection."):
            await on_connection_changed(db, event.data.connection)

    return handle
