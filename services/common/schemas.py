"""Building blocks of request bodies, shared so every service validates the same way."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Callable
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


JOINERS = "\u200c\u200d"  # zero-width non-joiner and joiner: spelling, and emoji sequences
# What the JSON Schema `pattern` of a text field leaves out, besides the C0 controls: DEL
# and the C1 controls, every format (invisible or bidirectional) character of the Basic
# Multilingual Plane, the blank letters, and the line and paragraph separators. Keep in step with
# `_refused` (which also refuses format characters outside the BMP).
_PATTERN_EXCLUDED = (
    "\\u007f-\\u009f\\u00ad\\u034f\\u0600-\\u0605\\u061c\\u06dd\\u070f\\u0890-\\u0891"
    "\\u08e2\\u115f\\u1160\\u17b4\\u17b5\\u180e\\u200b-\\u200f\\u2028-\\u202e"
    "\\u2060-\\u2064\\u2066-\\u206f\\u3164\\ufeff\\uffa0\\ufff9-\\ufffb"
)
# Letters and marks that show nothing (Hangul fillers, the combining grapheme joiner,
# Khmer's inherent vowels): used for names that look blank.
BLANK_LETTERS = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u3164\uffa0")


def _joins(value: str, index: int) -> bool:
    """A joiner between two visible characters beyond the Latin scripts: Persian or Indic
    spelling, or an emoji sequence ("🏃\u200d♀"). Anywhere else it is only invisible."""
    if index == 0 or index == len(value) - 1:
        return False
    return all(
        ord(c) > 0x2FF and unicodedata.category(c)[0] in "LMS" and c not in JOINERS
        for c in (value[index - 1], value[index + 1])
    )


def _refused(value: str, *, multiline: bool) -> str | None:
    """Why `value` cannot be stored as text of ours, or None.

    Control characters break PostgreSQL text (NUL) and logs; invisible and bidirectional
    formatting characters (U+202E, U+2066, zero-width spaces, the BOM) let a name or
    title display as something other than what it is; U+2028/U+2029 break lines.
    """
    for index, char in enumerate(value):
        code = ord(char)
        if code < 0x20:
            if multiline and char in "\t\n\r":
                continue
            return "must not contain control characters"
        if 0x7F <= code <= 0x9F:
            return "must not contain control characters"
        if code < 0xAD:
            continue
        if char in BLANK_LETTERS:
            return "must not contain invisible or bidirectional formatting characters"
        category = unicodedata.category(char)
        if category in ("Zl", "Zp"):
            return "must not contain line or paragraph separators"
        if category == "Cf" and not (char in JOINERS and _joins(value, index)):
            return "must not contain invisible or bidirectional formatting characters"
    return None


def no_control_chars(value: str) -> str:
    """Multi-line text: newlines and tabs are kept; other controls and invisible or
    bidirectional formatting characters are refused."""
    if reason := _refused(value, multiline=True):
        raise ValueError(reason)
    return value


def single_line(value: str) -> str:
    """Single-line text (names, titles, emails): no control character at all either."""
    if reason := _refused(value, multiline=False):
        raise ValueError(reason)
    return value


# What trimming removes that is also a control character: at the very ends of a value it
# is taken as padding ("\t Alan Turing \n" is "Alan Turing"), as it always was.
EDGE_CONTROLS = "\t\n\x0b\x0c\r"


def text_pattern(*, multiline: bool, required: bool) -> str:
    """The JSON Schema pattern (ECMA 262) of what a `text()` field takes, as sent: spaces
    and ASCII white-space controls at either end, and between them only characters that
    `single_line` (or `no_control_chars`) takes; `required`: at least one character
    that is not white space."""
    controls = "\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f" if multiline else "\\u0000-\\u001f"
    refused = controls + _PATTERN_EXCLUDED
    edge = "[\\t-\\r ]*"
    if required:
        return f"^{edge}[^{refused}]*[^\\s{refused}][^{refused}]*{edge}$"
    return f"^{edge}[^{refused}]*{edge}$"


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
    """A trimmed string of `min_length` to `max_length` code points (what PostgreSQL's
    varchar(n) counts in a UTF8 database), refused if it holds any character that
    `single_line` (or, for multi-line text, `no_control_chars`) refuses. The characters are
    checked as sent (only ASCII white space at the ends is trimmed unchecked), as the
    OpenAPI `pattern` describes them."""
    check = no_control_chars if multiline else single_line
    pattern = text_pattern(multiline=multiline, required=min_length > 0)
    return Annotated[
        str,
        # Constraints first: they then apply to the str schema itself (trimmed, then
        # counted); put after a validator, they counted the untrimmed value.
        StringConstraints(strip_whitespace=True, min_length=min_length, max_length=max_length),
        BeforeValidator(_checked_str(check)),
        Field(json_schema_extra={"pattern": pattern}),
    ]


def _checked_str(check: Callable[[str], str]) -> Callable[[object], object]:
    def before(value: object) -> object:
        # Checked as sent, so a U+2028 or a BOM is refused at the ends too (trimming would
        # drop the one and keep the other); only ASCII white space there is padding.
        if isinstance(value, str):  # other types get the strict str's error
            check(value.strip(" " + EDGE_CONTROLS))
        return value

    return before


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


MAX_EMAIL = 254


def stored_length(value: str) -> str:
    # The address is stored lower-case, and lower-casing can lengthen it ("İ" is two code
    # points lower-cased): the limit holds for what is stored.
    if len(value.lower()) > MAX_EMAIL:
        raise ValueError(f"must be at most {MAX_EMAIL} characters")
    return value


Email = Annotated[
    EmailStr,
    BeforeValidator(plain_address),
    BeforeValidator(_checked_str(single_line)),  # as names: email-validator takes blank letters
    Field(max_length=MAX_EMAIL),
    AfterValidator(stored_length),
]
