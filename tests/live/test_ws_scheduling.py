"""The scheduling notifications (updated, withdrawn, promoted, reminder) reach exactly the
users API.md names, on their sockets through the gateway, in order."""

from __future__ import annotations

import asyncio
import datetime as dt

from ..api import Api
from ..stack import Stack
from .live_support import (
    Sockets,
    activities_of,
    answer_invite,
    connect_pair,
    create_activity,
    invite,
    ok,
)
from .test_ws_delivery import marks, settle_and_check

# The session stack sends reminders 60 minutes (the default) before the start: an activity
# that starts 60 minutes and a few seconds from now is reminded of in a few seconds.
DEFAULT_LEAD = dt.timedelta(minutes=60)


async def test_updates_withdrawals_promotions_and_reminders_reach_the_right_sockets(
    api: Api, stack: Stack, sockets: Sockets
) -> None:
    pro = await api.signup("professional")
    leaving, waiting, pending, uninvited = clients = await asyncio.gather(
        *(api.signup("client") for _ in range(4))
    )
    await asyncio.gather(*(connect_pair(api, pro, c) for c in clients))
    url = stack.gateway_url
    pro_s = await sockets.open(url, pro, label="pro")
    socks = {c.id: await sockets.open(url, c, label=f"client{c.id}") for c in clients}
    before = await marks(api, pro, *clients)

    starts = dt.datetime.now(dt.UTC) + DEFAULT_LEAD + dt.timedelta(seconds=8)
    activity = await create_activity(
        api, pro, title="Circle", capacity=1, waitlist=True, starts_at=starts.isoformat()
    )
    sent = {}
    for client in (leaving, waiting, pending):
        sent[client.id] = await invite(api, pro, activity["id"], client)
        await socks[client.id].wait_count(1)
    accepted = await answer_invite(api, leaving, sent[leaving.id]["id"], "accept")
    await pro_s.wait_count(1)
    waitlisted = await answer_invite(api, waiting, sent[waiting.id]["id"], "accept")
    assert waitlisted["status"] == "waitlisted"
    await pro_s.wait_count(2)
    updated = await ok(
        api.call(
            "PATCH",
            f"/api/activities/{activity['id']}",
            json={"description": "Bring a cushion"},
            token=pro.token,
        )
    )
    for client in (leaving, waiting, pending):
        await socks[client.id].wait_count(2)
    withdrawn = await answer_invite(api, leaving, sent[leaving.id]["id"], "withdraw")
    await pro_s.wait_count(4)
    [promoted] = [i for i in await activities_of(api, waiting) if i["id"] == sent[waiting.id]["id"]]
    assert promoted["status"] == "accepted"

    # The reminder, to the professional and the one accepted client.
    await pro_s.wait_count(5, within=20)
    [reminded] = [a for a in await activities_of(api, pro) if a["id"] == activity["id"]]
    await settle_and_check(
        api,
        {
            pro_s: (
                pro,
                [
                    ("activity.invite_accepted", {"invite": accepted}),
                    ("activity.invite_accepted", {"invite": waitlisted}),
                    ("activity.invite_withdrawn", {"invite": withdrawn}),
                    ("activity.invite_promoted", {"invite": promoted}),
                    ("activity.reminder", {"activity": reminded}),
                ],
            ),
            socks[leaving.id]: (
                leaving,
                [
                    ("activity.invited", {"invite": sent[leaving.id]}),
                    ("activity.updated", {"activity": updated}),
                ],
            ),
            socks[waiting.id]: (
                waiting,
                [
                    ("activity.invited", {"invite": sent[waiting.id]}),
                    ("activity.updated", {"activity": updated}),
                    ("activity.invite_promoted", {"invite": promoted}),
                    ("activity.reminder", {"activity": reminded}),
                ],
            ),
            socks[pending.id]: (
                pending,
                [
                    ("activity.invited", {"invite": sent[pending.id]}),
                    ("activity.updated", {"activity": updated}),
                ],
            ),
            socks[uninvited.id]: (uninvited, []),
        },
        before,
    )
