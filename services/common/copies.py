"""Local copies of another service's records, kept from its events (newest state wins)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import String
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


def apply_connection(
    session: Session, model: type[ConnectionCopyMixin], connection: ConnectionData
) -> bool:
    """Store the connection's state unless the copy already holds it or a newer one.

    False for an older event or a replay of the state held (same time, same status), so
    redelivery and reordering leave the newest state and a consequence runs once.
    """
    copy = session.get(model, connection.id, with_for_update=True)
    if copy is not None and (
        connection.updated_at < copy.updated_at
        or (connection.updated_at == copy.updated_at and connection.status == copy.status)
    ):
        return False
    if copy is None:
        copy = model(connection_id=connection.id)
        session.add(copy)
    copy.professional_id = connection.professional.id or 0
    copy.client_id = connection.client.id
    copy.status = connection.status
    copy.updated_at = connection.updated_at
    return True
