"""The event contracts: examples, JSON round trips, forward compatibility, timestamps."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid

import pytest
from pydantic import ValidationError

from services.common.events import (
    ACTIVITIES_STREAM,
    AUTH_STREAM,
    CONNECTIONS_STREAM,
    EVENT_TYPES,
    EXAMPLES,
    Event,
    UserData,
    UserPayload,
    UserRegistered,
    format_timestamp,
    parse_event,
)

from .conftest import user_event

ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def test_every_type_has_an_example_and_a_stream() -> None:
    assert set(EXAMPLES) == set(EVENT_TYPES)
    streams = {"user": AUTH_STREAM, "connection": CONNECTIONS_STREAM, "activity": ACTIVITIES_STREAM}
    for name, cls in EVENT_TYPES.items():
        assert cls.model_fields["type"].default == name
        assert cls.stream == streams[name.split(".")[0]]


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_validates_and_round_trips(name: str) -> None:
    cls = EVENT_TYPES[name]
    event = cls(data=EXAMPLES[name], recipient_ids=[1, 2])
    assert event.type == name
    assert event.producer == cls.stream.split(".")[0]

    parsed = parse_event(event.to_json())
    assert type(parsed) is cls
    assert parsed == event


def test_round_trip_keeps_a_fresh_event_equal() -> None:
    # Fresh timestamps carry microseconds; the wire keeps milliseconds.
    created = dt.datetime.now(dt.UTC).replace(microsecond=123456)
    user = UserData(
        id=7, name="Ada", email="ada@example.com", role="professional", created_at=created
    )
    event = UserRegistered(data=UserPayload(user=user))
    assert parse_event(event.to_json()) == event
    assert parse_event(event.to_json().decode()) == event  # str works too


def test_known_type_with_bad_data_is_rejected() -> None:
    raw = user_event(1).model_dump(mode="json")
    raw["data"]["user"]["role"] = "admin"
    with pytest.raises(ValidationError):
        parse_event(json.dumps(raw))
    with pytest.raises(ValidationError):
        parse_event(json.dumps({"type": "x.y"}))  # the envelope is still required


def test_unknown_type_parses_as_the_generic_envelope() -> None:
    raw = {
        "event_id": str(uuid.uuid4()),
        "type": "billing.invoiced",
        "occurred_at": "2026-11-24T07:00:00.000Z",
        "producer": "billing",
        "version": 3,
        "data": {"invoice": {"id": 1, "total": "9.99"}},
        "recipient_ids": [5],
        "trace": "abc",
    }
    event = parse_event(json.dumps(raw))
    assert type(event) is Event
    assert event.type == "billing.invoiced"
    assert event.data == {"invoice": {"id": 1, "total": "9.99"}}
    assert event.recipient_ids == [5]
    assert event.model_extra == {"trace": "abc"}
    assert json.loads(event.to_json()) == raw  # forwarded unchanged


def test_unknown_fields_of_a_known_type_are_kept() -> None:
    raw = json.loads(user_event(1).to_json())  # the wire form
    raw["data"]["user"]["nickname"] = "bobby"
    raw["data"]["referrer"] = "ada"
    raw["priority"] = "high"
    event = parse_event(json.dumps(raw))
    assert type(event) is UserRegistered
    assert event.data.user.model_extra == {"nickname": "bobby"}
    assert event.model_extra == {"priority": "high"}
    assert json.loads(event.to_json()) == raw
    assert event.recipient_ids == []


def test_timestamps_are_iso_8601_utc_with_z() -> None:
    local = dt.timezone(dt.timedelta(hours=2))
    at = dt.datetime(2026, 11, 24, 9, 30, 15, 987654, tzinfo=local)
    assert format_timestamp(at) == "2026-11-24T07:30:15.987Z"
    event = user_event(1, occurred_at=at)
    body = json.loads(event.to_json())
    assert body["occurred_at"] == "2026-11-24T07:30:15.987Z"
    assert body["data"]["user"]["created_at"] == "2026-11-24T07:00:00.000Z"
    assert ISO_Z.match(json.loads(user_event(2).to_json())["occurred_at"])
    parsed = parse_event(event.to_json())
    assert parsed.occurred_at.utcoffset() == dt.timedelta(0)
    assert parsed.occurred_at == at.replace(microsecond=987000)


def test_events_are_immutable() -> None:
    event = user_event(1)
    with pytest.raises(ValidationError):
        event.type = "other"  # type: ignore[misc]
