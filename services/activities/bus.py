"""Activities' subscribers: `connection.*` keeps the copy of connections and cascades removals."""

from __future__ import annotations

from collections.abc import Sequence

from services.common.consumer import UnitOfWork, Units
from services.common.db import Database
from services.common.events import CONNECTION_EVENTS, CONNECTIONS_STREAM, ConnectionEvent

from .service import on_connection_changed, on_connections_changed

GROUP = "activities"
STREAMS = [CONNECTIONS_STREAM]


def on_connection_event(event: ConnectionEvent) -> UnitOfWork:
    return on_connection_changed(event)


def on_connection_events(events: Sequence[ConnectionEvent]) -> UnitOfWork:
    return on_connections_changed(events)


def handler(db: Database) -> Units:
    return Units(
        db, dict.fromkeys(CONNECTION_EVENTS, on_connection_event), batch=on_connection_events
    )
