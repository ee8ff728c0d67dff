"""Auth's subscribers: connection events keep the local copy behind the directory rule."""

from __future__ import annotations

from services.common.consumer import Handler
from services.common.copies import apply_connection
from services.common.db import Database
from services.common.events import CONNECTIONS_STREAM, ConnectionData, Event

from .tables import ClientLink

GROUP = "auth"
STREAMS = [CONNECTIONS_STREAM]


async def on_connection_changed(db: Database, connection: ConnectionData) -> None:
    """Keep the copy of connections behind the directory rule (newest state wins)."""
    await db.write(lambda session: apply_connection(session, ClientLink, connection))


def handler(db: Database) -> Handler:
    async def handle(event: Event) -> None:
        if event.type.startswith("connection."):
            await on_connection_changed(db, event.data.connection)

    return handle
