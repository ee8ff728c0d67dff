"""Auth's subscribers: connection events keep the local copy behind the directory rule."""

from __future__ import annotations

from sqlalchemy import select

from services.common.db import Database
from services.common.events import CONNECTIONS_STREAM, ConnectionData, Event

from .tables import ClientLink

GROUP = "auth"
STREAMS = [CONNECTIONS_STREAM]


async def on_connection_changed(db: Database, connection: ConnectionData) -> None:
    """Upsert the connection's latest state; an older event than the stored one is ignored,
    so redelivery and reordering leave the newest state in place."""
    async with db.transaction() as session:
        link = await session.scalar(
            select(ClientLink).where(ClientLink.connection_id == connection.id)
        )
        if link is None:
            session.add(
                ClientLink(
                    connection_id=connection.id,
                    professional_id=connection.professional.id,
                    client_id=connection.client.id,
                    status=connection.status,
                    updated_at=connection.updated_at,
                )
            )
        elif connection.updated_at >= link.updated_at:
            link.client_id = connection.client.id
            link.status = connection.status
            link.updated_at = connection.updated_at


def handler(db: Database):
    async def handle(event: Event) -> None:
        if event.type.startswith("connection."):
            await on_connection_changed(db, event.data.connection)

    return handle
