"""Building blocks of request bodies, shared so every service validates the same way."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
)

MAX_ID = 2**63 - 1


def no_control_chars(value: str) -> str:
    # NUL and friends break PostgreSQL text and logs; no field of ours needs them.
    if any((ord(c) < 32 and c not in "\t\n\r") or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters")
    return value


def single_line(value: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters")
    return value


def utc(value: dt.datetime) -> dt.datetime:
    """Naive timestamps are taken as UTC; aware ones are converted to it.

    Only years 1000-9999 in UTC: the wire format has four-digit years, and converting
    0001-01-01T00:00+01:00 or 9999-12-31T23:59-01:00 overflows (both were 500s).
    """
    try:
        value = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    except OverflowError as exc:
        raise ValueError("must be a date-time between the years 1000 and 9999") from exc
    if value.year < 1000:
        raise ValueError("must be a date-time between the years 1000 and 9999")
    return value


class RequestModel(BaseModel):
    """A request body: strict types (no "5" for 5), unknown fields ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")


Id = Annotated[int, Field(strict=True, gt=0, le=MAX_ID)]


def text(min_length: int, max_length: int, *, multiline: bool = False) -> object:
    return Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=min_length, max_length=max_length),
        AfterValidator(no_control_chars if multiline else single_line),
    ]


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}[T ]")


def iso_string(value: object) -> object:
    # Lax datetime parsing would also take numbers (even "1700000000") as epoch seconds;
    # we want ISO 8601 text with a date and a time.
    if not isinstance(value, str) or not _ISO_DATE.match(value):
        raise ValueError("must be an ISO 8601 date-time string")
    return value


Timestamp = Annotated[
    dt.datetime, BeforeValidator(iso_string), Field(strict=False), AfterValidator(utc)
]


def plain_address(value: object) -> object:
    # EmailStr also takes "Name <someone@example.com>" and keeps only the address, so a
    # sign-up or an invitation would silently store something other than what was sent.
    if isinstance(value, str) and ("<" in value or ">" in value):
        raise ValueError("must be a plain email address, without a display name")
    return value


Email = Annotated[EmailStr, BeforeValidator(plain_address), Field(max_length=254)]
