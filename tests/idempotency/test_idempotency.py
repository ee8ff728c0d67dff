"""Idempotency-Key through the gateway, on SQLite and PostgreSQL: replay, reuse, in flight."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from ..activities.conftest import connected_pair
from ..api import Api, assert_problem, eventually
from ..stack import Stack
from .conftest import keyed, scalar, write_lock

pytestmark = pytest.mark.timeout(180)


def new_key() -> str:
    return uuid.uuid4().hex


async def test_a_retried_create_gets_the_first_answer_and_creates_once(
    api: Api, stack: Stack
) -> None:
    pro = await api.signup("professional")
    key, body = new_key(), {"title": f"Yoga {new_key()[:6]}", "capacity": 3}
    first = await api.call("POST", "/api/activities/", json=body, headers=keyed(pro, key))
    assert first.status == 201, first.text
    assert "Idempotent-Replayed" not in first.headers
    events = "SELECT count(*) FROM outbox WHERE type = 'activity.created'"
    created = await scalar(stack, "activities", events)

    again = await api.call("POST", "/api/activities/", json=body, headers=keyed(pro, key))
    assert again.status == 201
    assert again.text == first.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Content-Type"].startswith("application/json")
    mine = await api.call("GET", "/api/activities/list", token=pro.token)
    assert [a["title"] for a in mine.body] == [body["title"]]
    assert await scalar(stack, "activities", events) == created  # no second event
    rows = "SELECT count(*) FROM idempotency_keys WHERE key = :key"
    assert await scalar(stack, "activities", rows, key=key) == 1

    # The same object serialised differently (key order, spacing) is the same request.
    respaced = b'{ "capacity": 3,  "title": "%s" }' % body["title"].encode()
    headers = {**keyed(pro, key), "Content-Type": "application/json"}
    third = await api.call("POST", "/api/activities", data=respaced, headers=headers)
    assert third.status == 201 and third.text == first.text
    assert third.headers["Idempotent-Replayed"] == "true"


async def test_a_replayed_invite_notifies_the_client_once(api: Api, stack: Stack) -> None:
    pair = await connected_pair(api)
    made = await api.call(
        "POST", "/api/activities/", json={"title": "Pilates"}, token=pair.professional.token
    )
    key = new_key()
    body = {"activity_id": made.body["id"], "client_id": pair.client.id}
    replies = []
    for _ in range(3):
        replies.append(
            await api.call(
                "POST", "/api/activities/invite", json=body, headers=keyed(pair.professional, key)
            )
        )
    assert [r.status for r in replies] == [201, 201, 201], replies[0].text
    assert len({r.text for r in replies}) == 1
    assert [r.headers.get("Idempotent-Replayed") for r in replies] == [None, "true", "true"]

    async def invited() -> list[dict]:
        log = await api.call("GET", "/api/notifications", token=pair.client.token)
        return [n for n in log.body if n["type"] == "activity.invited"]

    assert len(await eventually(invited, within=10)) == 1
    # Without the key, the same invite is refused: the first one really exists, once.
    plain = await api.call(
        "POST", "/api/activities/invite", json=body, token=pair.professional.token
    )
    assert_problem(plain, 409, "already_invited")
    await asyncio.sleep(0.3)  # a duplicate event would have been delivered by now
    assert len(await invited()) == 1


async def test_the_same_key_with_another_request_is_422(api: Api) -> None:
    pro = await api.signup("professional")
    key = new_key()
    first = await api.call(
        "POST", "/api/activities/", json={"title": "One"}, headers=keyed(pro, key)
    )
    assert first.status == 201
    other = await api.call(
        "POST", "/api/activities/", json={"title": "Two"}, headers=keyed(pro, key)
    )
    assert_problem(other, 422, "idempotency_key_reused")
    # Another route (or method, or path) under the key is another request too.
    elsewhere = await api.call(
        "DELETE", f"/api/activities/{first.body['id']}", headers=keyed(pro, key)
    )
    assert_problem(elsewhere, 422, "idempotency_key_reused")
    mine = await api.call("GET", "/api/activities/list", token=pro.token)
    assert [a["title"] for a in mine.body] == ["One"]


async def test_keys_belong_to_their_user(api: Api) -> None:
    alice, bob = await asyncio.gather(api.signup("professional"), api.signup("professional"))
    key, body = new_key(), {"title": "Same"}
    a = await api.call("POST", "/api/activities/", json=body, headers=keyed(alice, key))
    b = await api.call("POST", "/api/activities/", json=body, headers=keyed(bob, key))
    assert a.status == b.status == 201
    assert "Idempotent-Replayed" not in b.headers
    assert b.body["professional_id"] == bob.id != a.body["professional_id"]
    other = await api.call("POST", "/api/activities/", json={"title": "X"}, headers=keyed(bob, key))
    assert_problem(other, 422, "idempotency_key_reused")  # Bob's own record, not Alice's


async def test_a_retried_delete_replays_204(api: Api) -> None:
    pro = await api.signup("professional")
    made = await api.call("POST", "/api/activities/", json={"title": "Gone"}, token=pro.token)
    key, path = new_key(), f"/api/activities/{made.body['id']}"
    first = await api.call("DELETE", path, headers=keyed(pro, key))
    assert first.status == 204
    again = await api.call("DELETE", path, headers=keyed(pro, f'"{key}"'))  # quoted: same key
    assert again.status == 204 and again.text == ""
    assert again.headers["Idempotent-Replayed"] == "true"
    plain = await api.call("DELETE", path, token=pro.token)
    assert_problem(plain, 404, "activity_not_found")


async def test_a_connection_flow_replays_on_every_route(api: Api) -> None:
    client, pro = await asyncio.gather(api.signup("client"), api.signup("professional"))
    asked_key, answer_key, remove_key = new_key(), new_key(), new_key()
    ask = {"professional_id": pro.id}
    asked = [
        await api.call(
            "POST", "/api/connection/request-pro", json=ask, headers=keyed(client, asked_key)
        )
        for _ in range(2)
    ]
    assert [r.status for r in asked] == [201, 201] and asked[0].text == asked[1].text
    answer = {"connection_id": asked[0].body["id"], "action": "accept"}
    answered = [
        await api.call(
            "POST", "/api/connection/respond", json=answer, headers=keyed(pro, answer_key)
        )
        for _ in range(2)
    ]
    assert [r.status for r in answered] == [200, 200], answered[0].text
    assert answered[0].text == answered[1].text
    assert answered[1].headers["Idempotent-Replayed"] == "true"
    path = f"/api/connection/{asked[0].body['id']}"
    removed = [await api.call("DELETE", path, headers=keyed(client, remove_key)) for _ in range(2)]
    assert [r.status for r in removed] == [204, 204]
    assert removed[1].headers["Idempotent-Replayed"] == "true"


async def test_failures_are_not_recorded(api: Api) -> None:
    pro = await api.signup("professional")
    key = new_key()
    bad = await api.call("POST", "/api/activities/", json={"title": ""}, headers=keyed(pro, key))
    assert_problem(bad, 400, "validation_error")
    missing = await api.call("DELETE", "/api/activities/999999", headers=keyed(pro, new_key()))
    assert_problem(missing, 404)
    # The key is still free: a corrected request under it runs.
    good = await api.call("POST", "/api/activities/", json={"title": "Ok"}, headers=keyed(pro, key))
    assert good.status == 201 and "Idempotent-Replayed" not in good.headers


@pytest.mark.parametrize(
    "value",
    ["", '""', "x" * 256, "has space", "caf\u00e9", '"unbalanced', "tab\there"],
)
async def test_a_malformed_key_is_400(api: Api, value: str) -> None:
    pro = await api.signup("professional")
    headers = {"Authorization": f"Bearer {pro.token}"}
    raw = value.encode("utf-8").decode("latin-1")
    reply = await api.call(
        "POST", "/api/activities/", json={"title": "t"}, headers={**headers, "Idempotency-Key": raw}
    )
    assert_problem(reply, 400, "invalid_idempotency_key")
    mine = await api.call("GET", "/api/activities/list", token=pro.token)
    assert mine.body == []


async def test_a_key_of_255_characters_is_fine(api: Api) -> None:
    pro = await api.signup("professional")
    key = "k" * 251 + new_key()[:4]
    replies = [
        await api.call("POST", "/api/activities/", json={"title": "Long"}, headers=keyed(pro, key))
        for _ in range(2)
    ]
    assert [r.status for r in replies] == [201, 201]
    assert replies[1].headers["Idempotent-Replayed"] == "true"


async def test_a_duplicate_while_the_first_runs_is_409(api: Api, stack: Stack) -> None:
    pro = await api.signup("professional")
    key, body = new_key(), {"title": "Held"}

    def send() -> asyncio.Task:
        return asyncio.ensure_future(
            api.call("POST", "/api/activities/", json=body, headers=keyed(pro, key))
        )

    async with write_lock(stack, "activities"):
        # Both reach the service while its write cannot finish: one runs (and waits for
        # the lock), the other finds the key in flight.
        first, second = send(), send()
        done, _ = await asyncio.wait([first, second], return_when=asyncio.FIRST_COMPLETED)
        refused = done.pop().result()
        assert_problem(refused, 409, "idempotency_key_in_flight")
        assert refused.headers["Retry-After"]
        waiting = second if first.done() else first
        assert not waiting.done()
    ran = await waiting
    assert ran.status == 201, ran.text
    after = await api.call("POST", "/api/activities/", json=body, headers=keyed(pro, key))
    assert after.status == 201 and after.text == ran.text
    assert after.headers["Idempotent-Replayed"] == "true"


async def test_signup_replays_without_storing_tokens_readably(api: Api, stack: Stack) -> None:
    key = new_key()
    body = {
        "name": "Replay",
        "email": f"replay-{key[:10]}@example.com",
        "password": "correct horse battery",
        "role": "client",
    }
    first = await api.call("POST", "/api/auth/signup", json=body, headers=keyed(None, key))
    assert first.status == 201, first.text
    again = await api.call("POST", "/api/auth/signup", json=body, headers=keyed(None, key))
    assert again.status == 201 and again.text == first.text
    assert again.headers["Idempotent-Replayed"] == "true"
    users = "SELECT count(*) FROM users WHERE email = :email"
    assert await scalar(stack, "auth", users, email=body["email"]) == 1
    stored = await scalar(
        stack, "auth", "SELECT body FROM idempotency_keys WHERE key = :key", key=key
    )
    assert first.body["refresh_token"] not in stored and first.body["token"] not in stored
    assert body["email"] not in stored
    # Another body under the key is refused, without saying anything about the first.
    other = {**body, "password": "another password!"}
    reused = await api.call("POST", "/api/auth/signup", json=other, headers=keyed(None, key))
    assert_problem(reused, 422, "idempotency_key_reused")
    assert await scalar(stack, "auth", users, email=body["email"]) == 1


async def test_a_retried_refresh_replays_instead_of_revoking_the_session(api: Api) -> None:
    account = await api.signup("client")
    key, body = new_key(), {"refresh_token": account.refresh_token}
    first = await api.call("POST", "/api/auth/refresh", json=body, headers=keyed(None, key))
    assert first.status == 200, first.text
    again = await api.call("POST", "/api/auth/refresh", json=body, headers=keyed(None, key))
    assert again.status == 200 and again.text == first.text
    assert again.headers["Idempotent-Replayed"] == "true"
    # Not taken for a reuse of the rotated token: the new session still works.
    me = await api.call("GET", "/api/auth/me", token=first.body["token"])
    assert me.status == 200
    nxt = await api.call(
        "POST", "/api/auth/refresh", json={"refresh_token": first.body["refresh_token"]}
    )
    assert nxt.status == 200


async def test_the_remaining_routes_replay(api: Api, stack: Stack) -> None:
    """invite-client, activities respond, login and logout, each retried under its key."""
    pro, client = await asyncio.gather(api.signup("professional"), api.signup("client"))
    invite = {"client_email": client.user["email"]}
    k1 = new_key()
    invited = [
        await api.call("POST", "/api/connection/invite-client", json=invite, headers=keyed(pro, k1))
        for _ in range(2)
    ]
    assert [r.status for r in invited] == [201, 201] and invited[0].text == invited[1].text
    accept = {"connection_id": invited[0].body["id"], "action": "accept"}
    accepted = await api.call("POST", "/api/connection/respond", json=accept, token=client.token)
    assert accepted.status == 200, accepted.text
    made = await api.call("POST", "/api/activities/", json={"title": "Run"}, token=pro.token)
    ask = {"activity_id": made.body["id"], "client_id": client.id}
    sent = await api.call("POST", "/api/activities/invite", json=ask, token=pro.token)
    assert sent.status == 201, sent.text
    answer, k2 = {"invite_id": sent.body["id"], "action": "accept"}, new_key()
    answered = [
        await api.call("POST", "/api/activities/respond", json=answer, headers=keyed(client, k2))
        for _ in range(2)
    ]
    assert [r.status for r in answered] == [200, 200], answered[0].text
    assert answered[0].text == answered[1].text and answered[0].body["status"] == "accepted"
    assert answered[1].headers["Idempotent-Replayed"] == "true"

    login, k3 = {"email": client.user["email"], "password": client.password}, new_key()
    logged = [
        await api.call("POST", "/api/auth/login", json=login, headers=keyed(None, k3))
        for _ in range(2)
    ]
    assert [r.status for r in logged] == [200, 200] and logged[0].text == logged[1].text
    sessions = "SELECT count(*) FROM refresh_tokens WHERE user_id = :uid"
    assert await scalar(stack, "auth", sessions, uid=client.id) == 2  # signup + one login
    k4 = new_key()
    session = {"Authorization": f"Bearer {logged[0].body['token']}", "Idempotency-Key": k4}
    out = await api.call("POST", "/api/auth/logout", json={}, headers=session)
    assert out.status == 204, out.text
    # Once logged out the token is revoked, and a revoked token gets nothing, not even
    # a replay.
    again = await api.call("POST", "/api/auth/logout", json={}, headers=session)
    assert_problem(again, 401)


def test_every_recorded_answer_was_the_real_one(stack: Stack) -> None:
    """Runs last in this module: no service had to correct a record made in a transaction
    (the route's declared answer always matched what the handler sent)."""
    for name in ("auth", "connections", "activities"):
        assert "idempotency:" not in stack.log_path(name).read_text(), stack.logs(name)
