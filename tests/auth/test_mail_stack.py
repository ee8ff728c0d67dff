"""On a stack of its own (tests/auth/conftest.py `mail_stack`): per-IP throttles through the
real client address, the SMTP server down for a while, and no secret in any log line."""

from __future__ import annotations

import asyncio
import random
import re
import time
from typing import Any

import aiohttp
import pytest

from ..api import Account, Api, assert_problem, unique_email
from ..mailbox import RESET_SUBJECT, VERIFY_SUBJECT, Inbox, code_of, link_value
from ..stack import Stack
from .conftest import MAIL_IP_LIMIT

PASSWORD = "mail stack passphrase"


def random_ip() -> str:
    return f"198.18.{random.randint(0, 255)}.{random.randint(1, 254)}"


async def signup_from(
    auth: Api, ip: str, email: str | None = None, role: str = "client"
) -> tuple[int, Any]:
    body = {"name": "M", "email": email or unique_email(), "password": PASSWORD, "role": role}
    reply = await auth.call("POST", "/api/auth/signup", json=body, headers={"X-Forwarded-For": ip})
    return reply.status, reply


@pytest.fixture
def auth(http: aiohttp.ClientSession, mail_stack: Stack) -> Api:
    """Auth straight, which believes X-Forwarded-For from 127.0.0.1 (as from the gateway)."""
    return Api(http, mail_stack.service_url("auth"))


@pytest.fixture
def gateway(http: aiohttp.ClientSession, mail_stack: Stack) -> Api:
    return Api(http, mail_stack.gateway_url)


async def account_from(auth: Api, ip: str, role: str = "client") -> Account:
    status, reply = await signup_from(auth, ip, role=role)
    assert status == 201, reply.text
    body = reply.body
    return Account(body["user"], body["token"], body["refresh_token"], PASSWORD)


async def test_signups_per_client_ip_are_limited(auth: Api) -> None:
    ip = random_ip()
    for _ in range(MAIL_IP_LIMIT):
        assert (await signup_from(auth, ip))[0] == 201
    _, reply = await signup_from(auth, ip)
    assert_problem(reply, 429, "rate_limited")
    assert int(reply.headers["Retry-After"]) > 3000
    assert (await signup_from(auth, random_ip()))[0] == 201  # another address is free


async def test_signups_per_address_are_limited(auth: Api) -> None:
    email = unique_email("taken")
    statuses = [(await signup_from(auth, random_ip(), email))[0] for _ in range(11)]
    assert statuses == [201] + [409] * 9 + [429]


async def test_resends_per_client_ip_are_limited(auth: Api) -> None:
    ip = random_ip()
    accounts = [await account_from(auth, random_ip()) for _ in range(MAIL_IP_LIMIT + 1)]
    statuses = []
    for account in accounts:
        reply = await auth.call(
            "POST",
            "/api/auth/verify-email/resend",
            token=account.token,
            headers={"X-Forwarded-For": ip},
        )
        statuses.append(reply.status)
    assert statuses == [202] * MAIL_IP_LIMIT + [429]


async def test_resets_per_client_ip_are_limited(auth: Api) -> None:
    ip = random_ip()
    statuses = []
    for _ in range(MAIL_IP_LIMIT + 1):
        reply = await auth.call(
            "POST",
            "/api/auth/password-reset",
            json={"email": unique_email("who")},
            headers={"X-Forwarded-For": ip},
        )
        statuses.append(reply.status)
    assert statuses == [202] * MAIL_IP_LIMIT + [429]


async def test_smtp_server_down_for_a_while(mail_stack: Stack, auth: Api) -> None:
    """Requests are not slowed while the server is down; once it is back every message goes
    out, exactly once."""
    inbox = Inbox(mail_stack.mail_dir)
    ip = random_ip()
    baseline = []
    for _ in range(3):
        started = time.perf_counter()
        await account_from(auth, ip)
        baseline.append(time.perf_counter() - started)
    mail_stack.stop_process("mailsink")
    try:
        emails, took = [], []
        for _ in range(4):
            started = time.perf_counter()
            account = await account_from(auth, random_ip())
            took.append(time.perf_counter() - started)
            emails.append(account.user["email"])
        reset = await auth.call(
            "POST",
            "/api/auth/password-reset",
            json={"email": emails[0]},
            headers={"X-Forwarded-For": random_ip()},
        )
        assert reset.status == 202
        await asyncio.sleep(3)  # several tries fail meanwhile
        assert all(inbox.messages(e) == [] for e in emails)
    finally:
        mail_stack.start_mailsink()
    assert max(took) < max(baseline) + 0.5, (took, baseline)
    for email in emails:
        await inbox.wait(email, VERIFY_SUBJECT, within=20)
    await inbox.wait(emails[0], RESET_SUBJECT, within=20)
    await asyncio.sleep(2)  # nothing goes out twice
    for email in emails:
        assert len(inbox.messages(email, VERIFY_SUBJECT)) == 1
    assert len(inbox.messages(emails[0], RESET_SUBJECT)) == 1


async def test_no_log_line_holds_a_token_code_link_or_address(
    mail_stack: Stack, auth: Api, gateway: Api
) -> None:
    inbox = Inbox(mail_stack.mail_dir)
    client = await account_from(auth, random_ip())
    pro = await account_from(auth, random_ip(), "professional")
    email = client.user["email"]
    code = code_of(await inbox.latest(email, VERIFY_SUBJECT))
    await gateway.call("POST", "/api/auth/verify-email/resend", token=client.token)  # a second code
    second = code_of((await inbox.wait(email, VERIFY_SUBJECT, count=2))[1])
    assert (
        await gateway.call("POST", "/api/auth/verify-email", json={"token": code})
    ).status == 200
    reset = await gateway.call("POST", "/api/auth/password-reset", json={"email": email})
    assert reset.status == 202
    reset_token = link_value(await inbox.latest(email, RESET_SUBJECT), "reset")
    confirm = await gateway.call(
        "POST",
        "/api/auth/password-reset/confirm",
        json={"token": reset_token, "password": "another passphrase"},
    )
    assert confirm.status == 204
    invited = unique_email("newcomer")
    invite = await gateway.call(
        "POST", "/api/connection/invite-client", json={"client_email": invited}, token=pro.token
    )
    assert invite.status == 201, invite.text
    signup_link = link_value(await inbox.latest(invited), "signup")
    assert signup_link == invited
    await asyncio.sleep(1.0)  # every sender has logged its sends
    secrets = {code, second, reset_token, client.token, client.refresh_token, email, invited}
    for name in ("auth", "connections", "activities", "gateway"):
        text = mail_stack.log_path(name).read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"{name} logged a secret"
        assert not re.search(r"#(verify|reset|signup)=", text)
        assert pro.user["email"] not in text
    assert "sent to an address at example.com" in mail_stack.log_path("auth").read_text()
    assert "sent to an address at example.com" in mail_stack.log_path("connections").read_text()
