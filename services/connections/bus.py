"""Connections' subscribers: `user.registered` keeps the users copy and binds email invites."""

from __future__ import annotations

from services.common.consumer import Handler
from services.common.db import Database
from services.common.events import AUTH_STREAM, Event, UserRegistered

from .service import on_user_registered

GROUP = "connections"
STREAMS = [AUTH_STREAM]


def handler(db: Database) -> Handler:
    async def handle(event: Event) -> None:
        if isinstance(event, UserRegistered):
            await on_user_registered(db, event.data.user)

    return handle
