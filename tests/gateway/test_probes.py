"""Bad input found by probing the running system: each gets a clean 4xx, never a 5xx, and
changes nothing; and the limits of every text field hold on SQLite and on PostgreSQL."""

from __future__ import annotations

import gzip
import json
import re
import zlib
from typing import Any
from urllib.parse import quote, unquote

import brotli
import pytest
from backports import zstd
from multidict import CIMultiDict

from ..api import Api, Reply, assert_problem, unique_email

PASSWORD = "correct horse battery"
MAX_ID = 2**63 - 1


def signup_body(**fields: Any) -> dict[str, Any]:
    return {
        "name": "Probe",
        "email": unique_email("probe"),
        "password": PASSWORD,
        "role": "client",
        **fields,
    }


async def post_bytes(
    api: Api, path: str, data: bytes, headers: dict[str, str], token: str | None = None
) -> Reply:
    return await api.call(
        "POST",
        path,
        data=data,
        token=token,
        headers={"Content-Type": "application/json", **headers},
    )


async def assert_email_free(api: Api, email: str) -> None:
    """Nothing was created by a refused signup: the address can still sign up."""
    reply = await api.call("POST", "/api/auth/signup", json=signup_body(email=email))
    assert reply.status == 201, reply.text


def assert_field_error(reply: Reply, field: str) -> None:
    assert_problem(reply, 400, "validation_error")
    assert field in {e["field"] for e in reply.body["errors"]}, reply.body


# --- Content-Encoding ---------------------------------------------------------------------

CODERS = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": zstd.compress,
    "identity": lambda data: data,
}


@pytest.mark.parametrize("coding", [*CODERS, "GZIP"])
async def test_coded_body_is_decoded(api: Api, coding: str) -> None:
    """gzip and deflate were decoded by the gateway but still labelled coded: a 500."""
    body = signup_body(name=f"Coded {coding}")
    raw = CODERS[coding.lower()](json.dumps(body).encode())
    reply = await post_bytes(api, "/api/auth/signup", raw, {"Content-Encoding": coding})
    assert reply.status == 201, reply.text
    assert reply.body["user"]["name"] == f"Coded {coding}"
    login = await api.login(body["email"], PASSWORD)
    assert login.status == 200, login.text


async def test_coded_body_reaches_every_service(api: Api) -> None:
    pro = await api.signup("professional")
    raw = gzip.compress(json.dumps({"title": "Zipped"}).encode())
    reply = await post_bytes(
        api, "/api/activities/", raw, {"Content-Encoding": "gzip"}, token=pro.token
    )
    assert reply.status == 201, reply.text
    assert reply.body["title"] == "Zipped"


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
async def test_garbage_coded_body_is_400(api: Api, coding: str) -> None:
    body = signup_body()
    raw = json.dumps(body).encode()  # not coded at all
    reply = await post_bytes(api, "/api/auth/signup", raw, {"Content-Encoding": coding})
    assert_problem(reply, 400, "malformed_body")
    await assert_email_free(api, body["email"])


@pytest.mark.parametrize("coding", ["x-foo", "compress", "x-gzip", "gzip, gzip", "gzip;q=1"])
async def test_unknown_coding_is_415(api: Api, coding: str) -> None:
    body = signup_body()
    reply = await post_bytes(
        api, "/api/auth/signup", json.dumps(body).encode(), {"Content-Encoding": coding}
    )
    assert_problem(reply, 415, "unsupported_content_encoding")
    await assert_email_free(api, body["email"])


async def test_two_coding_headers_are_415(api: Api) -> None:
    body = signup_body()
    raw = gzip.compress(gzip.compress(json.dumps(body).encode()))
    headers = CIMultiDict(
        [
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
            ("Content-Encoding", "gzip"),
        ]
    )
    async with api.http.post(api.base + "/api/auth/signup", data=raw, headers=headers) as resp:
        reply = Reply(resp.status, resp.headers, await resp.json(content_type=None), "")
    assert_problem(reply, 415, "unsupported_content_encoding")
    await assert_email_free(api, body["email"])


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
async def test_zip_bomb_is_413(api: Api, coding: str) -> None:
    """64 KiB is the limit of the decoded body: a few KiB that inflate to 10 MiB are refused."""
    body = signup_body()
    inflated = json.dumps(body).encode()[:-1] + b', "pad": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    raw = CODERS[coding](inflated)
    assert len(raw) < 64 * 1024
    reply = await post_bytes(api, "/api/auth/signup", raw, {"Content-Encoding": coding})
    assert_problem(reply, 413, "payload_too_large")
    just_over = json.dumps(body).encode() + b" " * (64 * 1024)
    reply = await post_bytes(
        api, "/api/auth/signup", gzip.compress(just_over), {"Content-Encoding": "gzip"}
    )
    assert_problem(reply, 413, "payload_too_large")
    await assert_email_free(api, body["email"])


# --- ids in paths, queries and bodies -----------------------------------------------------

BAD_PATH_IDS = [
    "%C2%B9%C2%B2",  # superscript digits: isdigit() but not int() (was a 500)
    "1" * 4301,  # past int()'s digit limit (was a 500)
    str(2**63),
    "9" * 19,
    "0",
    "-1",
    "1_0",
    "+1",
    "%201",
    "1%20",
    "abc",
]


async def test_bad_connection_ids_are_404(api: Api) -> None:
    pro, client = await api.signup("professional"), await api.signup("client")
    asked = await api.call(
        "POST", "/api/connection/request-pro", json={"professional_id": pro.id}, token=client.token
    )
    assert asked.status == 201, asked.text
    connection_id = asked.body["id"]
    other_scripts = [
        quote("".join(chr(zero + int(d)) for d in str(connection_id)))
        for zero in (0x660, 0x6F0, 0xFF10)  # Arabic-Indic, Extended Arabic-Indic, fullwidth
    ]
    for raw in [*BAD_PATH_IDS, *other_scripts]:
        reply = await api.call("DELETE", f"/api/connection/{raw}", token=client.token)
        # `{id}` routes only match ASCII digits: anything else names no route at all.
        digits = unquote(raw).isascii() and unquote(raw).isdigit()
        assert_problem(reply, 404, "connection_not_found" if digits else "not_found")
    listed = await api.call("GET", "/api/connection/list", token=client.token)
    assert [(c["id"], c["status"]) for c in listed.body] == [(connection_id, "pending")]


@pytest.mark.parametrize(
    "path",
    ["/api/activities/list", "/api/connection/list", "/api/users", "/api/notifications"],
)
@pytest.mark.parametrize("name", ["limit", "offset"])
async def test_query_integers_are_ascii_digits(api: Api, path: str, name: str) -> None:
    user = await api.signup("professional")
    for raw in ["\u0661\u0660", "\u00b9", "1_0", "+1", " 1", "1 ", "\uff11", "0x1"]:
        reply = await api.call("GET", f"{path}?{name}={quote(raw)}", token=user.token)
        assert_problem(reply, 400, "invalid_query")
        assert reply.body["errors"][0]["field"] == name


# Whole floats are integers to JSON Schema (1.0 is 1, 1e30 is past BIGINT); 1.5 is not one.
BAD_BODY_IDS = [0, -1, MAX_ID + 1, 2**64, 10**30, -(2**63) - 1, 1.5, 1e30, "1", True, None, [1]]


async def test_body_ids_out_of_range_are_400(api: Api) -> None:
    """Ids past BIGINT reached asyncpg as an overflow (a 500 on PostgreSQL)."""
    pro, client = await api.signup("professional"), await api.signup("client")
    cases = [
        (client, "/api/connection/request-pro", {}, "professional_id"),
        (pro, "/api/connection/respond", {"action": "accept"}, "connection_id"),
        (pro, "/api/activities/invite", {"client_id": 1}, "activity_id"),
        (pro, "/api/activities/invite", {"activity_id": 1}, "client_id"),
        (client, "/api/activities/respond", {"action": "accept"}, "invite_id"),
    ]
    for who, path, rest, field in cases:
        for bad in BAD_BODY_IDS:
            reply = await api.call("POST", path, json={**rest, field: bad}, token=who.token)
            assert_field_error(reply, field)


async def test_largest_body_ids_are_not_found(api: Api) -> None:
    """The largest id there can be is looked up (and found missing), never an overflow."""
    pro, client = await api.signup("professional"), await api.signup("client")
    cases = [
        (client, "/api/connection/request-pro", {"professional_id": MAX_ID}, 404),
        (pro, "/api/connection/respond", {"connection_id": MAX_ID, "action": "accept"}, 404),
        (pro, "/api/activities/invite", {"activity_id": MAX_ID, "client_id": MAX_ID}, 404),
        (client, "/api/activities/respond", {"invite_id": MAX_ID, "action": "accept"}, 404),
    ]
    for who, path, body, status in cases:
        reply = await api.call("POST", path, json=body, token=who.token)
        assert_problem(reply, status)
    reply = await api.call("DELETE", f"/api/activities/{MAX_ID}", token=pro.token)
    assert_problem(reply, 404, "activity_not_found")
    reply = await api.call("DELETE", f"/api/connection/{MAX_ID}", token=pro.token)
    assert_problem(reply, 404, "connection_not_found")


# --- invisible, bidirectional and control characters in text ------------------------------

REFUSED_ANYWHERE = [
    "\x00",
    "\x1b",
    "\x7f",
    "\x80",
    "\x85",  # NEL
    "\x9f",
    "\u2028",
    "\u2029",
    "\u202a",
    "\u202e",  # right-to-left override
    "\u2066",
    "\u2069",
    "\u200e",
    "\u200f",
    "\u200b",  # zero-width space
    "\u2060",  # word joiner
    "\ufeff",  # byte order mark
    "\u00ad",  # soft hyphen
    "\u3164",  # Hangul filler
    "\U000e0041",  # a tag character
]
# Joiners are refused next to Latin letters or spaces, where they only hide.
REFUSED_IN_LATIN = ["\u200c", "\u200d"]
SINGLE_LINE_ONLY = ["\n", "\r", "\t"]


def variants(char: str) -> list[str]:
    if char in SINGLE_LINE_ONLY:  # at the ends, trimmed like spaces
        return [f"An{char}n", f"Ann {char} Lee"]
    return [f"{char}Ann", f"An{char}n", f"Ann{char}", f"Ann {char} Lee"]


async def test_names_refuse_invisible_and_control_characters(api: Api) -> None:
    for char in REFUSED_ANYWHERE + REFUSED_IN_LATIN + SINGLE_LINE_ONLY:
        for name in variants(char):
            body = signup_body(name=name)
            reply = await api.call("POST", "/api/auth/signup", json=body)
            assert_field_error(reply, "name")
    for char in REFUSED_ANYWHERE + REFUSED_IN_LATIN:
        reply = await api.call(
            "POST", "/api/auth/signup", json=signup_body(email=f"a{char}b@example.com")
        )
        assert_field_error(reply, "email")


async def test_titles_and_descriptions_refuse_them_too(api: Api) -> None:
    pro = await api.signup("professional")
    for char in REFUSED_ANYWHERE + REFUSED_IN_LATIN + SINGLE_LINE_ONLY:
        for title in variants(char):
            reply = await api.call(
                "POST", "/api/activities/", json={"title": title}, token=pro.token
            )
            assert_field_error(reply, "title")
    for char in REFUSED_ANYWHERE + REFUSED_IN_LATIN:
        for description in variants(char):
            reply = await api.call(
                "POST",
                "/api/activities/",
                json={"title": "Run", "description": description},
                token=pro.token,
            )
            assert_field_error(reply, "description")
    for char in REFUSED_ANYWHERE + REFUSED_IN_LATIN:
        reply = await api.call(
            "POST",
            "/api/connection/invite-client",
            json={"client_email": f"a{char}b@example.com"},
            token=pro.token,
        )
        assert_field_error(reply, "client_email")
    listed = await api.call("GET", "/api/activities/list", token=pro.token)
    assert listed.body == []


async def test_ordinary_text_of_every_script_is_kept(api: Api) -> None:
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # a joiner inside a word
    health_worker = "\U0001f469\U0001f3fd\u200d\u2695\ufe0f"  # an emoji sequence
    for name in ["Zoë Ångström", "李小龙", "Оля", persian, "🏃\u200d♀\ufe0f Ann", health_worker]:
        reply = await api.call("POST", "/api/auth/signup", json=signup_body(name=name))
        assert reply.status == 201, (name, reply.text)
        assert reply.body["user"]["name"] == name
    pro = await api.signup("professional")
    description = "Line one\nLine two\twith a tab\r\n\u05e9\u05dc\u05d5\u05dd"
    reply = await api.call(
        "POST",
        "/api/activities/",
        json={"title": "  Yoga  ", "description": description},
        token=pro.token,
    )
    assert reply.status == 201, reply.text
    assert (reply.body["title"], reply.body["description"]) == ("Yoga", description)


# --- the limits of every text field, as stored --------------------------------------------

DOMAIN = "b" * 63 + "." + "c" * 63 + "." + "d" * 57 + ".com"  # 189 characters


def long_email(length: int) -> str:
    tag = unique_email("x").split("@")[0][-12:]
    local = (tag + "a" * 64)[: length - 1 - len(DOMAIN)]
    address = f"{local}@{DOMAIN}"
    assert len(address) == length
    return address


async def signup_reply(api: Api, **fields: Any) -> Reply:
    return await api.call("POST", "/api/auth/signup", json=signup_body(**fields))


@pytest.mark.parametrize("char", ["a", "é", "😀", "李"])
async def test_name_limit_counts_characters(api: Api, char: str) -> None:
    """In a SQL_ASCII PostgreSQL, varchar(100) counted bytes: 100 "é" was a 500."""
    reply = await signup_reply(api, name=char * 100)
    assert reply.status == 201, reply.text
    assert reply.body["user"]["name"] == char * 100
    me = await api.call("GET", "/api/auth/me", token=reply.body["token"])
    assert me.body["name"] == char * 100
    assert_field_error(await signup_reply(api, name=char * 101), "name")
    # Trimmed before counting.
    reply = await signup_reply(api, name=f"  {char * 100}  ")
    assert reply.status == 201, reply.text
    assert reply.body["user"]["name"] == char * 100


async def test_email_limit(api: Api) -> None:
    email = long_email(254)
    reply = await signup_reply(api, email=email.upper())
    assert reply.status == 201, reply.text
    assert reply.body["user"]["email"] == email
    assert_field_error(await signup_reply(api, email=long_email(255)), "email")
    accented = "é" * 32 + "@example.com"  # 254 bytes is the limit, and é is two
    reply = await signup_reply(api, email=accented)
    assert reply.status == 201, reply.text
    assert_field_error(await signup_reply(api, email="é" * 122 + "@example.com"), "email")
    # Lower-casing can lengthen an address; what is stored is within the column.
    dotted = "İ" * 20 + "@example.com"
    reply = await signup_reply(api, email=dotted)
    assert reply.status in (201, 400), reply.text
    # Any string may be tried at login, up to 320 characters.
    assert (await api.login("x" * 320 + "é", PASSWORD)).status in (400, 401)
    assert_field_error(await api.login("é" * 321, PASSWORD), "email")


async def test_password_limit(api: Api) -> None:
    for char in ("a", "é", "😀"):
        body = signup_body(password=char * 128)
        reply = await api.call("POST", "/api/auth/signup", json=body)
        assert reply.status == 201, reply.text
        assert (await api.login(body["email"], char * 128)).status == 200
        assert_field_error(await signup_reply(api, password=char * 129), "password")


async def test_invite_client_email_limit(api: Api) -> None:
    pro = await api.signup("professional")
    email = long_email(254)
    reply = await api.call(
        "POST", "/api/connection/invite-client", json={"client_email": email}, token=pro.token
    )
    assert reply.status == 201, reply.text
    assert reply.body["client"]["email"] == email
    reply = await api.call(
        "POST",
        "/api/connection/invite-client",
        json={"client_email": long_email(255)},
        token=pro.token,
    )
    assert_field_error(reply, "client_email")


@pytest.mark.parametrize("char", ["a", "é", "😀"])
async def test_title_and_description_limits(api: Api, char: str) -> None:
    pro = await api.signup("professional")

    async def create(**body: Any) -> Reply:
        return await api.call("POST", "/api/activities/", json=body, token=pro.token)

    reply = await create(title=char * 200, description=char * 2000)
    assert reply.status == 201, reply.text
    assert (reply.body["title"], reply.body["description"]) == (char * 200, char * 2000)
    listed = await api.call("GET", "/api/activities/list", token=pro.token)
    assert listed.body[0]["title"] == char * 200
    assert listed.body[0]["description"] == char * 2000
    assert_field_error(await create(title=char * 201), "title")
    assert_field_error(await create(title="Run", description=char * 2001), "description")
    reply = await create(title=f" {char * 200} ", description=f"\n{char * 2000}\n")
    assert reply.status == 201, reply.text
    assert (reply.body["title"], reply.body["description"]) == (char * 200, char * 2000)


# --- what the OpenAPI document says about all this ----------------------------------------


async def test_openapi_states_the_rules(api: Api) -> None:
    """Schema-based fuzzers read the rules from the document: it must say what is refused."""
    reply = await api.call("GET", "/api/openapi.json")
    assert reply.status == 200, reply.text
    document = reply.body
    schemas = document["components"]["schemas"]
    text_fields = {
        ("SignupBody", "name"): (100, True),
        ("CreateActivityBody", "title"): (200, True),
        ("CreateActivityBody", "description"): (2000, False),
    }
    for (model, field), (longest, single_line) in text_fields.items():
        schema = schemas[model]["properties"][field]
        # The length is in the pattern, counted once the padding is trimmed (maxLength
        # would count the padding too).
        assert "maxLength" not in schema
        pattern = re.compile(schema["pattern"])
        assert pattern.fullmatch("Ann Lee")
        assert pattern.fullmatch(f" {'a' * longest}\t")
        assert not pattern.fullmatch("a" * (longest + 1))
        # The pattern names BMP characters only (regex dialects disagree past it).
        for char in [c for c in REFUSED_ANYWHERE + REFUSED_IN_LATIN if ord(c) <= 0xFFFF]:
            assert not pattern.fullmatch(f"An{char}n"), (model, field, hex(ord(char)))
        assert bool(pattern.fullmatch("An\nn")) is not single_line
    delete = document["paths"]["/api/activities/{id}"]["delete"]
    [id_param] = [p for p in delete["parameters"] if p["name"] == "id"]
    assert id_param["schema"] == {"type": "integer", "minimum": 1, "maximum": MAX_ID}
    listing = document["paths"]["/api/notifications"]["get"]
    params = {p["name"]: p["schema"] for p in listing["parameters"]}
    assert params["offset"]["minimum"] == 0
    assert params["limit"]["maximum"] == 200
    assert "since" in params
