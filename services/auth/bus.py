"""Auth's subscribers: connection events keep the local copy behind the directory rule."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from services.common.consumer import UnitOfWork, Units
from services.common.copies import apply_connection, apply_connections
from services.common.db import Database
from services.common.events import CONNECTION_EVENTS, CONNECTIONS_STREAM, ConnectionEvent

from .tables import ClientLink

GROUP = "auth"
STREAMS = [CONNECTIONS_STREAM]


def on_connection_event(event: ConnectionEvent) -> UnitOfWork:
    """Keep the copy of connections behind the directory rule (newest state wins)."""

    def apply(session: Session) -> None:
        apply_connection(session, ClientLink, event.data.connection)

    return apply


def on_connection_events(events: Sequence[ConnectionEvent]) -> UnitOfWork:
    """A batch in one statement (`apply_connections`)."""
    connections = [event.data.connection for event in events]

    def apply(session: Session) -> None:
        apply_connections(session, ClientLink, connections)

    return apply


def handler(db: Database) -> Units:
    return Units(
        db, dict.fromkeys(CONNECTION_EVENTS, on_connection_event), batch=on_connection_events
    )
