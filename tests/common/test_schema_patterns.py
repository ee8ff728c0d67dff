"""The OpenAPI patterns of text, email and timestamp fields agree with their validators."""

from __future__ import annotations

import re

import pytest
from pydantic import TypeAdapter, ValidationError

from services.common.schemas import Email, Timestamp, text

# Every character up to CJK punctuation, plus the special ones further up.
CHARACTERS = [chr(c) for c in range(0x3100)] + [
    chr(c) for c in (0xFEFF, 0xFFFD, 0xFFFF, 0x1F600, 0x10FFFF)
]


def _accepts(adapter: TypeAdapter, value: object) -> bool:
    try:
        adapter.validate_python(value)
    except ValidationError:
        return False
    return True


def _pattern(adapter: TypeAdapter) -> re.Pattern[str]:
    schema = adapter.json_schema()
    # JSON Schema patterns are searched, not matched whole; ours use \uXXXX, which
    # Python's `re` reads the same as ECMA-262.
    return re.compile(schema["pattern"])


@pytest.mark.parametrize(
    ("min_length", "multiline"), [(1, False), (0, False), (1, True), (0, True)]
)
def test_text_pattern_accepts_exactly_what_the_validator_accepts(
    min_length: int, multiline: bool
) -> None:
    adapter = TypeAdapter(text(min_length, 50, multiline=multiline))
    pattern = _pattern(adapter)
    for c in CHARACTERS:
        for value in (c, f"a{c}b", f"{c}a", f"a{c}", c * 3):
            documented = pattern.search(value) is not None
            assert documented == _accepts(adapter, value), (hex(ord(c)), value)
    assert pattern.search("") is not None or min_length > 0


@pytest.mark.parametrize(
    ("address", "accepted"),
    [
        ("someone@example.com", True),
        ("a.b+c@mail.example.org", True),
        ("x@testing.com", True),
        ("x@test.com", True),
        ("x@y.test", False),
        ("x@Y.TeSt", False),
        ("x@y.localhost", False),
        ("x@y.local", False),
        ("x@y.invalid", False),
        ("x@y.onion", False),
        ("x@in-addr.arpa", False),
    ],
)
def test_email_pattern_refuses_what_the_validator_refuses(address: str, accepted: bool) -> None:
    adapter = TypeAdapter(Email)
    assert _accepts(adapter, address) is accepted
    assert (_pattern(adapter).search(address) is not None) is accepted


@pytest.mark.parametrize(
    "value",
    [
        "1000-01-02T00:00:00Z",
        "2024-02-29T12:30:00.123Z",
        "2024-06-01T08:00:00+14:00",
        "9999-12-30T23:59:59-12:00",
        "1000-01-02T00:00:00+14:00",
    ],
)
def test_documented_timestamps_are_accepted(value: str) -> None:
    adapter = TypeAdapter(Timestamp)
    assert _pattern(adapter).search(value)
    assert _accepts(adapter, value)


@pytest.mark.parametrize(
    "value",
    ["0001-01-01T00:00:00Z", "0999-12-31T23:59:59Z", "1000-01-01T00:00:00+01:00",
     "9999-12-31T23:59:59-01:00"],
)  # fmt: skip
def test_timestamps_the_validator_refuses_are_not_documented(value: str) -> None:
    adapter = TypeAdapter(Timestamp)
    assert not _pattern(adapter).search(value)
    assert not _accepts(adapter, value)


@pytest.mark.parametrize(("min_length", "max_length"), [(0, 4), (1, 4), (1, 1), (3, 5)])
def test_text_pattern_counts_the_length_after_trimming(min_length: int, max_length: int) -> None:
    adapter = TypeAdapter(text(min_length, max_length))
    pattern = _pattern(adapter)
    for n in range(max_length + 3):
        for pad in ("", " ", "\t", "\u3000 \n"):
            for core in ("x" * n, "x " * (n // 2) + "x" * (n % 2)):
                value = f"{pad}{core}{pad}"
                documented = pattern.search(value) is not None
                assert documented == _accepts(adapter, value), (min_length, max_length, value)
