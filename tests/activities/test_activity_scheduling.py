"""Scheduling through the gateway: times, PATCH, waitlists and withdrawals, on both databases."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
import redis.asyncio as aioredis

from ..api import Account, Api, assert_problem
from .conftest import (
    about,
    assert_activity_shape,
    assert_invite_shape,
    by_id,
    connected_clients,
    connected_pair,
    create,
    delete,
    invite,
    listing,
    respond,
    respond_reply,
    stream_mark,
    wait_events,
)


def later(**delta: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(**delta)).isoformat()


def ago(**delta: float) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(**delta)).isoformat()


async def patch(api: Api, account: Account, activity_id: int, body: Any) -> Any:
    return await api.call("PATCH", f"/api/activities/{activity_id}", json=body, token=account.token)


def assert_invalid(reply: Any, field: str) -> None:
    assert_problem(reply, 400, "validation_error")
    fields = {e["field"] for e in reply.body["errors"]}
    assert any(f == field or f.startswith(field + ".") for f in fields), reply.body


# --- times and the new fields on create ----------------------------------------------------


async def test_create_takes_duration_and_waitlist_and_says_places_and_status(api: Api) -> None:
    pro = await api.signup("professional")
    starts = "2031-03-04T10:00:00+01:00"
    made = await create(api, pro, starts_at=starts, capacity=3, duration_minutes=90, waitlist=True)
    assert_activity_shape(made)
    assert made["starts_at"] == "2031-03-04T09:00:00.000Z"
    assert (made["duration_minutes"], made["waitlist"], made["places_left"], made["status"]) == (
        90,
        True,
        3,
        "scheduled",
    )
    plain = await create(api, pro)
    assert (plain["duration_minutes"], plain["waitlist"], plain["places_left"]) == (60, False, None)
    assert by_id(await listing(api, pro))[made["id"]] == made


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("starts_at", "2031-01-02T08:00:00"),  # no offset
        ("starts_at", "2020-01-02T08:00:00Z"),  # past
        ("duration_minutes", 4),
        ("duration_minutes", 1441),
        ("duration_minutes", 30.5),
        ("duration_minutes", "60"),
        ("duration_minutes", None),
        ("waitlist", "yes"),
        ("waitlist", 1),
        ("waitlist", None),
    ],
)
async def test_create_refuses_bad_scheduling_fields(api: Api, field: str, value: Any) -> None:
    pro = await api.signup("professional")
    reply = await api.call(
        "POST", "/api/activities/", json={"title": "T", field: value}, token=pro.token
    )
    assert_invalid(reply, field)
    assert await listing(api, pro) == []


async def test_a_start_a_moment_ago_is_in_the_past(api: Api) -> None:
    pro = await api.signup("professional")
    reply = await api.call(
        "POST",
        "/api/activities/",
        json={"title": "T", "starts_at": ago(seconds=1)},
        token=pro.token,
    )
    assert_invalid(reply, "starts_at")
    assert reply.body["errors"] == [{"field": "starts_at", "message": "must be in the future"}]


@pytest.mark.parametrize("minutes", [5, 1440])
async def test_duration_bounds_are_taken(api: Api, minutes: int) -> None:
    pro = await api.signup("professional")
    assert (await create(api, pro, duration_minutes=minutes))["duration_minutes"] == minutes


# --- PATCH ---------------------------------------------------------------------------------


async def test_patch_changes_every_field_and_tells_open_invitees(
    api: Api, stack_redis: aioredis.Redis
) -> None:
    pro = await api.signup("professional")
    pending, accepted, waiting, declined = await connected_clients(api, pro, 4)
    activity = await create(api, pro, title="Old", capacity=1, waitlist=True)
    sent = {
        c.id: await invite(api, pro, activity["id"], c)
        for c in (pending, accepted, waiting, declined)
    }
    await respond(api, accepted, sent[accepted.id]["id"], "accept")
    assert (await respond(api, waiting, sent[waiting.id]["id"], "accept"))["status"] == "waitlisted"
    await respond(api, declined, sent[declined.id]["id"], "decline")

    mark = await stream_mark(stack_redis)
    body = {
        "title": "  New  ",
        "description": "Moved indoors",
        "starts_at": "2032-07-08T09:10:00-02:00",
        "duration_minutes": 45,
        "capacity": 4,
        "waitlist": False,
    }
    reply = await patch(api, pro, activity["id"], body)
    assert reply.status == 200, reply.text
    changed = reply.body
    assert_activity_shape(changed)
    assert {k: changed[k] for k in body} == {
        **body,
        "title": "New",
        "starts_at": "2032-07-08T11:10:00.000Z",
    }
    # Raising the capacity gave the waiting client a place at once.
    assert changed["invites"] == {"pending": 1, "accepted": 2, "declined": 1}
    assert changed["places_left"] == 2
    assert (await listing(api, waiting))[0]["status"] == "accepted"
    assert by_id(await listing(api, pro))[activity["id"]] == changed

    events = await wait_events(stack_redis, mark, about(activity["id"]), 2)
    assert [e.type for e in events] == ["activity.updated", "activity.invite_promoted"]
    updated, promoted = events
    assert updated.recipient_ids == sorted([pending.id, accepted.id, waiting.id])
    assert updated.data.activity.model_dump(mode="json") == changed
    assert promoted.recipient_ids == sorted([pro.id, waiting.id])
    assert promoted.data.invite.id == sent[waiting.id]["id"]

    # Clearing the start and the capacity.
    cleared = await patch(api, pro, activity["id"], {"starts_at": None, "capacity": None})
    assert cleared.status == 200, cleared.text
    assert (cleared.body["starts_at"], cleared.body["capacity"], cleared.body["places_left"]) == (
        None,
        None,
        None,
    )


@pytest.mark.parametrize("body", [{}, {"unknown": 1}, {"title": "Same", "capacity": 2}])
async def test_patch_that_changes_nothing_is_200_and_sends_nothing(
    api: Api, stack_redis: aioredis.Redis, body: dict[str, Any]
) -> None:
    pair = await connected_pair(api)
    activity = await create(api, pair.professional, title="Same", capacity=2)
    await invite(api, pair.professional, activity["id"], pair.client)
    mark = await stream_mark(stack_redis)
    reply = await patch(api, pair.professional, activity["id"], body)
    assert reply.status == 200, reply.text
    assert reply.body == {**activity, "invites": {"pending": 1, "accepted": 0, "declined": 0}}
    await asyncio.sleep(0.3)
    assert await wait_events(stack_redis, mark, about(activity["id"]), 1, within=0.2) == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("title", ""),
        ("title", None),
        ("title", "x" * 201),
        ("description", None),
        ("starts_at", "2031-01-02T08:00:00"),
        ("starts_at", "2020-01-01T00:00:00Z"),
        ("starts_at", 5),
        ("duration_minutes", 0),
        ("duration_minutes", None),
        ("capacity", 0),
        ("capacity", "2"),
        ("waitlist", None),
        ("waitlist", "true"),
    ],
)
async def test_patch_refuses_bad_fields_and_changes_nothing(
    api: Api, field: str, value: Any
) -> None:
    pro = await api.signup("professional")
    activity = await create(api, pro, title="Kept", capacity=2)
    assert_invalid(await patch(api, pro, activity["id"], {field: value}), field)
    assert by_id(await listing(api, pro))[activity["id"]] == activity


async def test_patch_who_and_what(api: Api) -> None:
    pair = await connected_pair(api)
    pro, client = pair.professional, pair.client
    other = await api.signup("professional")
    activity = await create(api, pro, capacity=2)
    assert_problem(
        await patch(api, other, activity["id"], {"title": "Mine"}), 404, "activity_not_found"
    )
    assert_problem(await patch(api, pro, 2**62, {"title": "x"}), 404, "activity_not_found")
    assert_problem(await patch(api, client, activity["id"], {"title": "x"}), 403)
    reply = await api.call("PATCH", f"/api/activities/{activity['id']}", json={"title": "x"})
    assert_problem(reply, 401)
    # Body before visibility: a bad body for someone else's activity is a 400.
    assert_invalid(await patch(api, other, activity["id"], {"capacity": 0}), "capacity")
    assert_problem(
        await api.call(
            "PATCH", f"/api/activities/{activity['id']}", data="{", token=pro.token,
            headers={"Content-Type": "application/json"},
        ),
        400,
        "malformed_json",
    )  # fmt: skip


async def test_patch_capacity_below_accepted_and_of_a_cancelled_activity_are_409(api: Api) -> None:
    pro = await api.signup("professional")
    clients = await connected_clients(api, pro, 2)
    activity = await create(api, pro, capacity=3)
    for c in clients:
        await respond(api, c, (await invite(api, pro, activity["id"], c))["id"], "accept")
    assert_problem(
        await patch(api, pro, activity["id"], {"capacity": 1}), 409, "capacity_below_accepted"
    )
    assert (await patch(api, pro, activity["id"], {"capacity": 2})).body["places_left"] == 0
    await delete(api, pro, activity["id"])
    assert_problem(await patch(api, pro, activity["id"], {"title": "x"}), 409, "activity_cancelled")


# --- respond: waitlist and withdraw ------------------------------------------------------


async def test_withdraw_rows(api: Api, stack_redis: aioredis.Redis) -> None:
    pro = await api.signup("professional")
    first, second, third = await connected_clients(api, pro, 3)
    activity = await create(api, pro, capacity=1, waitlist=True)
    i1, i2, i3 = [await invite(api, pro, activity["id"], c) for c in (first, second, third)]
    assert_problem(
        await respond_reply(api, first, i1["id"], "withdraw"), 409, "invite_not_accepted"
    )
    assert (await respond(api, first, i1["id"], "accept"))["status"] == "accepted"
    waiting = await respond(api, second, i2["id"], "accept")
    assert_invite_shape(waiting)
    assert (waiting["status"], waiting["waitlist_position"]) == ("waitlisted", 1)
    assert waiting["activity"]["places_left"] == 0
    await respond(api, third, i3["id"], "decline")
    assert_problem(
        await respond_reply(api, third, i3["id"], "withdraw"), 409, "invite_not_accepted"
    )
    assert_problem(await respond_reply(api, second, i1["id"], "withdraw"), 404, "invite_not_found")

    mark = await stream_mark(stack_redis)
    gone = await respond(api, first, i1["id"], "withdraw")
    assert_invite_shape(gone)
    assert gone["status"] == "withdrawn"
    events = await wait_events(stack_redis, mark, about(activity["id"]), 2)
    assert [(e.type, e.recipient_ids) for e in events] == [
        ("activity.invite_withdrawn", [pro.id]),
        ("activity.invite_promoted", sorted([pro.id, second.id])),
    ]
    [mine] = await listing(api, second)
    assert mine["status"] == "accepted" and "waitlist_position" not in mine
    assert_problem(
        await respond_reply(api, first, i1["id"], "withdraw"), 409, "invite_not_accepted"
    )
    assert_problem(await respond_reply(api, first, i1["id"], "accept"), 409, "invite_not_pending")
    # Withdrawing a waitlisted invite; and a withdrawn client may be invited again.
    again = await invite(api, pro, activity["id"], first)
    assert (await respond(api, first, again["id"], "accept"))["status"] == "waitlisted"
    assert (await respond(api, first, again["id"], "withdraw"))["status"] == "withdrawn"
    [counts] = [a["invites"] for a in await listing(api, pro) if a["id"] == activity["id"]]
    assert counts == {"pending": 0, "accepted": 1, "declined": 1}


async def test_full_without_waitlist_is_still_activity_full(api: Api) -> None:
    pro = await api.signup("professional")
    first, second = await connected_clients(api, pro, 2)
    activity = await create(api, pro, capacity=1)
    await respond(api, first, (await invite(api, pro, activity["id"], first))["id"], "accept")
    later_invite = await invite(api, pro, activity["id"], second)
    assert_problem(
        await respond_reply(api, second, later_invite["id"], "accept"), 409, "activity_full"
    )


async def test_cancel_reaches_waitlisted_clients(api: Api, stack_redis: aioredis.Redis) -> None:
    pro = await api.signup("professional")
    accepted, waiting = await connected_clients(api, pro, 2)
    activity = await create(api, pro, capacity=1, waitlist=True)
    for c in (accepted, waiting):
        await respond(api, c, (await invite(api, pro, activity["id"], c))["id"], "accept")
    mark = await stream_mark(stack_redis)
    await delete(api, pro, activity["id"])
    [cancelled] = await wait_events(stack_redis, mark, about(activity["id"]), 1)
    assert cancelled.type == "activity.cancelled"
    assert cancelled.recipient_ids == sorted([accepted.id, waiting.id])
    assert cancelled.data.activity.status == "cancelled"
    for c in (accepted, waiting):
        [mine] = await listing(api, c)
        assert mine["status"] == "cancelled" and mine["activity"]["status"] == "cancelled"


async def test_a_connection_removal_keeps_accepted_and_waitlisted_invites(api: Api) -> None:
    pro = await api.signup("professional")
    accepted, waiting = await connected_clients(api, pro, 2)
    activity = await create(api, pro, capacity=1, waitlist=True)
    for c in (accepted, waiting):
        await respond(api, c, (await invite(api, pro, activity["id"], c))["id"], "accept")
    for c in (accepted, waiting):
        [connection] = (await api.call("GET", "/api/connection/list", token=c.token)).body
        reply = await api.call("DELETE", f"/api/connection/{connection['id']}", token=c.token)
        assert reply.status == 204
    assert (await listing(api, accepted))[0]["status"] == "accepted"
    assert (await listing(api, waiting))[0]["status"] == "waitlisted"


# --- concurrency ---------------------------------------------------------------------------


@pytest.mark.parametrize("capacity", [1, 3])
async def test_concurrent_accepts_and_withdrawals_never_overbook_and_promote_in_order(
    api: Api, capacity: int
) -> None:
    pro = await api.signup("professional")
    clients = await connected_clients(api, pro, 12)
    activity = await create(api, pro, capacity=capacity, waitlist=True)
    invites = {c.id: await invite(api, pro, activity["id"], c) for c in clients}

    answers = await asyncio.gather(
        *(respond(api, c, invites[c.id]["id"], "accept") for c in clients)
    )
    accepted = [a for a in answers if a["status"] == "accepted"]
    waiting = sorted(
        (a for a in answers if a["status"] == "waitlisted"), key=lambda a: a["waitlist_position"]
    )
    assert len(accepted) == capacity
    # Each accept saw the line as the one before it left it: positions 1..n, no gaps.
    assert [a["waitlist_position"] for a in waiting] == list(range(1, len(waiting) + 1))

    # Every accepted client withdraws at once, and so do the last two in line.
    owner = {i["id"]: c for c in clients for i in [invites[c.id]]}
    leaving = [a["id"] for a in accepted] + [a["id"] for a in waiting[-2:]]
    await asyncio.gather(*(respond(api, owner[i], i, "withdraw") for i in leaving))

    now = {i["id"]: i for c in clients for i in await listing(api, c)}
    holders = sorted(i for i, v in now.items() if v["status"] == "accepted")
    # The places went to the oldest of those still waiting, in order.
    expected = sorted(a["id"] for a in waiting[:-2][:capacity])
    assert holders == expected
    [mine] = [a for a in await listing(api, pro) if a["id"] == activity["id"]]
    assert mine["invites"]["accepted"] == capacity
    assert mine["places_left"] == 0
    line = sorted(
        (v for v in now.values() if v["status"] == "waitlisted"),
        key=lambda v: v["waitlist_position"],
    )
    assert [v["id"] for v in line] == [a["id"] for a in waiting[capacity:-2]]
    assert [v["waitlist_position"] for v in line] == list(range(1, len(line) + 1))


async def test_concurrent_capacity_changes_and_accepts_never_overbook(api: Api) -> None:
    pro = await api.signup("professional")
    clients = await connected_clients(api, pro, 10)
    activity = await create(api, pro, capacity=2, waitlist=True)
    invites = {c.id: await invite(api, pro, activity["id"], c) for c in clients}
    calls = [respond(api, c, invites[c.id]["id"], "accept") for c in clients]
    changes = [patch(api, pro, activity["id"], {"capacity": n}) for n in (4, 6, 5)]
    results = await asyncio.gather(*calls, *changes)
    assert {r.status for r in results[len(calls) :]} <= {200, 409}
    [mine] = [a for a in await listing(api, pro) if a["id"] == activity["id"]]
    states = [i["status"] for c in clients for i in await listing(api, c)]
    assert states.count("accepted") == mine["invites"]["accepted"] <= mine["capacity"]
    # No place left empty while someone waits.
    assert mine["places_left"] == 0 or "waitlisted" not in states
