"""Connections' subscribers: the users copy, and email invites bound once an address is verified."""

from __future__ import annotations

from services.common.consumer import UnitOfWork, Units
from services.common.db import Database
from services.common.events import AUTH_STREAM, UserEmailVerified, UserRegistered

from .service import on_user_email_verified, on_user_registered

GROUP = "connections"
STREAMS = [AUTH_STREAM]


def on_user_registered_event(event: UserRegistered) -> UnitOfWork:
    return on_user_registered(event.data.user)


def on_user_email_verified_event(event: UserEmailVerified) -> UnitOfWork:
    return on_user_email_verified(event.data.user)


def handler(db: Database) -> Units:
    return Units(
        db,
        {
            UserRegistered: on_user_registered_event,
            UserEmailVerified: on_user_email_verified_event,
        },
    )
