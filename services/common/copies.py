"""Local copies of another service's records, kept from its events (newest state wins)."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import String, and_, bindparam, or_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from .db import UTCDateTime
from .events import ConnectionData
from .tables import Id


class ConnectionCopyMixin:
    """Columns of a service's copy of connections; each service maps it on its own Base."""

    connection_id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=False)
    professional_id: Mapped[int] = mapped_column(Id)
    client_id: Mapped[int | None] = mapped_column(Id, nullable=True)
    status: Mapped[str] = mapped_column(String(20))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


COLUMNS = ("connection_id", "professional_id", "client_id", "status", "updated_at")


@functools.cache  # one statement per table and database kind, compiled once
def _upsert(table: Any, dialect: str) -> Any:
    """INSERT, or UPDATE when newer, RETURNING a row only when something changed."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(table).values({name: bindparam(name) for name in COLUMNS})
    new, held = stmt.excluded, table.c
    return stmt.on_conflict_do_update(
        index_elements=[held.connection_id],
        set_={name: new[name] for name in COLUMNS[1:]},
        where=or_(
            new.updated_at > held.updated_at,
            and_(new.updated_at == held.updated_at, new.status != held.status),
        ),
    ).returning(held.connection_id)


def apply_connections(
    session: Session, model: type[ConnectionCopyMixin], connections: Sequence[ConnectionData]
) -> set[int]:
    """`apply_connection` for a batch, in one statement: the ids whose copy changed.

    Only the last state of each connection in the batch is kept (the stream orders one
    connection's events by commit, and the upsert keeps the newest anyway), since one
    statement may not touch a row twice. One round trip instead of one per event: on a
    busy process every statement waits its turn in the event loop.
    """
    latest: dict[int, ConnectionData] = {}
    for connection in connections:
        latest[connection.id] = connection
    if not latest:
        return set()
    table = model.__table__  # type: ignore[attr-defined]
    stmt = _upsert(table, session.get_bind().dialect.name)
    rows = session.execute(stmt, [_values(c) for c in latest.values()])
    return {row[0] for row in rows}


def _values(connection: ConnectionData) -> dict[str, Any]:
    return {
        "connection_id": connection.id,
        "professional_id": connection.professional.id or 0,
        "client_id": connection.client.id,
        "status": connection.status,
        "updated_at": connection.updated_at,
    }


def apply_connection(
    session: Session, model: type[ConnectionCopyMixin], connection: ConnectionData
) -> bool:
    """Store the connection's state unless the copy already holds it or a newer one.

    False for an older event or a replay of the state held (same time, same status), so
    redelivery and reordering leave the newest state and a consequence runs once. One
    upsert, built once per table: it locks the row until commit, so handlers queue.
    """
    table = model.__table__  # type: ignore[attr-defined]
    stmt = _upsert(table, session.get_bind().dialect.name)
    return session.execute(stmt, _values(connection)).first() is not None
