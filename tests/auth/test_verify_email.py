"""Verified addresses: the mail on sign-up, POST /api/auth/verify-email, the resend, the event.

Codes and links are read from the mail the stack's SMTP sink received.
"""

from __future__ import annotations

import asyncio
import re

import redis.asyncio as aioredis

from services.common.consumer import decode_entry

from ..api import Account, Api, assert_problem, unique_email
from ..mailbox import VERIFY_SUBJECT, Inbox, code_of, html_of, link_value, text_of
from .auth_support import assert_validation

RESEND = "/api/auth/verify-email/resend"


async def verify_with(api: Api, token: object) -> object:
    return await api.call("POST", "/api/auth/verify-email", json={"token": token})


async def me(api: Api, account: Account) -> dict:
    reply = await api.call("GET", "/api/auth/me", token=account.token)
    assert reply.status == 200, reply.text
    return reply.body


async def test_sign_up_is_unverified_and_mails_a_code_and_link(api: Api, inbox: Inbox) -> None:
    account = await api.signup("client", name="Zoë <b>Tester</b>")
    assert account.user["email_verified"] is False
    assert (await me(api, account))["email_verified"] is False
    message = await inbox.latest(account.user["email"], VERIFY_SUBJECT)
    assert message["From"] and message["Message-ID"] and message["Date"]
    code = code_of(message)
    # The link carries the same token in a fragment (never sent to a server's access log).
    assert link_value(message, "verify") == code
    assert re.search(r"http://hc\.test\.example/#verify=\S+", text_of(message))
    assert "valid for 24 hours" in text_of(message)
    html = html_of(message)
    assert "Zoë &lt;b&gt;Tester&lt;/b&gt;" in html and "<b>Tester" not in html
    assert f"#verify={code}" in html


async def test_verify_with_the_code_then_it_is_spent(api: Api, inbox: Inbox) -> None:
    account = await api.signup("professional")
    code = code_of(await inbox.latest(account.user["email"], VERIFY_SUBJECT))
    reply = await verify_with(api, code)
    assert reply.status == 200, reply.text
    assert reply.body == {**account.user, "email_verified": True}
    assert (await me(api, account))["email_verified"] is True
    # Single use: the same code again, however written, is an invalid token.
    assert_problem(await verify_with(api, code), 400, "invalid_token")


async def test_verify_is_anonymous_and_refuses_unknown_tokens(api: Api) -> None:
    for token in ("x", "A" * 43, "A" * 200, "nonexistent-token-" + unique_email()):
        assert_problem(await verify_with(api, token), 400, "invalid_token")


async def test_verify_validation(api: Api) -> None:
    for body in ({}, {"token": ""}, {"token": 5}, {"token": None}, {"token": "x" * 201}):
        reply = await api.call("POST", "/api/auth/verify-email", json=body)
        assert_validation(reply, "token")


async def test_resend_sends_a_new_code_and_both_work_until_one_is_used(
    api: Api, inbox: Inbox
) -> None:
    account = await api.signup("client")
    email = account.user["email"]
    first = code_of(await inbox.latest(email, VERIFY_SUBJECT))
    reply = await api.call("POST", RESEND, token=account.token)
    assert reply.status == 202, reply.text
    assert reply.text == ""
    messages = await inbox.wait(email, VERIFY_SUBJECT, count=2)
    second = code_of(messages[1])
    assert second != first
    assert (await verify_with(api, second)).status == 200
    # Verified: every other code of the account is spent.
    assert_problem(await verify_with(api, first), 400, "invalid_token")


async def test_resend_when_verified_is_409(api: Api, inbox: Inbox) -> None:
    account = await api.signup("client")
    code = code_of(await inbox.latest(account.user["email"], VERIFY_SUBJECT))
    assert (await verify_with(api, code)).status == 200
    assert_problem(await api.call("POST", RESEND, token=account.token), 409, "already_verified")


async def test_resend_more_than_3_an_hour_is_429(api: Api, inbox: Inbox) -> None:
    account = await api.signup("client")
    for _ in range(3):
        assert (await api.call("POST", RESEND, token=account.token)).status == 202
    reply = await api.call("POST", RESEND, token=account.token)
    assert_problem(reply, 429, "rate_limited")
    retry = int(reply.headers["Retry-After"])
    assert 3500 <= retry <= 3601
    # 1 from the sign-up and 3 resends; the refused one sent nothing.
    await asyncio.sleep(0.5)
    assert len(await inbox.wait(account.user["email"], VERIFY_SUBJECT, count=4)) == 4
    assert len(inbox.messages(account.user["email"], VERIFY_SUBJECT)) == 4


async def test_resend_needs_a_token(api: Api) -> None:
    for token in (None, "garbage"):
        assert_problem(await api.call("POST", RESEND, token=token), 401)


async def test_verification_publishes_user_email_verified_without_secrets(
    api: Api, inbox: Inbox, stack_redis: aioredis.Redis
) -> None:
    last = await stack_redis.xrevrange("auth.events", count=1)
    mark = last[0][0].decode() if last else "0-0"
    account = await api.signup("client")
    code = code_of(await inbox.latest(account.user["email"], VERIFY_SUBJECT))
    assert (await verify_with(api, code)).status == 200
    entries = await stack_redis.xrange("auth.events", min=f"({mark}", max="+")
    events = [decode_entry(fields) for _, fields in entries]
    mine = [e for e in events if e.data.user.id == account.id]
    assert [e.type for e in mine] == ["user.registered", "user.email_verified"]
    assert mine[0].data.user.email_verified is False
    assert mine[1].data.user.email_verified is True
    assert mine[1].recipient_ids == []
    # Secrets never travel on the shared streams.
    raw = b"".join(v for _, fields in entries for v in fields.values())
    assert code.encode() not in raw


async def test_the_directory_and_login_show_the_flag(api: Api, inbox: Inbox) -> None:
    pro = await api.signup("professional")
    code = code_of(await inbox.latest(pro.user["email"], VERIFY_SUBJECT))
    await verify_with(api, code)
    login = await api.login(pro.user["email"], pro.password)
    assert login.body["user"]["email_verified"] is True
    listed = await api.call("GET", "/api/users?role=professional&limit=200", token=pro.token)
    (found,) = [u for u in listed.body if u["id"] == pro.id]
    assert found["email_verified"] is True


async def test_two_concurrent_uses_of_one_code_verify_once(api: Api, inbox: Inbox) -> None:
    account = await api.signup("client")
    code = code_of(await inbox.latest(account.user["email"], VERIFY_SUBJECT))
    replies = await asyncio.gather(*(verify_with(api, code) for _ in range(5)))
    assert sorted(r.status for r in replies) == [200, 400, 400, 400, 400]
