"""The demo page drives scheduling in headless Chromium: create with a waitlist, edit,
withdraw, the waitlist position, places left, reminders in the live feed, the calendar link."""

from __future__ import annotations

import datetime as dt
import json

import aiohttp
import pytest
from playwright.async_api import Page, async_playwright, expect

from ..activities.conftest import connect
from ..api import Account, Api
from .test_demo_page import CHROMIUM_ARGS, WAIT, Watch, _activity, _chromium, _feed, _invite


async def _open_as(page: Page, base: str, account: Account) -> None:
    """The page signed in as `account` (its session put where the page keeps it)."""
    await page.goto(base + "/")
    await page.evaluate(
        """([token, refresh, user]) => {
            sessionStorage.setItem('hc.token', token);
            sessionStorage.setItem('hc.refresh', refresh);
            sessionStorage.setItem('hc.user', user);
        }""",
        [account.token, account.refresh_token, json.dumps(account.user)],
    )
    await page.goto(base + "/")
    await expect(page.get_by_test_id("ws-state")).to_have_attribute(
        "data-state", "connected", timeout=WAIT
    )


async def test_scheduling_on_the_demo_page(
    backend: str, request: pytest.FixtureRequest, http: aiohttp.ClientSession
) -> None:
    if backend != "sqlite":
        pytest.skip("the page does not depend on the database: one backend is enough")
    executable = _chromium()
    stack = request.getfixturevalue("stack")
    base = stack.gateway_url
    api = Api(http, base)
    pro = await api.signup("professional", name="Dr Ada")
    first = await api.signup("client", name="First Client")
    second = await api.signup("client", name="Second Client")
    for client in (first, second):
        await connect(api, pro, client)

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            pages = {}
            for name, account in (("pro", pro), ("first", first), ("second", second)):
                context = await browser.new_context(
                    viewport={"width": 1200, "height": 900}, timezone_id="Europe/Paris"
                )
                pages[name] = await context.new_page()
                await _open_as(pages[name], base, account)
            a, b, c = pages["pro"], pages["first"], pages["second"]
            watches = [Watch(page, base) for page in (a, b, c)]

            # Create: one place, a waitlist, a start tomorrow, typed in the browser's local time.
            title = "Circle"
            starts = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
            local = await a.evaluate(
                "(iso) => { const d = new Date(iso); return new Date(d.getTime() - "
                "d.getTimezoneOffset() * 60000).toISOString().slice(0, 16); }",
                starts.isoformat(),
            )
            await a.get_by_test_id("activity-title").fill(title)
            await a.get_by_test_id("activity-starts").fill(local)
            await a.get_by_test_id("activity-capacity").fill("1")
            await a.get_by_test_id("activity-duration").fill("45")
            await a.get_by_test_id("activity-waitlist").check()
            await a.get_by_test_id("activity-submit").click()
            mine = _activity(a, title)
            await expect(mine.get_by_test_id("activity-places-left")).to_have_text(
                "1 places left", timeout=WAIT
            )
            await expect(mine).to_contain_text("45 min")
            [listed] = (await api.call("GET", "/api/activities/list", token=pro.token)).body
            for client in (first, second):
                reply = await api.call(
                    "POST",
                    "/api/activities/invite",
                    json={"activity_id": listed["id"], "client_id": client.id},
                    token=pro.token,
                )
                assert reply.status == 201, reply.text

            # The first takes the place, the second goes on the waitlist.
            await _invite(b, title).get_by_test_id("invite-accept").click(timeout=WAIT)
            await expect(_invite(b, title).get_by_test_id("invite-status")).to_have_text(
                "accepted", timeout=WAIT
            )
            await _invite(c, title).get_by_test_id("invite-accept").click(timeout=WAIT)
            await expect(_invite(c, title).get_by_test_id("invite-status")).to_have_text(
                "waitlisted", timeout=WAIT
            )
            await expect(_invite(c, title).get_by_test_id("invite-waitlist-position")).to_have_text(
                "#1 on the waitlist"
            )
            await expect(mine.get_by_test_id("activity-places-left")).to_have_text(
                "0 places left", timeout=WAIT
            )

            # The professional edits it; both clients hear of it live.
            await mine.get_by_test_id("activity-edit").locator("summary").click()
            await mine.get_by_test_id("activity-edit-title").fill("Circle, moved indoors")
            await mine.get_by_test_id("activity-edit-submit").click()
            title = "Circle, moved indoors"
            await expect(_activity(a, title)).to_be_visible(timeout=WAIT)
            for page in (b, c):
                await expect(_feed(page, "activity.updated", title)).to_have_count(1, timeout=WAIT)

            # The first withdraws: the second gets the place at once.
            await _invite(b, title).get_by_test_id("invite-withdraw").click()
            await expect(_invite(b, title).get_by_test_id("invite-status")).to_have_text(
                "withdrawn", timeout=WAIT
            )
            await expect(_invite(c, title).get_by_test_id("invite-status")).to_have_text(
                "accepted", timeout=WAIT
            )
            await expect(_feed(c, "activity.invite_promoted", title)).to_have_count(1, timeout=WAIT)
            await expect(_feed(a, "activity.invite_withdrawn", title)).to_have_count(
                1, timeout=WAIT
            )

            # A reminder shows in the live feed of the professional and the accepted client
            # (one that starts 60 minutes and 8 s from now: the default reminder is due in 8 s).
            soon = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=60, seconds=8)
            reply = await api.call(
                "POST",
                "/api/activities/",
                json={"title": "Check-in", "starts_at": soon.isoformat()},
                token=pro.token,
            )
            assert reply.status == 201, reply.text
            check_in = reply.body["id"]
            reply = await api.call(
                "POST",
                "/api/activities/invite",
                json={"activity_id": check_in, "client_id": second.id},
                token=pro.token,
            )
            assert reply.status == 201, reply.text
            await _invite(c, "Check-in").get_by_test_id("invite-accept").click(timeout=WAIT)
            for page in (a, c):
                await expect(_feed(page, "activity.reminder", "Check-in")).to_have_count(
                    1, timeout=20_000
                )
            await expect(_feed(b, "activity.reminder")).to_have_count(0)

            # "Subscribe in your calendar": a webcal link to the secret feed.
            await c.get_by_test_id("calendar-subscribe").click()
            link = c.get_by_test_id("calendar-link")
            await expect(link).to_be_visible(timeout=WAIT)
            href = await link.get_attribute("href")
            url = await link.text_content()
            assert href and href.startswith("webcal://"), href
            assert url and url.endswith(".ics")
            path = url[url.index("/api/calendar/") :]
            feed = await api.call("GET", path)
            assert feed.status == 200 and "BEGIN:VEVENT" in feed.text, feed.text
            assert "SUMMARY:Circle\\, moved indoors" in feed.text

            for page in (a, b, c):
                await expect(page.get_by_test_id("error")).to_be_hidden()
            for watch in watches:
                assert not watch.problems, watch.problems
        finally:
            await browser.close()
