"""The event contracts: one envelope and one class per event type, for every component.

Events are past-tense facts. A type gains fields over time and never loses or renames
one; a breaking change is a new type. Consumers ignore types they do not know.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer

AUTH_STREAM = "auth.events"
CONNECTIONS_STREAM = "connections.events"
ACTIVITIES_STREAM = "activities.events"


def format_timestamp(value: dt.datetime) -> str:
    """ISO 8601 in UTC with a `Z` suffix, millisecond precision, as API.md requires."""
    if value.tzinfo is not dt.UTC:
        value = value.astimezone(dt.UTC)
    # isoformat is C code; strftime was a tenth of a list request's CPU.
    return value.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def _as_sent(value: dt.datetime) -> dt.datetime:
    """Keep what the wire keeps (UTC, milliseconds), so an event equals its parsed JSON."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def _now() -> dt.datetime:
    return _as_sent(dt.datetime.now(dt.UTC))


Timestamp = Annotated[
    dt.datetime, AfterValidator(_as_sent), PlainSerializer(format_timestamp, return_type=str)
]
Role = Literal["professional", "client"]


class _Model(BaseModel):
    # Producers may add fields before consumers know them: keep them, never fail on them.
    model_config = ConfigDict(extra="allow", frozen=True)


class UserData(_Model):
    id: int
    name: str
    email: str
    role: Role
    created_at: Timestamp
    # Added in version 3: whether the owner proved the address (a link or code by mail).
    email_verified: bool = False
    # Added in version 3: false for events of before (and at sign-up).
    mfa_enabled: bool = False


class Party(_Model):
    """One side of a connection; `id`/`name` are null for an email invite not yet bound."""

    id: int | None
    name: str | None
    email: str


class ConnectionData(_Model):
    id: int
    status: Literal["pending", "accepted", "rejected", "removed"]
    initiated_by: Role
    professional: Party
    client: Party
    created_at: Timestamp
    updated_at: Timestamp


class InviteCounts(_Model):
    pending: int = 0
    accepted: int = 0
    declined: int = 0


class ActivitySummary(_Model):
    """An activity as embedded in an invite (no invite counts)."""

    id: int
    professional_id: int
    title: str
    description: str
    starts_at: Timestamp | None
    capacity: int | None
    created_at: Timestamp
    # Version 3 (scheduling); defaults are what an activity of before was.
    duration_minutes: int = 60
    waitlist: bool = False
    places_left: int | None = None  # capacity - accepted; null without a capacity
    status: Literal["scheduled", "cancelled"] = "scheduled"


class ActivityData(ActivitySummary):
    invites: InviteCounts


InviteStatus = Literal["pending", "accepted", "declined", "cancelled", "waitlisted", "withdrawn"]


class InviteData(_Model):
    id: int
    status: InviteStatus
    client_id: int
    activity: ActivitySummary
    created_at: Timestamp
    updated_at: Timestamp
    # While waitlisted: 1 for the next to get a place. Left out otherwise.
    waitlist_position: int | None = Field(default=None, exclude_if=lambda value: value is None)


class UserPayload(_Model):
    user: UserData


class ConnectionPayload(_Model):
    connection: ConnectionData


class InvitePayload(_Model):
    invite: InviteData


class ActivityPayload(_Model):
    activity: ActivityData


class Event(_Model):
    """The envelope every event travels in."""

    stream: ClassVar[str] = ""

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    type: str
    occurred_at: Timestamp = Field(default_factory=_now)
    producer: str
    version: int = 1
    data: Any
    # Who is notified of this fact (API.md's notification table); empty when nobody is.
    recipient_ids: list[int] = Field(default_factory=list)
    # For a consequence another service drew from an event (a removal's cancelled invites):
    # that event's id, so the notifier can put it right after its cause (see CASCADES).
    caused_by: uuid.UUID | None = None

    def to_json(self) -> bytes:
        # An event that caused by nothing is written as before the field existed.
        exclude = {"caused_by"} if self.caused_by is None else None
        return self.model_dump_json(exclude=exclude).encode()


class UserRegistered(Event):
    stream: ClassVar[str] = AUTH_STREAM
    type: Literal["user.registered"] = "user.registered"
    producer: str = "auth"
    data: UserPayload


class UserEmailVerified(Event):
    """The user proved they own their address (it carries the user as they are now)."""

    stream: ClassVar[str] = AUTH_STREAM
    type: Literal["user.email_verified"] = "user.email_verified"
    producer: str = "auth"
    data: UserPayload


class _ConnectionEvent(Event):
    stream: ClassVar[str] = CONNECTIONS_STREAM
    producer: str = "connections"
    data: ConnectionPayload


class ConnectionRequested(_ConnectionEvent):
    type: Literal["connection.requested"] = "connection.requested"


class ConnectionInvited(_ConnectionEvent):
    type: Literal["connection.invited"] = "connection.invited"


class ConnectionAccepted(_ConnectionEvent):
    type: Literal["connection.accepted"] = "connection.accepted"


class ConnectionRejected(_ConnectionEvent):
    type: Literal["connection.rejected"] = "connection.rejected"


class ConnectionRemoved(_ConnectionEvent):
    type: Literal["connection.removed"] = "connection.removed"


class _ActivityEvent(Event):
    stream: ClassVar[str] = ACTIVITIES_STREAM
    producer: str = "activities"


class ActivityCreated(_ActivityEvent):
    type: Literal["activity.created"] = "activity.created"
    data: ActivityPayload


class ActivityCancelled(_ActivityEvent):
    type: Literal["activity.cancelled"] = "activity.cancelled"
    data: ActivityPayload


class ActivityInvited(_ActivityEvent):
    type: Literal["activity.invited"] = "activity.invited"
    data: InvitePayload


class ActivityInviteAccepted(_ActivityEvent):
    type: Literal["activity.invite_accepted"] = "activity.invite_accepted"
    data: InvitePayload


class ActivityInviteDeclined(_ActivityEvent):
    type: Literal["activity.invite_declined"] = "activity.invite_declined"
    data: InvitePayload


class ActivityInviteCancelled(_ActivityEvent):
    type: Literal["activity.invite_cancelled"] = "activity.invite_cancelled"
    data: InvitePayload


class ActivityUpdated(_ActivityEvent):
    """The owner changed the activity (PATCH); to every client with a pending, accepted or
    waitlisted invite."""

    type: Literal["activity.updated"] = "activity.updated"
    data: ActivityPayload


class ActivityInviteWithdrawn(_ActivityEvent):
    """A client withdrew an accepted or waitlisted invite; to the professional."""

    type: Literal["activity.invite_withdrawn"] = "activity.invite_withdrawn"
    data: InvitePayload


class ActivityInvitePromoted(_ActivityEvent):
    """A place freed and the oldest waitlisted invite took it; to the client and the
    professional."""

    type: Literal["activity.invite_promoted"] = "activity.invite_promoted"
    data: InvitePayload


class ActivityReminder(_ActivityEvent):
    """REMINDER_MINUTES before the start; to the professional and every accepted client."""

    type: Literal["activity.reminder"] = "activity.reminder"
    data: ActivityPayload


class RemovalAppliedData(_Model):
    connection_id: int
    invite_ids: list[int]  # the invites it cancelled (none, often)


class RemovalAppliedPayload(_Model):
    removal: RemovalAppliedData


class ConnectionRemovalApplied(_ActivityEvent):
    """Activities has applied a `connection.removed` (its `caused_by`): every event that
    removal caused here (`activity.invite_cancelled`, each with the same `caused_by`) is
    before this one on activities.events. Notifies nobody; the notifier holds the client's
    later notifications until it comes, so the cancellations keep their place."""

    type: Literal["activity.connection_removal_applied"] = "activity.connection_removal_applied"
    data: RemovalAppliedPayload


# The base of every `connection.*` event (they all carry a ConnectionPayload), and the
# types themselves, for consumers that treat them alike.
ConnectionEvent = _ConnectionEvent
CONNECTION_EVENTS: tuple[type[ConnectionEvent], ...] = (
    ConnectionRequested,
    ConnectionInvited,
    ConnectionAccepted,
    ConnectionRejected,
    ConnectionRemoved,
)

EVENT_TYPES: dict[str, type[Event]] = {
    cls.model_fields["type"].default: cls
    for cls in (
        UserRegistered,
        UserEmailVerified,
        ConnectionRequested,
        ConnectionInvited,
        ConnectionAccepted,
        ConnectionRejected,
        ConnectionRemoved,
        ActivityCreated,
        ActivityCancelled,
        ActivityInvited,
        ActivityInviteAccepted,
        ActivityInviteDeclined,
        ActivityInviteCancelled,
        ConnectionRemovalApplied,
        ActivityUpdated,
        ActivityInviteWithdrawn,
        ActivityInvitePromoted,
        ActivityReminder,
    )
}

# Events another service cascades, each with the event that service publishes once it has
# applied one (after what it caused): the cause type -> (the completion type, who the
# consequences may notify). The notifier keeps those users' later notifications behind the
# consequences, whenever the cascading service gets to them.
CASCADES: dict[type[Event], tuple[type[Event], Callable[[Any], list[int]]]] = {
    ConnectionRemoved: (
        ConnectionRemovalApplied,
        lambda event: [event.data.connection.client.id] if event.data.connection.client.id else [],
    ),
}


def parse_event(raw: bytes | str) -> Event:
    """Validate an envelope, and its data too when the type is known."""
    envelope = Event.model_validate_json(raw)
    cls = EVENT_TYPES.get(envelope.type)
    return cls.model_validate_json(raw) if cls else envelope


_T0 = "2026-11-24T07:00:00.000Z"
_ACTIVITY = {
    "id": 3,
    "professional_id": 1,
    "title": "Morning Workout",
    "description": "Stretching in the park",
    "starts_at": None,
    "capacity": 8,
    "created_at": _T0,
    "duration_minutes": 60,
    "waitlist": True,
    "places_left": 6,
    "status": "scheduled",
}
_INVITE = {
    "id": 9,
    "status": "pending",
    "client_id": 2,
    "activity": _ACTIVITY,
    "created_at": _T0,
    "updated_at": _T0,
}
_CONNECTION = {
    "id": 7,
    "status": "pending",
    "initiated_by": "client",
    "professional": {"id": 1, "name": "Dr Ada", "email": "ada@example.com"},
    "client": {"id": 2, "name": "Bob", "email": "bob@example.com"},
    "created_at": _T0,
    "updated_at": _T0,
}

# One example `data` per type: documentation, and a test validates each against its class.
EXAMPLES: dict[str, dict[str, Any]] = {
    "user.registered": {
        "user": {
            "id": 2,
            "name": "Bob",
            "email": "bob@example.com",
            "role": "client",
            "created_at": _T0,
            "email_verified": False,
            "mfa_enabled": False,
        }
    },
    "user.email_verified": {
        "user": {
            "id": 2,
            "name": "Bob",
            "email": "bob@example.com",
            "role": "client",
            "created_at": _T0,
            "email_verified": True,
            "mfa_enabled": False,
        }
    },
    "connection.requested": {"connection": _CONNECTION},
    "connection.invited": {
        "connection": {
            **_CONNECTION,
            "initiated_by": "professional",
            "client": {"id": None, "name": None, "email": "new@example.com"},
        }
    },
    "connection.accepted": {"connection": {**_CONNECTION, "status": "accepted"}},
    "connection.rejected": {"connection": {**_CONNECTION, "status": "rejected"}},
    "connection.removed": {"connection": {**_CONNECTION, "status": "removed"}},
    "activity.created": {"activity": {**_ACTIVITY, "invites": {"pending": 0}}},
    "activity.cancelled": {"activity": {**_ACTIVITY, "invites": {"pending": 1, "accepted": 2}}},
    "activity.invited": {"invite": _INVITE},
    "activity.invite_accepted": {"invite": {**_INVITE, "status": "accepted"}},
    "activity.invite_declined": {"invite": {**_INVITE, "status": "declined"}},
    "activity.invite_cancelled": {"invite": {**_INVITE, "status": "cancelled"}},
    "activity.connection_removal_applied": {"removal": {"connection_id": 7, "invite_ids": [9]}},
    "activity.updated": {
        "activity": {
            **_ACTIVITY,
            "starts_at": "2026-12-01T08:30:00.000Z",
            "invites": {"pending": 1, "accepted": 2},
        }
    },
    "activity.invite_withdrawn": {"invite": {**_INVITE, "status": "withdrawn"}},
    "activity.invite_promoted": {"invite": {**_INVITE, "status": "accepted"}},
    "activity.reminder": {
        "activity": {
            **_ACTIVITY,
            "starts_at": "2026-12-01T08:30:00.000Z",
            "invites": {"pending": 1, "accepted": 2},
        }
    },
}
