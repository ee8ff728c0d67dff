"""The validators of ids, query integers and text, without a server."""

from __future__ import annotations

import re

import pytest
from aiohttp.test_utils import make_mocked_request
from pydantic import TypeAdapter, ValidationError

from services.common.problems import Problem
from services.common.schemas import (
    EDGE_CONTROLS,
    Email,
    RequestModel,
    no_control_chars,
    single_line,
    text,
    text_pattern,
)
from services.common.web import MAX_ID, ascii_int, path_id, query_int


class Body(RequestModel):
    name: text(1, 100)  # type: ignore[valid-type]
    description: text(0, 2000, multiline=True) = ""  # type: ignore[valid-type]
    email: Email = "a@example.com"


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("0", 0),
        ("7", 7),
        ("0042", 42),
        (str(MAX_ID), MAX_ID),
        ("", None),
        ("\u0661\u0660", None),  # Arabic-Indic: int() takes it
        ("\u00b9\u00b2", None),  # superscripts: isdigit() but not int()
        ("\uff11", None),  # fullwidth
        ("1_0", None),
        ("+1", None),
        ("-1", None),
        (" 1", None),
        ("1\n", None),
        ("1" * 4301, None),  # int() raises past 4,300 digits
        ("1" * 20, None),
    ],
)
def test_ascii_int(raw: str, value: int | None) -> None:
    assert ascii_int(raw, 19) == value


def _path(raw: str) -> int:
    request = make_mocked_request("DELETE", f"/x/{raw}", match_info={"id": raw})
    return path_id(request, code="thing_not_found")


def test_path_id_range() -> None:
    assert _path("1") == 1
    assert _path(str(MAX_ID)) == MAX_ID
    for raw in ("0", str(MAX_ID + 1), "9" * 19, "\u0661", "\u00b9", "1" * 4301, "abc"):
        with pytest.raises(Problem) as caught:
            _path(raw)
        assert (caught.value.status, caught.value.code) == (404, "thing_not_found")


def test_query_int() -> None:
    def limit(raw: str) -> int:
        request = make_mocked_request("GET", "/x?" + raw)
        return query_int(request, "limit", 50, 1, 200)

    assert limit("") == 50
    assert limit("limit=200") == 200
    for raw in ("limit=201", "limit=0", "limit=%D9%A1", "limit=1_0", "limit=%C2%B9", "limit="):
        with pytest.raises(Problem) as caught:
            limit(raw)
        assert caught.value.status == 400
        assert caught.value.errors == [
            {"field": "limit", "message": "must be an integer from 1 to 200"}
        ]


REFUSED = [
    *map(chr, range(0x20)),
    *map(chr, range(0x7F, 0xA0)),
    "\u00ad",
    "\u061c",
    "\u180e",
    *map(chr, range(0x200B, 0x2010)),
    "\u2028",
    "\u2029",
    *map(chr, range(0x202A, 0x202F)),
    *map(chr, range(0x2060, 0x2065)),
    *map(chr, range(0x2066, 0x206A)),
    "\ufeff",
    "\u3164",  # Hangul filler: a letter that shows nothing
    "\u115f",
    "\u034f",
    "\U000e0001",
    "\U000e0041",
]


@pytest.mark.parametrize("char", REFUSED)
def test_single_line_refuses(char: str) -> None:
    for value in (f"{char}ab", f"a{char}b", f"ab{char}"):
        with pytest.raises(ValueError, match="must not contain"):
            single_line(value)
        if char in EDGE_CONTROLS and value != f"a{char}b":
            # Tabs and newlines at the ends are trimmed, as they always were.
            assert Body.model_validate({"name": value}).name == "ab"
            continue
        with pytest.raises(ValidationError) as caught:
            Body.model_validate({"name": value})
        assert [e["loc"] for e in caught.value.errors()] == [("name",)]


@pytest.mark.parametrize("char", REFUSED)
def test_multi_line_refuses_all_but_newlines_and_tabs(char: str) -> None:
    value = f"a{char}b"
    if char in "\t\n\r":
        assert no_control_chars(value) == value
        return
    with pytest.raises(ValueError, match="must not contain"):
        no_control_chars(value)


@pytest.mark.parametrize(
    "value",
    [
        "Zoë",
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # a joiner inside a Persian word
        "\U0001f3c3\u200d\u2640\ufe0f",  # an emoji sequence
        "\U0001f469\U0001f3fd\u200d\u2695\ufe0f",
        "\u0915\u094d\u200d\u0937",  # a joiner after a virama
        "Ann\u00a0Lee",  # a no-break space is visible space
    ],
)
def test_ordinary_text_is_kept(value: str) -> None:
    assert single_line(value) == value
    assert Body.model_validate({"name": value}).name == value


def test_joiners_only_join() -> None:
    for value in ("a\u200db", "\u200d\U0001f3c3", "\U0001f3c3\u200d", "\u062e \u200c\u062e"):
        with pytest.raises(ValueError, match="invisible"):
            single_line(value)


def test_lengths_count_code_points_after_trimming() -> None:
    for char in ("a", "é", "😀"):
        assert Body.model_validate({"name": f" {char * 100} "}).name == char * 100
        with pytest.raises(ValidationError):
            Body.model_validate({"name": char * 101})
    with pytest.raises(ValidationError):
        Body.model_validate({"name": "   "})


@pytest.mark.parametrize("multiline", [False, True])
def test_the_openapi_pattern_agrees_with_the_validation(multiline: bool) -> None:
    """Every character of the Basic Multilingual Plane, inside a value and at either end:
    the schema's pattern matches exactly when the field takes the value as sent."""
    field = TypeAdapter(text(1, 100, multiline=multiline))
    pattern = re.compile(text_pattern(1, 100, multiline=multiline))
    disagree = []
    for code in range(0x10000):
        if 0xD800 <= code <= 0xDFFF:
            continue  # lone surrogates: no JSON body can carry one (a 400 before this)
        for value in (f"a{chr(code)}b", f"{chr(code)}ab", f"ab{chr(code)}", chr(code)):
            try:
                field.validate_python(value)
                taken = True
            except ValidationError:
                taken = False
            if taken != bool(pattern.fullmatch(value)):
                disagree.append((hex(code), value))
    assert disagree == []


def test_the_pattern_needs_a_visible_character() -> None:
    pattern = re.compile(text_pattern(1, 100, multiline=False))
    assert pattern.fullmatch("  a ")
    assert not pattern.fullmatch("   ")
    assert not pattern.fullmatch("")
    assert re.fullmatch(text_pattern(0, 2000, multiline=True), "")


def test_schema_shows_the_pattern() -> None:
    schema = Body.model_json_schema()["properties"]
    assert schema["name"]["pattern"] == text_pattern(1, 100, multiline=False)
    # The lengths are in the pattern: maxLength would count the padding trimmed first.
    assert "maxLength" not in schema["name"]
    assert schema["description"]["pattern"] == text_pattern(0, 2000, multiline=True)


def test_email_length_is_what_is_stored() -> None:
    domain = "b" * 63 + "." + "c" * 63 + "." + "d" * 57 + ".com"
    assert Body.model_validate({"name": "x", "email": "a" * 64 + "@" + domain}).email
    for bad in ("a" * 65 + "@" + domain, "a\u202eb@example.com", "a\u200bb@example.com"):
        with pytest.raises(ValidationError) as caught:
            Body.model_validate({"name": "x", "email": bad})
        assert [e["loc"] for e in caught.value.errors()] == [("email",)]
