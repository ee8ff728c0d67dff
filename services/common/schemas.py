"""Building blocks of request bodies, shared so every service validates the same way."""

from __future__ import annotations

import datetime as dt
import functools
import re
import unicodedata
from collections.abc import Callable
from typing import Annotated, Any

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


# What trimming removes (Unicode White_Space, as pydantic's strip_whitespace reads it), as
# a JSON Schema (ECMA-262) character-class body.
STRIPPED = r"\t\n\u000b\u000c\r\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# The white space the validators take inside a value (the rest of STRIPPED is refused): it
# is padding too when it comes between the ASCII white space at an end and the text.
KEPT_SPACE = r"\u0020\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000"


def text_pattern(min_length: int, max_length: int, *, multiline: bool) -> str:
    """The JSON Schema pattern (ECMA 262) of what a `text()` field takes, as sent.

    ASCII white space at either end (padding, unchecked), then white space the validators
    take, then the kept text: only characters `single_line` (or `no_control_chars`) takes,
    `min_length` to `max_length` of them, starting and ending with one trimming keeps; then
    the same padding in reverse. The lengths are in the pattern, not in minLength/maxLength:
    those would count the padding, which is trimmed before the length is checked.
    Joiners are left out: the validators take them only between visible non-Latin
    characters, which a pattern without Unicode classes cannot say.
    """
    controls = "\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f" if multiline else "\\u0000-\\u001f"
    refused = controls + _PATTERN_EXCLUDED
    space = KEPT_SPACE + ("\\t\\n\\r" if multiline else "")
    edge = f"[^{refused}{STRIPPED}]"
    if max_length == 1:
        kept = edge
    elif min_length <= 1:
        kept = f"{edge}(?:[^{refused}]{{0,{max_length - 2}}}{edge})?"
    else:
        kept = f"{edge}[^{refused}]{{{min_length - 2},{max_length - 2}}}{edge}"
    kept = f"(?:{kept}[{space}]*)?" if min_length == 0 else f"{kept}[{space}]*"
    return f"^[\\t-\\r ]*[{space}]*{kept}[\\t-\\r ]*$"


def text(min_length: int, max_length: int, *, multiline: bool = False) -> object:
    """A trimmed string of `min_length` to `max_length` code points (what PostgreSQL's
    varchar(n) counts in a UTF8 database), refused if it holds any character that
    `single_line` (or, for multi-line text, `no_control_chars`) refuses. The characters are
    checked as sent (only ASCII white space at the ends is trimmed unchecked), as the
    OpenAPI `pattern` describes them (lengths included, counted once trimmed)."""
    check = no_control_chars if multiline else single_line
    allowed = (
        "no control characters"
        + (" but tabs and line breaks" if multiline else "")
        + ", no invisible or bidirectional formatting characters, no line separators"
    )
    return Annotated[
        str,
        # Constraints first: they then apply to the str schema itself (trimmed, then
        # counted); put after a validator, they counted the untrimmed value.
        StringConstraints(strip_whitespace=True, min_length=min_length, max_length=max_length),
        BeforeValidator(_checked_str(check)),
        WithJsonSchema(
            {
                "type": "string",
                "pattern": text_pattern(min_length, max_length, multiline=multiline),
                "description": f"{min_length}-{max_length} characters once surrounding "
                f"whitespace is trimmed; {allowed}.",
            }
        ),
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


# Documented as RFC 3339 with a four-digit year from 1000; the first and last day of that
# range are left out because an offset can carry them outside it.
TIMESTAMP_PATTERN = "^(?!1000-01-01|9999-12-31)[1-9][0-9]{3}-"
Timestamp = Annotated[
    dt.datetime,
    BeforeValidator(iso_string),
    Field(strict=False, json_schema_extra={"pattern": TIMESTAMP_PATTERN}),
    AfterValidator(utc),
]


def with_offset(value: dt.datetime) -> dt.datetime:
    # Without an offset the instant is ambiguous (it used to be taken as UTC silently):
    # a client in another time zone would get a session moved by hours.
    if value.tzinfo is None:
        raise ValueError("must include a UTC offset (Z or +hh:mm)")
    return value


# An instant: a date-time with an explicit UTC offset (`Z`, `+02:00` or `+0200`), in UTC.
OFFSET_PATTERN = TIMESTAMP_PATTERN + ".*(?:[Zz]|[+-][0-9]{2}:?[0-9]{2})$"
AwareTimestamp = Annotated[
    dt.datetime,
    BeforeValidator(iso_string),
    Field(strict=False, json_schema_extra={"pattern": OFFSET_PATTERN}),
    AfterValidator(with_offset),
    AfterValidator(utc),
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
    BeforeValidator(_checked_str(single_line)),  # as names: email-validator takes blank letters
    Field(max_length=MAX_EMAIL, json_schema_extra={"pattern": _special_use_pattern()}),
    AfterValidator(stored_length),
]


# -- passwords ----------------------------------------------------------------------------

PASSWORD_MIN, PASSWORD_MAX = 8, 128
# How much of zxcvbn's list of the most common passwords (from a published corpus of
# leaked passwords, most common first) is refused; those shorter than PASSWORD_MIN are
# refused by the length already.
COMMON_PASSWORDS_TOP = 10_000


@functools.cache
def common_passwords() -> frozenset[str]:
    """The most common passwords (lower-case) long enough to pass the length rule: the
    frequency list that the pinned zxcvbn package ships (loaded on first use; nothing is
    downloaded)."""
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    top = FREQUENCY_LISTS["passwords"][:COMMON_PASSWORDS_TOP]
    return frozenset(p for p in top if PASSWORD_MIN <= len(p) <= PASSWORD_MAX)


def not_common(value: str) -> str:
    if value.lower() in common_passwords():
        raise ValueError("is one of the most common passwords; choose another")
    return value


class _CommonPasswordsSchema:
    """The JSON Schema of a new password says which values are refused (`not` `enum`), so
    the OpenAPI document describes what validation accepts; built when first asked."""

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema = handler(core_schema)
        schema["not"] = {"enum": sorted(common_passwords())}
        schema["description"] = (
            f"{PASSWORD_MIN}-{PASSWORD_MAX} characters, and none of the "
            f"{COMMON_PASSWORDS_TOP:,} most common passwords (compared in lower case)."
        )
        return schema


# A password being set (sign-up, reset, change): its length, and not a common one.
NewPassword = Annotated[
    str,
    StringConstraints(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX),
    AfterValidator(not_common),
    _CommonPasswordsSchema(),
]
