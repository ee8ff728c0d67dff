"""Events on `activities.events`: one per change, with the type and recipients of API.md."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from services.common.events import Event

from ..api import Api
from .conftest import (
    about,
    connected_pair,
    create,
    delete,
    invite,
    invite_reply,
    remove_connection,
    respond,
    respond_reply,
    stream_mark,
    wait_events,
)


def as_json(model: Any) -> Any:
    return model.model_dump(mode="json")


def summary(event: Event) -> tuple[str, list[int], int | None]:
    invite = getattr(event.data, "invite", None)
    return event.type, sorted(event.recipient_ids), invite.id if invite else None


async def test_each_change_publishes_one_event(api: Api, stack_redis: aioredis.Redis) -> None:
    pair = await connected_pair(api)
    pro, accepting = pair.professional, pair.client
    declining = (await connected_pair(api, pro)).client
    waiting = (await connected_pair(api, pro)).client
    mark = await stream_mark(stack_redis)

    activity = await create(api, pro, title="Evented", capacity=5)
    inv_a = await invite(api, pro, activity["id"], accepting)
    inv_d = await invite(api, pro, activity["id"], declining)
    inv_w = await invite(api, pro, activity["id"], waiting)
    ans_a = await respond(api, accepting, inv_a["id"], "accept")
    ans_d = await respond(api, declining, inv_d["id"], "decline")
    await delete(api, pro, activity["id"])

    expected = [
        ("activity.created", [], None),
        ("activity.invited", [accepting.id], inv_a["id"]),
        ("activity.invited", [declining.id], inv_d["id"]),
        ("activity.invited", [waiting.id], inv_w["id"]),
        ("activity.invite_accepted", [pro.id], inv_a["id"]),
        ("activity.invite_declined", [pro.id], inv_d["id"]),
        ("activity.cancelled", sorted([accepting.id, waiting.id]), None),
    ]
    events = await wait_events(stack_redis, mark, about(activity["id"]), len(expected))
    assert [summary(e) for e in events] == expected
    for event in events:
        assert event.producer == "activities"
        assert event.occurred_at is not None
    assert len({e.event_id for e in events}) == len(events)

    created, invited_a, invited_d, invited_w, accepted, declined, cancelled = events
    assert as_json(created.data.activity) == activity
    assert as_json(invited_a.data.invite) == inv_a
    assert as_json(invited_d.data.invite) == inv_d
    assert as_json(invited_w.data.invite) == inv_w
    assert as_json(accepted.data.invite) == ans_a
    assert as_json(declined.data.invite) == ans_d
    assert cancelled.data.activity.id == activity["id"]


async def test_refused_changes_publish_nothing(api: Api, stack_redis: aioredis.Redis) -> None:
    pair = await connected_pair(api)
    pro, client = pair.professional, pair.client
    second = (await connected_pair(api, pro)).client
    activity = await create(api, pro, capacity=1)
    first_invite = await invite(api, pro, activity["id"], client)
    second_invite = await invite(api, pro, activity["id"], second)
    await respond(api, client, first_invite["id"], "accept")
    mark = await stream_mark(stack_redis)

    assert (await invite_reply(api, pro, activity["id"], client.id)).status == 409
    assert (await respond_reply(api, client, first_invite["id"], "decline")).status == 409
    assert (await respond_reply(api, second, second_invite["id"], "accept")).status == 409
    stranger = await api.signup("client")
    assert (await respond_reply(api, stranger, second_invite["id"], "accept")).status == 404

    # A change after the refusals: its event is the first one about this activity.
    await respond(api, second, second_invite["id"], "decline")
    events = await wait_events(stack_redis, mark, about(activity["id"]), 1)
    assert [summary(e) for e in events] == [
        ("activity.invite_declined", [pro.id], second_invite["id"])
    ]


async def test_removal_publishes_invite_cancelled_per_invite(
    api: Api, stack_redis: aioredis.Redis
) -> None:
    pair = await connected_pair(api)
    pro, client = pair.professional, pair.client
    first = await create(api, pro, title="First")
    second = await create(api, pro, title="Second")
    i1 = await invite(api, pro, first["id"], client)
    i2 = await invite(api, pro, second["id"], client)
    mark = await stream_mark(stack_redis)
    await remove_connection(api, pro, pair.connection_id)
    events = await wait_events(stack_redis, mark, about(first["id"], second["id"]), 2)
    assert sorted(summary(e) for e in events) == sorted(
        [
            ("activity.invite_cancelled", [client.id], i1["id"]),
            ("activity.invite_cancelled", [client.id], i2["id"]),
        ]
    )
    for event in events:
        assert event.data.invite.status == "cancelled"
        assert event.data.invite.activity.id in (first["id"], second["id"])
