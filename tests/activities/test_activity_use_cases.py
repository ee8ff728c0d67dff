"""Activities' use cases and connection handler in-process, on a migrated SQLite database."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable

import pytest
from sqlalchemy import func, select

from services.activities.service import (
    ActivitiesContext,
    NotConnected,
    create_activity,
    invite,
    on_connection_changed,
    on_connections_changed,
)
from services.activities.tables import Invite, OutboxEvent
from services.common.consumer import CopyBehind
from services.common.db import Database
from services.common.events import (
    ConnectionAccepted,
    ConnectionData,
    ConnectionEvent,
    ConnectionPayload,
    ConnectionRejected,
    ConnectionRemoved,
    ConnectionRequested,
    Party,
)
from services.common.tokens import Identity

PRO, CLIENT = 1, 2
T0 = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)


def context(db: Database, *, current: bool = True) -> ActivitiesContext:
    async def catch_up(about: object = None) -> bool:  # the barrier, as the test wants it
        return current

    return ActivitiesContext(db=db, catch_up=catch_up)


def connection(conn_id: int, status: str, seconds: int) -> ConnectionData:
    return ConnectionData(
        id=conn_id,
        status=status,
        initiated_by="client",
        professional=Party(id=PRO, name="Dr Ada", email="ada@example.com"),
        client=Party(id=CLIENT, name="Bob", email="bob@example.com"),
        created_at=T0,
        updated_at=T0 + dt.timedelta(seconds=seconds),
    )


PRO_ID = Identity(user_id=PRO, role="professional", jti="j", sid="s", expires_at=0)


EVENT_OF_STATUS: dict[str, type[ConnectionEvent]] = {
    "pending": ConnectionRequested,
    "accepted": ConnectionAccepted,
    "rejected": ConnectionRejected,
    "removed": ConnectionRemoved,
}


def event_of(change: ConnectionData) -> ConnectionEvent:
    return EVENT_OF_STATUS[change.status](data=ConnectionPayload(connection=change))


async def apply(db: Database, *changes: ConnectionData) -> None:
    for change in changes:
        await db.write(on_connection_changed(event_of(change)))


async def new_invite(db: Database, *, current: bool = True) -> int:
    activity = await create_activity(
        context(db),
        identity=PRO_ID,
        title="Group",
        description="",
        starts_at=None,
        capacity=None,
    )
    made = await invite(
        context(db, current=current), identity=PRO_ID, activity_id=activity.id, client_id=CLIENT
    )
    return made.id


async def status_of(db: Database, invite_id: int) -> str:
    return await db.query(lambda s: s.scalar(select(Invite.status).where(Invite.id == invite_id)))


async def events_of(db: Database, kind: str) -> int:
    return await db.query(lambda s: s.scalar(select(func.count()).where(OutboxEvent.type == kind)))


async def test_invite_on_an_unconfirmed_copy_is_503_not_a_refusal(db: Database) -> None:
    with pytest.raises(CopyBehind):
        await new_invite(db, current=False)  # no connection in the copy, and not current
    await apply(db, connection(7, "accepted", 1))
    with pytest.raises(CopyBehind):  # connected in the copy, but it may be stale
        await new_invite(db, current=False)
    assert await events_of(db, "activity.invited") == 0


async def test_invite_needs_an_accepted_connection(db: Database) -> None:
    with pytest.raises(NotConnected):
        await new_invite(db)
    await apply(db, connection(7, "pending", 1))
    with pytest.raises(NotConnected):
        await new_invite(db)
    await apply(db, connection(7, "accepted", 2))
    assert await status_of(db, await new_invite(db)) == "pending"


async def test_a_late_removal_of_an_older_connection_spares_the_newer_ones_invite(
    db: Database,
) -> None:
    # Connection 7 accepted then removed; connection 8 of the same pair accepted later.
    # The removal of 7 reaches activities only after 8's accept and the new invite.
    await apply(db, connection(7, "accepted", 1), connection(8, "accepted", 5))
    newer = await new_invite(db)
    await apply(db, connection(7, "removed", 3))
    assert await status_of(db, newer) == "pending"
    assert await events_of(db, "activity.invite_cancelled") == 0


async def test_removing_the_connection_cancels_its_pending_invites_once(db: Database) -> None:
    await apply(db, connection(7, "accepted", 1))
    pending = await new_invite(db)
    removal = connection(7, "removed", 2)
    await apply(db, removal, removal)  # delivered twice
    await apply(db, connection(7, "accepted", 1))  # an older state arriving late
    assert await status_of(db, pending) == "cancelled"
    assert await events_of(db, "activity.invite_cancelled") == 1


@pytest.mark.parametrize("order", [lambda xs: xs, lambda xs: list(reversed(xs))])
async def test_the_copy_ends_in_the_newest_state_whatever_the_order(
    db: Database, order: Callable[[list[ConnectionData]], list[ConnectionData]]
) -> None:
    changes = [connection(7, "pending", 1), connection(7, "accepted", 2)]
    await apply(db, *order(changes))
    assert await status_of(db, await new_invite(db)) == "pending"


async def test_a_removal_applied_with_the_pairs_next_connection_still_cancels_its_invites(
    db: Database,
) -> None:
    """A removal that reaches activities in one batch with (or after) the pair's next
    connection cancels the invites made under the removed one, and only those."""

    def at(when: dt.datetime, conn_id: int, status: str) -> ConnectionData:
        return connection(conn_id, status, 0).model_copy(update={"updated_at": when})

    await apply(db, connection(7, "accepted", 1))
    old = await new_invite(db)
    removed_at = dt.datetime.now(dt.UTC)  # the removal answered after the old invite
    await asyncio.sleep(0.01)
    # Connection 7 removed, 8 requested and accepted since: all in one batch.
    await db.write(
        on_connections_changed(
            [
                event_of(at(removed_at, 7, "removed")),
                event_of(at(removed_at, 8, "pending")),
                event_of(at(dt.datetime.now(dt.UTC), 8, "accepted")),
            ]
        )
    )
    newer = await new_invite(db)
    assert await status_of(db, old) == "cancelled"
    assert await status_of(db, newer) == "pending"
    assert await events_of(db, "activity.invite_cancelled") == 1
