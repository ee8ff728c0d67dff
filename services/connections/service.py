"""Connections use cases: request, invite (also by email), respond, list, remove. No HTTP."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import sqlalchemy.exc
from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from services.common.db import Database, utcnow
from services.common.events import (
    ConnectionAccepted,
    ConnectionData,
    ConnectionInvited,
    ConnectionPayload,
    ConnectionRejected,
    ConnectionRemoved,
    ConnectionRequested,
    Party,
    UserData,
)
from services.common.outbox import stage
from services.common.tokens import Identity

from .tables import OPEN, Connection, UserCopy

STATUSES = ("pending", "accepted", "rejected", "removed")


class ConnectionsError(Exception):
    """Base of the connections service's domain errors."""


class ProfessionalNotFound(ConnectionsError):
    pass


class NotAClient(ConnectionsError):
    pass


class ConnectionExists(ConnectionsError):
    pass


class ConnectionNotFound(ConnectionsError):
    pass


class InitiatorCannotRespond(ConnectionsError):
    pass


class NotPending(ConnectionsError):
    pass


class AlreadyClosed(ConnectionsError):
    pass


class AccountNotReady(ConnectionsError):
    """The caller's own account has not reached this service's copy yet."""


@dataclass(slots=True)
class ConnectionsContext:
    db: Database
    # Waits until the users copy has applied every event already published.
    catch_up: Callable[[], Awaitable[bool]]


Pro = aliased(UserCopy, name="pro")
Client = aliased(UserCopy, name="client")


def _party(user: UserCopy | None, *, fallback_id: int | None, email: str) -> Party:
    if user is None:
        return Party(id=fallback_id, name=None, email=email)
    return Party(id=user.id, name=user.name, email=user.email)


def view(row: Connection, pro: UserCopy | None, client: UserCopy | None) -> ConnectionData:
    return ConnectionData(
        id=row.id,
        status=row.status,
        initiated_by=row.initiated_by,
        professional=_party(pro, fallback_id=row.professional_id, email=pro.email if pro else ""),
        client=_party(client, fallback_id=row.client_id, email=row.client_email),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _with_parties(query: Select) -> Select:
    return query.outerjoin(Pro, Pro.id == Connection.professional_id).outerjoin(
        Client, Client.id == Connection.client_id
    )


async def _load(session: AsyncSession, connection_id: int, *, lock: bool) -> tuple | None:
    query = _with_parties(select(Connection, Pro, Client)).where(Connection.id == connection_id)
    if lock:
        query = query.with_for_update(of=Connection)
    return (await session.execute(query)).first()


async def _find_user(ctx: ConnectionsContext, **where: object) -> UserCopy | None:
    """A user from the local copy; on a miss, wait for the copy to catch up and look again."""
    query = select(UserCopy).filter_by(**where)
    async with ctx.db.read() as session:
        user = await session.scalar(query)
    if user is None and await ctx.catch_up():
        async with ctx.db.read() as session:
            user = await session.scalar(query)
    return user


async def _caller(ctx: ConnectionsContext, identity: Identity) -> UserCopy:
    me = await _find_user(ctx, id=identity.user_id)
    if me is None:
        raise AccountNotReady(identity.user_id)
    return me


def _payload(row: Connection, pro: UserCopy | None, client: UserCopy | None) -> ConnectionPayload:
    return ConnectionPayload(connection=view(row, pro, client))


async def _insert(
    ctx: ConnectionsContext,
    row: Connection,
    pro: UserCopy,
    client: UserCopy | None,
    event_cls: type[ConnectionRequested | ConnectionInvited],
    recipients: list[int],
) -> ConnectionData:
    try:
        async with ctx.db.transaction() as session:
            open_pair = await session.scalar(
                select(Connection.id).where(
                    Connection.professional_id == row.professional_id,
                    Connection.client_email == row.client_email,
                    Connection.status.in_(OPEN),
                )
            )
            if open_pair:
                raise ConnectionExists(open_pair)
            session.add(row)
            await session.flush()
            stage(session, event_cls(data=_payload(row, pro, client), recipient_ids=recipients))
    except sqlalchemy.exc.IntegrityError as exc:  # a concurrent request won the race
        raise ConnectionExists(row.professional_id) from exc
    return view(row, pro, client)


async def request_pro(
    ctx: ConnectionsContext, *, identity: Identity, professional_id: int
) -> ConnectionData:
    me = await _caller(ctx, identity)
    pro = await _find_user(ctx, id=professional_id)
    if pro is None or pro.role != "professional":
        raise ProfessionalNotFound(professional_id)
    now = utcnow()
    row = Connection(
        professional_id=pro.id,
        client_id=me.id,
        client_email=me.email,
        status="pending",
        initiated_by="client",
        created_at=now,
        updated_at=now,
    )
    return await _insert(ctx, row, pro, me, ConnectionRequested, [pro.id])


async def invite_client(
    ctx: ConnectionsContext, *, identity: Identity, client_email: str
) -> ConnectionData:
    """Invite by email; an address with no account yet binds when its owner signs up.

    Answers the same for an existing client and for an unknown address, so the route
    never reveals whether a client account exists.
    """
    me = await _caller(ctx, identity)
    target = await _find_user(ctx, email=client_email)
    if target is not None and target.role != "client":
        raise NotAClient(client_email)
    now = utcnow()
    row = Connection(
        professional_id=me.id,
        client_id=target.id if target else None,
        client_email=client_email,
        status="pending",
        initiated_by="professional",
        created_at=now,
        updated_at=now,
    )
    return await _insert(ctx, row, me, target, ConnectionInvited, [target.id] if target else [])


def _initiator(row: Connection) -> int | None:
    return row.professional_id if row.initiated_by == "professional" else row.client_id


def _is_party(row: Connection, identity: Identity) -> bool:
    if identity.role == "professional":
        return row.professional_id == identity.user_id
    return row.client_id == identity.user_id


async def respond(
    ctx: ConnectionsContext, *, identity: Identity, connection_id: int, accept: bool
) -> ConnectionData:
    async with ctx.db.transaction() as session:
        found = await _load(session, connection_id, lock=True)
        if found is None or not _is_party(found[0], identity):
            raise ConnectionNotFound(connection_id)
        row, pro, client = found
        if _initiator(row) == identity.user_id:
            raise InitiatorCannotRespond(connection_id)
        if row.status != "pending":
            raise NotPending(connection_id)
        row.status = "accepted" if accept else "rejected"
        row.updated_at = utcnow()
        event_cls = ConnectionAccepted if accept else ConnectionRejected
        initiator = _initiator(row)
        stage(
            session,
            event_cls(
                data=_payload(row, pro, client), recipient_ids=[initiator] if initiator else []
            ),
        )
    return view(row, pro, client)


async def remove(ctx: ConnectionsContext, *, identity: Identity, connection_id: int) -> None:
    async with ctx.db.transaction() as session:
        found = await _load(session, connection_id, lock=True)
        if found is None or not _is_party(found[0], identity):
            raise ConnectionNotFound(connection_id)
        row, pro, client = found
        if row.status not in OPEN:
            raise AlreadyClosed(connection_id)
        row.status = "removed"
        row.updated_at = utcnow()
        other = row.client_id if identity.role == "professional" else row.professional_id
        stage(
            session,
            ConnectionRemoved(
                data=_payload(row, pro, client), recipient_ids=[other] if other else []
            ),
        )


async def list_connections(
    ctx: ConnectionsContext, *, identity: Identity, status: str | None, limit: int, offset: int
) -> list[ConnectionData]:
    await ctx.catch_up()  # an email invite bound by a sign-up a moment ago shows up
    query = _with_parties(select(Connection, Pro, Client))
    if identity.role == "professional":
        query = query.where(Connection.professional_id == identity.user_id)
    else:
        query = query.where(Connection.client_id == identity.user_id)
    if status:
        query = query.where(Connection.status == status)
    else:
        query = query.where(Connection.status != "removed")
    query = query.order_by(Connection.id.desc()).limit(limit).offset(offset)
    async with ctx.db.read() as session:
        rows = (await session.execute(query)).all()
    return [view(row, pro, client) for row, pro, client in rows]


async def on_user_registered(db: Database, user: UserData) -> None:
    """Copy the user; a new client takes over the email invitations waiting for them."""
    async with db.transaction() as session:
        if await session.get(UserCopy, user.id) is None:
            session.add(UserCopy(id=user.id, name=user.name, email=user.email, role=user.role))
            await session.flush()
        if user.role != "client":
            return
        waiting = (
            await session.execute(
                _with_parties(select(Connection, Pro, Client))
                .where(
                    Connection.client_email == user.email,
                    Connection.client_id.is_(None),
                    Connection.status == "pending",
                )
                .with_for_update(of=Connection)
            )
        ).all()
        me = await session.get(UserCopy, user.id)
        for row, pro, _ in waiting:
            row.client_id = user.id
            row.updated_at = utcnow()
            stage(
                session,
                ConnectionInvited(data=_payload(row, pro, me), recipient_ids=[user.id]),
            )
