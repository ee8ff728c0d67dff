"""Creating an activity: the Activity returned, every validation rule, role and token checks."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from ..api import Api, assert_problem
from .conftest import assert_activity_shape, create, listing


async def post(api: Api, token: str | None, body: Any, path: str = "/api/activities/") -> Any:
    return await api.call("POST", path, json=body, token=token)


def assert_invalid(reply: Any, field: str) -> None:
    assert_problem(reply, 400, "validation_error")
    fields = {e["field"] for e in reply.body["errors"]}
    assert any(f == field or f.startswith(field + ".") for f in fields), reply.body


@pytest.mark.parametrize("path", ["/api/activities/", "/api/activities"])
async def test_create_returns_activity(api: Api, path: str) -> None:
    pro = await api.signup("professional")
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    reply = await post(
        api, pro.token, {"title": "Morning Workout", "description": "Stretching"}, path
    )
    assert reply.status == 201, reply.text
    assert reply.headers["Content-Type"].startswith("application/json")
    activity = reply.body
    assert_activity_shape(activity)
    assert isinstance(activity["id"], int) and activity["id"] > 0
    assert activity == {
        "id": activity["id"],
        "professional_id": pro.id,
        "title": "Morning Workout",
        "description": "Stretching",
        "starts_at": None,
        "capacity": None,
        "created_at": activity["created_at"],
        "duration_minutes": 60,
        "waitlist": False,
        "places_left": None,
        "status": "scheduled",
        "invites": {"pending": 0, "accepted": 0, "declined": 0},
    }
    created = dt.datetime.fromisoformat(activity["created_at"])
    assert before <= created <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    assert await listing(api, pro) == [activity]


async def test_create_defaults(api: Api) -> None:
    pro = await api.signup("professional")
    activity = await create(api, pro, title="Yoga")
    assert activity["description"] == ""
    assert activity["starts_at"] is None
    assert activity["capacity"] is None


async def test_create_with_every_field(api: Api) -> None:
    pro = await api.signup("professional")
    activity = await create(
        api,
        pro,
        title="Swim",
        description="Line one\nLine two",
        starts_at="2030-05-06T07:08:09Z",
        capacity=12,
    )
    assert activity["description"] == "Line one\nLine two"
    assert activity["starts_at"] == "2030-05-06T07:08:09.000Z"
    assert activity["capacity"] == 12


async def test_create_null_optionals(api: Api) -> None:
    pro = await api.signup("professional")
    activity = await create(api, pro, title="Run", starts_at=None, capacity=None)
    assert activity["starts_at"] is None
    assert activity["capacity"] is None


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2030-01-02T10:00:00+02:00", "2030-01-02T08:00:00.000Z"),
        ("2030-01-02T01:30:00-05:30", "2030-01-02T07:00:00.000Z"),
        ("2030-01-02T08:00:00.123456Z", "2030-01-02T08:00:00.123Z"),
        ("2030-01-02T09:00:00+0100", "2030-01-02T08:00:00.000Z"),
    ],
    ids=["plus-offset", "minus-offset", "fraction", "compact-offset"],
)
async def test_create_starts_at_returned_in_utc(api: Api, given: str, expected: str) -> None:
    pro = await api.signup("professional")
    activity = await create(api, pro, starts_at=given)
    assert activity["starts_at"] == expected
    [listed] = await listing(api, pro)
    assert listed["starts_at"] == expected


@pytest.mark.parametrize(
    "starts_at",
    [
        1767225600,
        1767225600.5,
        "garbage",
        "",
        "2030-13-01T00:00:00Z",
        True,
        ["2030-01-01"],
        {},
        "2030-01-02T08:00:00",
        "2020-01-02T08:00:00Z",
    ],
    ids=[
        "int",
        "float",
        "garbage",
        "empty",
        "month-13",
        "bool",
        "list",
        "object",
        "no-offset",
        "past",
    ],
)
async def test_create_bad_starts_at(api: Api, starts_at: Any) -> None:
    pro = await api.signup("professional")
    assert_invalid(await post(api, pro.token, {"title": "T", "starts_at": starts_at}), "starts_at")


@pytest.mark.parametrize("capacity", [1, 3, 1000])
async def test_create_capacity_accepted(api: Api, capacity: int) -> None:
    pro = await api.signup("professional")
    assert (await create(api, pro, capacity=capacity))["capacity"] == capacity


async def test_create_capacity_spelled_as_a_whole_float(api: Api) -> None:
    # JSON has one number type: 3.0 is the integer 3 to JSON Schema, hence to the OpenAPI.
    pro = await api.signup("professional")
    created = await create(api, pro, capacity=3.0)
    assert created["capacity"] == 3 and isinstance(created["capacity"], int)


@pytest.mark.parametrize("capacity", [0, -1, "3", 1.5, 0.0, True, False, [3], {"n": 3}], ids=repr)
async def test_create_bad_capacity(api: Api, capacity: Any) -> None:
    pro = await api.signup("professional")
    assert_invalid(await post(api, pro.token, {"title": "T", "capacity": capacity}), "capacity")


async def test_create_title_trimmed(api: Api) -> None:
    pro = await api.signup("professional")
    assert (await create(api, pro, title="  \t Pilates  "))["title"] == "Pilates"


@pytest.mark.parametrize("length", [1, 200])
async def test_create_title_length_bounds(api: Api, length: int) -> None:
    pro = await api.signup("professional")
    title = "t" * length
    assert (await create(api, pro, title=f"  {title}  "))["title"] == title


@pytest.mark.parametrize(
    "title",
    ["", "   ", "t" * 201, 123, None, ["t"], True, "bad\x00title"],
    ids=["empty", "spaces", "201", "int", "null", "list", "bool", "nul"],
)
async def test_create_bad_title(api: Api, title: Any) -> None:
    pro = await api.signup("professional")
    assert_invalid(await post(api, pro.token, {"title": title}), "title")


async def test_create_missing_title(api: Api) -> None:
    pro = await api.signup("professional")
    assert_invalid(await post(api, pro.token, {"description": "no title"}), "title")


async def test_create_empty_body(api: Api) -> None:
    pro = await api.signup("professional")
    reply = await api.call(
        "POST",
        "/api/activities/",
        data=b"",
        headers={"Content-Type": "application/json"},
        token=pro.token,
    )
    assert_invalid(reply, "title")


@pytest.mark.parametrize("length", [0, 2000])
async def test_create_description_length_bounds(api: Api, length: int) -> None:
    pro = await api.signup("professional")
    description = "d" * length
    assert (await create(api, pro, description=description))["description"] == description


@pytest.mark.parametrize(
    "description",
    ["d" * 2001, 5, ["d"], True, "bad\x00text"],
    ids=["2001", "int", "list", "bool", "nul"],
)
async def test_create_bad_description(api: Api, description: Any) -> None:
    pro = await api.signup("professional")
    assert_invalid(
        await post(api, pro.token, {"title": "T", "description": description}), "description"
    )


async def test_create_extra_fields_ignored(api: Api) -> None:
    pro = await api.signup("professional")
    other = await api.signup("professional")
    activity = await create(
        api,
        pro,
        title="T",
        id=999_999,
        professional_id=other.id,
        created_at="2000-01-01T00:00:00Z",
        invites={"pending": 5},
    )
    assert activity["id"] != 999_999
    assert activity["professional_id"] == pro.id
    assert not activity["created_at"].startswith("2000")
    assert activity["invites"] == {"pending": 0, "accepted": 0, "declined": 0}


async def test_create_malformed_json(api: Api) -> None:
    pro = await api.signup("professional")
    reply = await api.call(
        "POST",
        "/api/activities/",
        data=b'{"title": ',
        headers={"Content-Type": "application/json"},
        token=pro.token,
    )
    assert_problem(reply, 400, "malformed_json")


async def test_create_body_not_an_object(api: Api) -> None:
    pro = await api.signup("professional")
    assert_invalid(await post(api, pro.token, ["title"]), "body")


async def test_create_by_client_is_forbidden(api: Api) -> None:
    client = await api.signup("client")
    assert_problem(await post(api, client.token, {"title": "T"}), 403, "forbidden_role")
    # Role is checked before the body.
    assert_problem(await post(api, client.token, {"title": ""}), 403, "forbidden_role")
    assert await listing(api, client) == []


@pytest.mark.parametrize("token", [None, "", "not-a-token", "a.b.c"], ids=repr)
async def test_create_without_valid_token(api: Api, token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    reply = await api.call("POST", "/api/activities/", json={"title": "T"}, headers=headers)
    assert_problem(reply, 401)
    # The token is checked before the body.
    reply = await api.call("POST", "/api/activities/", json={"title": ""}, headers=headers)
    assert_problem(reply, 401)
