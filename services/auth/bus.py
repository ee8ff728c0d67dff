"""Auth's subscribers: connection events keep the local copy behind the directory rule."""

from __future__ import annotations

from sqlalchemy.orm import Session

from services.common.consumer import UnitOfWork, Units
from services.common.copies import apply_connection
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


def handler(db: Database) -> Units:
    return Units(db, dict.fromkeys(CONNECTION_EVENTS, on_connection_event))
