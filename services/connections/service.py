"""Connections use cases: request, invite (also by email), respond, list, remove. No HTTP."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy.exc
from sqlalchemy import Select, bindparam, select, text
from sqlalchemy.orm import Session, aliased

from services.common.consumer import CatchUp, CopyBehind
from services.common.db import Database, utcnow
from services.common.events import (
    ConnectionAccepted,
    ConnectionData,
    ConnectionInvited,
    ConnectionPayload,
    ConnectionRejected,
    ConnectionRemoved,
    ConnectionRequested,
    Event,
    Party,
    UserData,
    UserEmailVerified,
    UserRegistered,
    format_timestamp,
)
from services.common.mail import Mail, link, render, stage_mail
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
    catch_up: CatchUp
    # Where the links of invitation mails point (PUBLIC_URL).
    public_url: str = "http://127.0.0.1:8080"


Pro = aliased(UserCopy, name="pro")
Client = aliased(UserCopy, name="client")


def _party(user: UserCopy | None, *, fallback_id: int | None, email: str) -> Party:
    if user is None:
        return Party(id=fallback_id, name=None, email=email)
    return Party(id=user.id, name=user.name, email=user.email)


def masked_for_professional(initiated_by: str, accepted_at: object) -> bool:
    """Whether the professional sees the client only by the address typed: an invitation
    they sent that the client has not accepted (yet). Whether that address has an
    account, a verified one, or none, is the client's to reveal by accepting (no lookup
    oracle, API.md version 3)."""
    return initiated_by == "professional" and accepted_at is None


def view(
    row: Connection, pro: UserCopy | None, client: UserCopy | None, *, masked: bool = False
) -> ConnectionData:
    """The Connection object; `masked`: as the professional sees an unaccepted invitation."""
    client_party = _party(client, fallback_id=row.client_id, email=row.client_email)
    if masked:
        client_party = Party(id=None, name=None, email=row.client_email)
    return ConnectionData(
        id=row.id,
        status=row.status,
        initiated_by=row.initiated_by,
        professional=_party(pro, fallback_id=row.professional_id, email=pro.email if pro else ""),
        client=client_party,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def professional_view(
    row: Connection, pro: UserCopy | None, client: UserCopy | None
) -> ConnectionData:
    """The connection as its professional may see it (the answer to them, their events)."""
    return view(row, pro, client, masked=masked_for_professional(row.initiated_by, row.accepted_at))


def _with_parties(query: Select) -> Select:
    return query.outerjoin(Pro, Pro.id == Connection.professional_id).outerjoin(
        Client, Client.id == Connection.client_id
    )


def _load(session: Session, connection_id: int, *, lock: bool) -> tuple | None:
    query = _with_parties(select(Connection, Pro, Client)).where(Connection.id == connection_id)
    if lock:
        query = query.with_for_update(of=Connection)
    return session.execute(query).first()


_USER_COLUMNS = (UserCopy.id, UserCopy.name, UserCopy.email, UserCopy.role, UserCopy.email_verified)
# Read on every request, so built once and read without the ORM (see Database.fetch).
USER_LOOKUPS = {
    "id": select(*_USER_COLUMNS).where(UserCopy.id == bindparam("id")),
    "email": select(*_USER_COLUMNS).where(UserCopy.email == bindparam("email")),
}


async def _find_user(ctx: ConnectionsContext, by: str, value: object) -> UserCopy | None:
    """A user from the local copy; on a miss, wait for the copy to catch up and look again.

    A miss on a copy that could not be confirmed current is no answer: CopyBehind (503).
    """
    rows = await ctx.db.fetch(USER_LOOKUPS[by], **{by: value})
    if not rows:
        if not await ctx.catch_up(about=_registration(by, value)):
            raise CopyBehind(value)
        rows = await ctx.db.fetch(USER_LOOKUPS[by], **{by: value})
    return UserCopy(**dict(rows[0])) if rows else None


def _client_registration(event: Event) -> bool:
    return (
        isinstance(event, UserRegistered | UserEmailVerified) and event.data.user.role == "client"
    )


def _registration(by: str, value: object) -> Callable[[Event], bool]:
    """The sign-up, or the verified address, of the user looked up (by id or email)."""

    def about(event: Event) -> bool:
        return (
            isinstance(event, UserRegistered | UserEmailVerified)
            and getattr(event.data.user, by) == value
        )

    return about


async def _caller(ctx: ConnectionsContext, identity: Identity) -> UserCopy:
    me = await _find_user(ctx, "id", identity.user_id)
    if me is None:
        raise AccountNotReady(identity.user_id)
    return me


_EMAIL_LOCK_SPACE = 0x636F6E6E  # "conn": the key space of the per-email advisory locks


def _lock_email(session: Session, email: str) -> None:
    """Serialise an email invitation with the sign-up that may bind it (PostgreSQL).

    Without it, an invite that looked the address up just before its owner's copy landed
    and the binding that looked for waiting invites just before the invite committed both
    miss, and the invitation stays unbound for good. SQLite already serialises writers.
    """
    if session.bind.dialect.name != "postgresql":
        return
    key = zlib.crc32(email.encode())
    session.execute(
        text("SELECT pg_advisory_xact_lock(:space, :key)"),
        {"space": _EMAIL_LOCK_SPACE, "key": key - 2**32 if key >= 2**31 else key},
    )


def _payload(
    row: Connection, pro: UserCopy | None, client: UserCopy | None, *, to_professional: bool = False
) -> ConnectionPayload:
    """An event's data, as its recipient may see it."""
    if to_professional:
        return ConnectionPayload(connection=professional_view(row, pro, client))
    return ConnectionPayload(connection=view(row, pro, client))


def _invitation_mail(ctx: ConnectionsContext, pro: UserCopy, email: str) -> Mail:
    """The mail to an invited address with no account yet: who invites, and a sign-up link."""
    text, html = render(
        greeting="Hello,",
        paragraphs=[
            f"{pro.name} ({pro.email}) invited you to connect on HealthConnect, where "
            "professionals and their clients keep in touch and meet in group activities.",
            "Sign up as a client with this address and verify it to see the invitation "
            "and answer it.",
        ],
        action=("Sign up", link(ctx.public_url, "signup", email)),
        footer="If you do not know this person, ignore this message: nothing happens "
        "unless you sign up.",
    )
    subject = f"{pro.name} invited you to HealthConnect"
    return Mail(to=email, subject=subject, text=text, html=html)


async def _insert(
    ctx: ConnectionsContext,
    row: Connection,
    pro: UserCopy,
    client: UserCopy | None,
    event_cls: type[ConnectionRequested | ConnectionInvited],
    recipients: list[int],
) -> ConnectionData:

    def insert(session: Session) -> ConnectionData:
        nonlocal client, recipients
        _lock_email(session, row.client_email)
        unknown_address = False
        if row.client_id is None:
            # The addressee may have signed up (or verified) since the lookup: bind to
            # them now, if their address is verified.
            found = session.scalar(select(UserCopy).where(UserCopy.email == row.client_email))
            if found is not None and found.role != "client":
                raise NotAClient(row.client_email)
            if found is not None and found.email_verified:
                client = found
                row.client_id = found.id
                recipients = [found.id]
            unknown_address = found is None
        open_pair = session.scalar(
            select(Connection.id).where(
                Connection.professional_id == row.professional_id,
                Connection.client_email == row.client_email,
                Connection.status.in_(OPEN),
            )
        )
        if open_pair:
            raise ConnectionExists(open_pair)
        session.add(row)
        session.flush()
        # The event goes to the client (who may see themself); the answer to its initiator.
        stage(
            session,
            event_cls(
                data=ConnectionPayload(connection=view(row, pro, client)),
                recipient_ids=recipients,
            ),
        )
        if unknown_address and event_cls is ConnectionInvited:
            stage_mail(session, _invitation_mail(ctx, pro, row.client_email))
        if row.initiated_by == "professional":
            return professional_view(row, pro, client)
        return view(row, pro, client)

    try:
        return await ctx.db.write(insert)
    except sqlalchemy.exc.IntegrityError as exc:  # a concurrent request won the race
        raise ConnectionExists(row.professional_id) from exc


async def request_pro(
    ctx: ConnectionsContext, *, identity: Identity, professional_id: int
) -> ConnectionData:
    me = await _caller(ctx, identity)
    pro = await _find_user(ctx, "id", professional_id)
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
    """Invite by email. It binds to a client account only once that address is verified
    (at once if it already is, else when its owner verifies it); an address with no
    account gets an invitation mail with a sign-up link.

    No lookup oracle: the answer (status, every field, the client shown only as the
    address typed) and the work done are the same whether the address has no account,
    an unverified one or a verified client's; a professional's address is `not_a_client`.
    """
    me = await _caller(ctx, identity)
    # Always wait for the copy (a hit does not skip it), so the time taken is the same
    # whatever the copy holds for this address.
    if not await ctx.catch_up(about=_registration("email", client_email)):
        raise CopyBehind(client_email)
    rows = await ctx.db.fetch(USER_LOOKUPS["email"], email=client_email)
    target = UserCopy(**dict(rows[0])) if rows else None
    if target is not None and target.role != "client":
        raise NotAClient(client_email)
    if target is not None and not target.email_verified:
        target = None  # not bound until its owner proves the address
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

    def answer(session: Session) -> ConnectionData:
        found = _load(session, connection_id, lock=True)
        if found is None or not _is_party(found[0], identity):
            raise ConnectionNotFound(connection_id)
        row, pro, client = found
        if _initiator(row) == identity.user_id:
            raise InitiatorCannotRespond(connection_id)
        if row.status != "pending":
            raise NotPending(connection_id)
        row.status = "accepted" if accept else "rejected"
        row.updated_at = utcnow()
        if accept:
            row.accepted_at = row.updated_at
        event_cls = ConnectionAccepted if accept else ConnectionRejected
        initiator = _initiator(row)
        # To the initiator: a professional whose invitation is rejected still sees the
        # client only as the address typed.
        payload = _payload(row, pro, client, to_professional=row.initiated_by == "professional")
        stage(session, event_cls(data=payload, recipient_ids=[initiator] if initiator else []))
        return view(row, pro, client)

    return await ctx.db.write(answer)


async def remove(ctx: ConnectionsContext, *, identity: Identity, connection_id: int) -> None:

    def close(session: Session) -> None:
        found = _load(session, connection_id, lock=True)
        if found is None or not _is_party(found[0], identity):
            raise ConnectionNotFound(connection_id)
        row, pro, client = found
        if row.status not in OPEN:
            raise AlreadyClosed(connection_id)
        row.status = "removed"
        row.updated_at = utcnow()
        other = row.client_id if identity.role == "professional" else row.professional_id
        payload = _payload(row, pro, client, to_professional=identity.role != "professional")
        stage(session, ConnectionRemoved(data=payload, recipient_ids=[other] if other else []))

    await ctx.db.write(close)


def _list_statement(side: str, with_status: bool) -> Select:
    query = _with_parties(
        select(
            Connection.id,
            Connection.status,
            Connection.initiated_by,
            Connection.professional_id,
            Connection.client_id,
            Connection.client_email,
            Connection.created_at,
            Connection.updated_at,
            Connection.accepted_at,
            Pro.name.label("pro_name"),
            Pro.email.label("pro_email"),
            Client.name.label("client_name"),
        )
    )
    owner = Connection.professional_id if side == "professional" else Connection.client_id
    query = query.where(owner == bindparam("uid"))
    if with_status:
        query = query.where(Connection.status == bindparam("status"))
    else:
        query = query.where(Connection.status != "removed")
    return (
        query.order_by(Connection.id.desc()).limit(bindparam("limit")).offset(bindparam("offset"))
    )


# Built once: the list is the hottest read, so it skips the ORM (see Database.fetch).
LIST_STATEMENTS = {
    (side, with_status): _list_statement(side, with_status)
    for side in ("professional", "client")
    for with_status in (False, True)
}


def connection_json(row: Mapping[str, Any], *, viewer_role: str = "client") -> dict[str, Any]:
    """The Connection object of API.md from one list row (same shape as `view`), as the
    viewer may see it (`masked_for_professional`)."""
    bound = row["client_id"] is not None
    masked = viewer_role == "professional" and masked_for_professional(
        row["initiated_by"], row["accepted_at"]
    )
    client = {
        "id": row["client_id"],
        "name": row["client_name"] if bound else None,
        "email": row["client_email"],
    }
    if masked:
        client = {"id": None, "name": None, "email": row["client_email"]}
    return {
        "id": row["id"],
        "status": row["status"],
        "initiated_by": row["initiated_by"],
        "professional": {
            "id": row["professional_id"],
            "name": row["pro_name"],
            "email": row["pro_email"] or "",
        },
        "client": client,
        "created_at": format_timestamp(row["created_at"]),
        "updated_at": format_timestamp(row["updated_at"]),
    }


async def list_connections(
    ctx: ConnectionsContext, *, identity: Identity, status: str | None, limit: int, offset: int
) -> list[dict[str, Any]]:
    # An email invite bound a moment ago shows up: by the caller's own verification for a
    # client; any client's sign-up or verification for a professional.
    about = _registration("id", identity.user_id)
    if identity.role != "client":
        about = _client_registration
    if not await ctx.catch_up(about=about):
        raise CopyBehind(identity.user_id)
    stmt = LIST_STATEMENTS[(identity.role, status is not None)]
    params: dict[str, Any] = {"uid": identity.user_id, "limit": limit, "offset": offset}
    if status is not None:
        params["status"] = status
    rows = await ctx.db.fetch(stmt, **params)
    return [connection_json(row, viewer_role=identity.role) for row in rows]


def on_user_registered(user: UserData) -> Callable[[Session], None]:
    """Copy the user. Returns the unit of work (the consumer may apply a batch in one
    transaction). A new account binds no invitation: its address is not verified yet."""

    def copy(session: Session) -> None:
        if user.role == "client":
            _lock_email(session, user.email)
        _copy_user(session, user)
        _bind_waiting_invitations(session, user)

    return copy


def on_user_email_verified(user: UserData) -> Callable[[Session], None]:
    """The user proved their address: a client takes over the email invitations waiting
    for it (`connection.invited` reaches them now, never before)."""

    def verified(session: Session) -> None:
        if user.role == "client":
            _lock_email(session, user.email)
        _copy_user(session, user)
        _bind_waiting_invitations(session, user)

    return verified


def _copy_user(session: Session, user: UserData) -> UserCopy:
    """Insert or update the copy; a verified address never goes back to unverified (an
    older event applied late)."""
    me = session.get(UserCopy, user.id)
    if me is None:
        me = UserCopy(
            id=user.id,
            name=user.name,
            email=user.email,
            role=user.role,
            email_verified=user.email_verified,
        )
        session.add(me)
        session.flush()
    elif user.email_verified and not me.email_verified:
        me.email_verified = True
        session.flush()
    return me


def _bind_waiting_invitations(session: Session, user: UserData) -> None:
    """Bind the pending email invitations of a verified client's address to them."""
    me = session.get(UserCopy, user.id)
    if user.role != "client" or me is None or not me.email_verified:
        return
    waiting = session.execute(
        _with_parties(select(Connection, Pro, Client))
        .where(
            Connection.client_email == user.email,
            Connection.client_id.is_(None),
            Connection.status == "pending",
        )
        .with_for_update(of=Connection)
    ).all()
    for row, pro, _ in waiting:
        row.client_id = user.id
        row.updated_at = utcnow()
        stage(
            session,
            ConnectionInvited(data=_payload(row, pro, me), recipient_ids=[user.id]),
        )
