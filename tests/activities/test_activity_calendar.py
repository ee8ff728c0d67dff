"""Calendar feeds through the gateway, parsed back with icalendar and with vobject."""

from __future__ import annotations

import datetime as dt
from typing import Any

import icalendar
import pytest
import vobject

from ..api import Account, Api, assert_problem
from ..stack import PUBLIC_URL
from .conftest import connected_clients, create, delete, invite, respond

UTC = dt.UTC


def later(days: int) -> str:
    return (dt.datetime.now(UTC) + dt.timedelta(days=days)).replace(microsecond=0).isoformat()


async def ics(api: Api, path: str, account: Account | None = None) -> str:
    reply = await api.call("GET", path, token=account.token if account else None)
    assert reply.status == 200, reply.text
    assert reply.headers["Content-Type"].startswith("text/calendar"), reply.headers
    return reply.text


def by_uid_icalendar(text: str) -> dict[str, Any]:
    cal = icalendar.Calendar.from_ical(text)
    assert str(cal["VERSION"]) == "2.0" and cal["PRODID"]
    return {str(e["UID"]): e for e in cal.walk("VEVENT")}


def by_uid_vobject(text: str) -> dict[str, Any]:
    cal = vobject.readOne(text)
    return {e.uid.value: e for e in getattr(cal, "vevent_list", [])}


def uid(activity: dict[str, Any]) -> str:
    return f"activity-{activity['id']}@healthconnect"


def parsed_utc(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


async def test_professional_and_client_calendars(api: Api) -> None:
    pro = await api.signup("professional", name="Dr Ada, MD")
    accepted, pending, withdrawn = await connected_clients(api, pro, 3)
    yoga = await create(
        api, pro, title="Yoga; in the park", description="Mats, water\nand a towel",
        starts_at="2031-05-06T09:30:00+02:00", duration_minutes=90, capacity=5,
    )  # fmt: skip
    walk = await create(api, pro, title="Walk", starts_at=later(10))
    await create(api, pro, title="No start yet")  # not in any calendar
    for activity in (yoga, walk):
        sent = {
            c.id: await invite(api, pro, activity["id"], c) for c in (accepted, pending, withdrawn)
        }
        await respond(api, accepted, sent[accepted.id]["id"], "accept")
        await respond(api, withdrawn, sent[withdrawn.id]["id"], "accept")
        await respond(api, withdrawn, sent[withdrawn.id]["id"], "withdraw")

    mine = await ics(api, "/api/calendar.ics", pro)
    for parse in (by_uid_icalendar, by_uid_vobject):
        assert set(parse(mine)) == {uid(yoga), uid(walk)}
    event = by_uid_icalendar(mine)[uid(yoga)]
    assert event["DTSTART"].dt == dt.datetime(2031, 5, 6, 7, 30, tzinfo=UTC)
    assert event["DTEND"].dt == dt.datetime(2031, 5, 6, 9, 0, tzinfo=UTC)
    assert str(event["SUMMARY"]) == "Yoga; in the park"
    assert str(event["DESCRIPTION"]) == "Mats, water\nand a towel"
    assert str(event["STATUS"]) == "CONFIRMED"
    assert int(event["SEQUENCE"]) == 0
    assert str(event["ORGANIZER"]) == f"mailto:{pro.user['email']}"
    assert event["ORGANIZER"].params["CN"] == "Dr Ada, MD"
    assert event["LAST-MODIFIED"].dt == parsed_utc(yoga["created_at"]).replace(microsecond=0)
    assert event["DTSTAMP"].dt.tzinfo is not None
    v = by_uid_vobject(mine)[uid(yoga)]
    assert v.dtstart.value == dt.datetime(2031, 5, 6, 7, 30, tzinfo=UTC)
    assert v.dtend.value == dt.datetime(2031, 5, 6, 9, 0, tzinfo=UTC)
    assert v.summary.value == "Yoga; in the park"
    assert v.organizer.value == f"mailto:{pro.user['email']}"
    assert v.organizer.params["CN"] == ["Dr Ada, MD"]

    # Clients: accepted ones only.
    assert set(by_uid_icalendar(await ics(api, "/api/calendar.ics", accepted))) == {
        uid(yoga),
        uid(walk),
    }
    for other in (pending, withdrawn):
        assert by_uid_icalendar(await ics(api, "/api/calendar.ics", other)) == {}

    # A change raises SEQUENCE; a deletion keeps the event, cancelled.
    reply = await api.call(
        "PATCH", f"/api/activities/{yoga['id']}", json={"title": "Yoga indoors"}, token=pro.token
    )
    assert reply.status == 200, reply.text
    await delete(api, pro, walk["id"])
    for account in (pro, accepted):
        text = await ics(api, "/api/calendar.ics", account)
        events = by_uid_icalendar(text)
        assert (str(events[uid(yoga)]["SUMMARY"]), int(events[uid(yoga)]["SEQUENCE"])) == (
            "Yoga indoors",
            1,
        )
        assert str(events[uid(walk)]["STATUS"]) == "CANCELLED"
        assert int(events[uid(walk)]["SEQUENCE"]) == 1
        assert events[uid(yoga)]["LAST-MODIFIED"].dt > event["LAST-MODIFIED"].dt - dt.timedelta(
            seconds=1
        )
        vevents = by_uid_vobject(text)
        assert vevents[uid(walk)].status.value == "CANCELLED"
        assert vevents[uid(yoga)].sequence.value == "1"


async def test_secret_feed_rotates_and_needs_no_token(api: Api) -> None:
    pro = await api.signup("professional")
    [client] = await connected_clients(api, pro, 1)
    session = await create(api, pro, title="Feed", starts_at=later(3))
    await respond(api, client, (await invite(api, pro, session["id"], client))["id"], "accept")

    reply = await api.call("POST", "/api/calendar/feed", token=client.token)
    assert reply.status == 201, reply.text
    url = reply.body["url"]
    assert url.startswith(f"{PUBLIC_URL}/api/calendar/") and url.endswith(".ics")
    path = url.removeprefix(PUBLIC_URL)
    assert set(by_uid_vobject(await ics(api, path))) == {uid(session)}  # no token
    assert await ics(api, path) == await ics(api, "/api/calendar.ics", client)

    rotated = (await api.call("POST", "/api/calendar/feed", token=client.token)).body["url"]
    assert rotated != url
    assert_problem(await api.call("GET", path), 404, "feed_not_found")
    new_path = rotated.removeprefix(PUBLIC_URL)
    assert set(by_uid_icalendar(await ics(api, new_path))) == {uid(session)}
    # Each user's feed is their own.
    pro_url = (await api.call("POST", "/api/calendar/feed", token=pro.token)).body["url"]
    assert pro_url != rotated
    assert set(by_uid_icalendar(await ics(api, pro_url.removeprefix(PUBLIC_URL)))) == {uid(session)}


@pytest.mark.parametrize(
    "path",
    [
        "/api/calendar/" + "A" * 43 + ".ics",
        "/api/calendar/short.ics",
        "/api/calendar/%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00.ics",
    ],
)
async def test_unknown_feeds_are_404_and_say_nothing(api: Api, path: str) -> None:
    reply = await api.call("GET", path)
    assert reply.status == 404, reply.text
    assert reply.headers["Content-Type"].startswith("application/problem+json")


async def test_calendar_routes_need_a_token(api: Api) -> None:
    assert_problem(await api.call("GET", "/api/calendar.ics"), 401)
    assert_problem(await api.call("POST", "/api/calendar/feed"), 401)
    # The feed path takes GET only; anything else is a call that needs a token first.
    assert_problem(await api.call("POST", "/api/calendar/" + "A" * 43 + ".ics"), 401)


def test_feed_secrets_stay_out_of_the_access_log() -> None:
    from aiohttp.test_utils import make_mocked_request

    from services.common.web import redacted_path

    secret = "s3cr3tXYZabcdefghijklmnopqrstuvwxyz0123456"
    logged = redacted_path(make_mocked_request("GET", f"/api/calendar/{secret}.ics?x=1"))
    assert logged == "/api/calendar/s3cr3t....ics?x=1"
    assert redacted_path(make_mocked_request("GET", "/api/calendar.ics")) == "/api/calendar.ics"
