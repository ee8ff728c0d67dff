"""Building blocks of request bodies, shared so every service validates the same way."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated

from email_validator import SPECIAL_USE_DOMAIN_NAMES
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    WithJsonSchema,
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


def whole_number(value: object) -> object:
    # JSON has one number type: to JSON Schema (and JavaScript) 5.0 is the integer 5, so it
    # is taken as 5; "5", true and 5.5 are still refused by the strict integer after this.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Id = Annotated[int, Field(strict=True, gt=0, le=MAX_ID), BeforeValidator(whole_number)]


# What the validators above refuse, and what stripping removes (Unicode White_Space), as
# JSON Schema (ECMA-262) character-class bodies: the OpenAPI `pattern` of a text field says
# exactly what is accepted. tests/common/test_schema_patterns.py checks them char by char.
REFUSED_SINGLE_LINE = r"\u0000-\u001f\u007f"
REFUSED_MULTILINE = r"\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f"
STRIPPED = r"\t\n\u000b\u000c\r\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


def text_pattern(min_length: int, max_length: int, *, multiline: bool) -> str:
    """Whitespace, then the kept text (no refused character, `min_length` to `max_length`
    long, starting and ending with a character stripping keeps), then whitespace.

    The lengths are in the pattern, not in minLength/maxLength: those would count the
    surrounding whitespace, which is trimmed before the length is checked.
    """
    refused = REFUSED_MULTILINE if multiline else REFUSED_SINGLE_LINE
    edge = f"[^{refused}{STRIPPED}]"
    if max_length == 1:
        kept = edge
    elif min_length <= 1:
        kept = f"{edge}([^{refused}]{{0,{max_length - 2}}}{edge})?"
    else:
        kept = f"{edge}[^{refused}]{{{min_length - 2},{max_length - 2}}}{edge}"
    if min_length == 0:
        kept = f"({kept})?"
    return f"^[{STRIPPED}]*{kept}[{STRIPPED}]*$"


def text(min_length: int, max_length: int, *, multiline: bool = False) -> object:
    allowed = "no control characters" + (" but tabs and line breaks" if multiline else "")
    return Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=min_length, max_length=max_length),
        AfterValidator(no_control_chars if multiline else single_line),
        WithJsonSchema(
            {
                "type": "string",
                "pattern": text_pattern(min_length, max_length, multiline=multiline),
                "description": f"{min_length}-{max_length} characters once surrounding "
                f"whitespace is trimmed; {allowed}.",
            }
        ),
    ]


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}[T ]")


def iso_string(value: object) -> object:
    # Lax datetime parsing would also take numbers (even "1700000000") as epoch seconds;
    # we want ISO 8601 text with a date and a time.
    if not isinstance(value, str) or not _ISO_DATE.match(value):
        raise ValueError("must be an ISO 8601 date-time string")
    return value


# Documented as RFC 3339 with a four-digit year from 1000; the first and last day of that
# range are left out because an offset can carry them outside it.
TIMESTAMP_PATTERN = "^(?!1000-01-01|9999-12-31)[1-9][0-9]{3}-"
Timestamp = Annotated[
    dt.datetime,
    BeforeValidator(iso_string),
    Field(strict=False, json_schema_extra={"pattern": TIMESTAMP_PATTERN}),
    AfterValidator(utc),
]


def plain_address(value: object) -> object:
    # EmailStr also takes "Name <someone@example.com>" and keeps only the address, so a
    # sign-up or an invitation would silently store something other than what was sent.
    if isinstance(value, str) and ("<" in value or ">" in value):
        raise ValueError("must be a plain email address, without a display name")
    return value


def _special_use_pattern() -> str:
    # email-validator refuses addresses at special-use domains (`x@y.test`); the JSON
    # Schema `email` format does not, so the pattern says it (any case, as DNS reads it).
    names = "|".join(
        "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in name)
        for name in SPECIAL_USE_DOMAIN_NAMES
    )
    return rf"^(?!.*[.@]({names})\.?$)"


Email = Annotated[
    EmailStr,
    BeforeValidator(plain_address),
    Field(max_length=254, json_schema_extra={"pattern": _special_use_pattern()}),
]
