"""Log-in: the session shape, uniform failures, and throttling per email and per client IP."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from ..api import Api, Reply, assert_problem, unique_email
from ..stack import Stack
from .auth_support import assert_session, assert_validation, gather_limited
from .conftest import IP_LIMIT

MAX_PER_EMAIL = 5
WINDOW_SECONDS = 15 * 60


def assert_rate_limited(reply: Reply) -> None:
    assert_problem(reply, 429, "rate_limited")
    retry = reply.headers.get("Retry-After")
    assert retry is not None and retry.isdigit(), reply.headers
    assert 0 < int(retry) <= WINDOW_SECONDS + 1, retry


async def test_login_returns_same_shape_as_signup(api: Api) -> None:
    account = await api.signup("professional")
    reply = await api.login(account.user["email"], account.password)
    body = assert_session(reply, 200)
    assert body["user"] == account.user
    assert body["token"] != account.token
    assert body["refresh_token"] != account.refresh_token
    me = await api.call("GET", "/api/auth/me", token=body["token"])
    assert me.status == 200 and me.body == account.user


async def test_each_login_is_a_new_session(api: Api) -> None:
    account = await api.signup()
    first = assert_session(await api.login(account.user["email"], account.password), 200)
    second = assert_session(await api.login(account.user["email"], account.password), 200)
    assert first["token"] != second["token"]
    assert first["refresh_token"] != second["refresh_token"]


async def test_unknown_email_and_wrong_password_look_the_same(api: Api) -> None:
    account = await api.signup()
    wrong_password = await api.login(account.user["email"], "not the password")
    unknown_email = await api.login(unique_email("nobody"), "not the password")
    for reply in (wrong_password, unknown_email):
        assert_problem(reply, 401, "invalid_credentials")
    assert wrong_password.body == unknown_email.body
    assert wrong_password.headers.get("Retry-After") is None


async def test_login_email_is_case_insensitive(api: Api) -> None:
    email = unique_email("CaseLogin")
    account = await api.signup(email=email.lower())
    for variant in (email.upper(), email.lower(), email.swapcase()):
        reply = await api.login(variant, account.password)
        assert assert_session(reply, 200)["user"]["id"] == account.id


async def test_login_password_is_case_sensitive(api: Api) -> None:
    account = await api.signup(password="Case Sensitive 1")
    reply = await api.login(account.user["email"], "case sensitive 1")
    assert_problem(reply, 401, "invalid_credentials")


@pytest.mark.parametrize("field", ["email", "password"])
async def test_login_missing_field(api: Api, field: str) -> None:
    data = {"email": unique_email(), "password": "long enough pass 1"}
    del data[field]
    reply = await api.call("POST", "/api/auth/login", json=data)
    assert_validation(reply, field)


@pytest.mark.parametrize(("field", "value"), [("email", 42), ("password", 12345678)])
async def test_login_wrong_type(api: Api, field: str, value: object) -> None:
    data: dict[str, object] = {"email": unique_email(), "password": "long enough pass 1"}
    data[field] = value
    assert_validation(await api.call("POST", "/api/auth/login", json=data), field)


async def test_login_ignores_extra_fields(api: Api) -> None:
    account = await api.signup()
    reply = await api.call(
        "POST",
        "/api/auth/login",
        json={"email": account.user["email"], "password": account.password, "role": "x"},
    )
    assert assert_session(reply, 200)["user"] == account.user


# --- per-email throttling ---------------------------------------------------------------


async def test_sixth_attempt_after_five_failures_is_429_even_with_right_password(
    api: Api,
) -> None:
    account = await api.signup()
    email = account.user["email"]
    for _ in range(MAX_PER_EMAIL):
        assert_problem(await api.login(email, "wrong password"), 401, "invalid_credentials")
    assert_rate_limited(await api.login(email, account.password))
    assert_rate_limited(await api.login(email, "wrong password"))


async def test_failures_before_the_limit_do_not_block(api: Api) -> None:
    account = await api.signup()
    email = account.user["email"]
    for _ in range(MAX_PER_EMAIL - 1):
        assert_problem(await api.login(email, "wrong password"), 401, "invalid_credentials")
    assert_session(await api.login(email, account.password), 200)


async def test_email_limit_counts_all_cases_of_one_email(api: Api) -> None:
    account = await api.signup()
    email = account.user["email"]
    variants = [email.upper(), email.lower(), email.swapcase(), email.title(), email.upper()]
    for variant in variants:
        assert_problem(await api.login(variant, "wrong password"), 401, "invalid_credentials")
    assert_rate_limited(await api.login(email, account.password))


async def test_email_limit_applies_to_unknown_emails(api: Api) -> None:
    email = unique_email("ghost")
    for _ in range(MAX_PER_EMAIL):
        assert_problem(await api.login(email, "wrong password"), 401, "invalid_credentials")
    assert_rate_limited(await api.login(email, "wrong password"))


async def test_email_limit_does_not_lock_other_accounts(api: Api) -> None:
    locked, other = await api.signup(), await api.signup()
    for _ in range(MAX_PER_EMAIL):
        await api.login(locked.user["email"], "wrong password")
    assert_rate_limited(await api.login(locked.user["email"], locked.password))
    assert_session(await api.login(other.user["email"], other.password), 200)


async def test_validation_errors_do_not_count_as_failures(api: Api) -> None:
    account = await api.signup()
    for _ in range(MAX_PER_EMAIL + 2):
        reply = await api.call("POST", "/api/auth/login", json={"email": account.user["email"]})
        assert_validation(reply, "password")
    assert_session(await api.login(account.user["email"], account.password), 200)


async def test_client_forwarded_for_through_gateway_does_not_dodge_email_limit(
    api: Api,
) -> None:
    account = await api.signup()
    email = account.user["email"]
    for _ in range(MAX_PER_EMAIL):
        reply = await api.call(
            "POST",
            "/api/auth/login",
            json={"email": email, "password": "wrong password"},
            headers={"X-Forwarded-For": f"198.51.100.{random.randint(1, 254)}"},
        )
        assert_problem(reply, 401, "invalid_credentials")
    reply = await api.call(
        "POST",
        "/api/auth/login",
        json={"email": email, "password": account.password},
        headers={"X-Forwarded-For": "198.51.100.77", "X-Real-IP": "198.51.100.78"},
    )
    assert_rate_limited(reply)


# --- per-IP throttling (a stack of its own whose limit is 100 failures per address) -------


def _random_ip(*avoid: str) -> str:
    while True:
        ip = f"203.0.113.{random.randint(1, 254)}"
        if ip not in avoid:
            return ip


async def _fail_from(auth: Api, ip: str, email: str | None = None) -> Reply:
    return await auth.call(
        "POST",
        "/api/auth/login",
        json={"email": email or unique_email("ipfail"), "password": "wrong password"},
        headers={"X-Forwarded-For": ip},
    )


@pytest_asyncio.fixture(scope="session")
async def blocked_ip(http, ip_stack: Stack) -> AsyncIterator[str]:
    """An address that has made exactly IP_LIMIT failed logins, each for a distinct email,
    straight at auth (which trusts X-Forwarded-For from 127.0.0.1)."""
    ip = _random_ip()
    auth = Api(http, ip_stack.service_url("auth"))
    replies = await gather_limited(_fail_from(auth, ip) for _ in range(IP_LIMIT))
    for reply in replies:
        assert_problem(reply, 401, "invalid_credentials")
    yield ip


async def test_ip_limit_blocks_the_101st_attempt(http, ip_stack: Stack, blocked_ip: str) -> None:
    auth = Api(http, ip_stack.service_url("auth"))
    assert_rate_limited(await _fail_from(auth, blocked_ip))


async def test_ip_limit_blocks_even_the_right_password(
    http, ip_stack: Stack, blocked_ip: str
) -> None:
    auth = Api(http, ip_stack.service_url("auth"))
    account = await Api(http, ip_stack.gateway_url).signup()
    reply = await auth.call(
        "POST",
        "/api/auth/login",
        json={"email": account.user["email"], "password": account.password},
        headers={"X-Forwarded-For": blocked_ip},
    )
    assert_rate_limited(reply)


async def test_ip_limit_is_per_address(http, ip_stack: Stack, blocked_ip: str) -> None:
    auth = Api(http, ip_stack.service_url("auth"))
    other = _random_ip(blocked_ip)
    assert_problem(await _fail_from(auth, other), 401, "invalid_credentials")
    account = await Api(http, ip_stack.gateway_url).signup()
    reply = await auth.call(
        "POST",
        "/api/auth/login",
        json={"email": account.user["email"], "password": account.password},
        headers={"X-Forwarded-For": _random_ip(blocked_ip)},
    )
    assert_session(reply, 200)


async def test_ip_limit_uses_the_hop_the_trusted_proxy_added(
    http, ip_stack: Stack, blocked_ip: str
) -> None:
    """Only the right-most X-Forwarded-For entry (added by the trusted proxy) counts: what a
    client wrote to the left of it cannot put the blame on, or take it off, an address."""
    auth = Api(http, ip_stack.service_url("auth"))
    fresh = f"198.51.100.{random.randint(1, 254)}"
    assert_problem(await _fail_from(auth, f"{blocked_ip}, {fresh}"), 401, "invalid_credentials")
    assert_rate_limited(await _fail_from(auth, f"{fresh}, {blocked_ip}"))


async def test_client_cannot_pick_its_address_through_the_gateway(
    http, ip_stack: Stack, blocked_ip: str
) -> None:
    """The gateway replaces a client's X-Forwarded-For: claiming the blocked address gets
    a plain 401, because the request is counted against the gateway's view of the peer."""
    gateway = Api(http, ip_stack.gateway_url)
    for header in ("X-Forwarded-For", "x-forwarded-for"):
        reply = await gateway.call(
            "POST",
            "/api/auth/login",
            json={"email": unique_email("spoof"), "password": "wrong password"},
            headers={header: blocked_ip},
        )
        assert_problem(reply, 401, "invalid_credentials")
    reply = await gateway.call(
        "POST",
        "/api/auth/login",
        json={"email": unique_email("spoof"), "password": "wrong password"},
        headers={"Forwarded": f"for={blocked_ip}", "X-Real-IP": blocked_ip},
    )
    assert_problem(reply, 401, "invalid_credentials")


@pytest.mark.parametrize(
    "make_email",
    [
        lambda tag: f"Jose\u0301-{tag}@example.com",  # decomposed accent (not NFC)
        lambda tag: f"{tag}@\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com",  # full-width domain
        lambda tag: f"  {tag}@example.com ",  # surrounding spaces
    ],
    ids=["decomposed-accent", "fullwidth-domain", "padded"],
)
async def test_login_with_the_email_exactly_as_given_at_signup(api: Api, make_email) -> None:
    """Signup normalises the address; login must accept the very string signup accepted."""
    email = make_email(unique_email("same").split("@")[0])
    reply = await api.call(
        "POST",
        "/api/auth/signup",
        json={"name": "Same", "email": email, "password": "long enough pass 1", "role": "client"},
    )
    user = assert_session(reply, 201)["user"]
    login = await api.login(email, "long enough pass 1")
    assert assert_session(login, 200)["user"]["id"] == user["id"]
