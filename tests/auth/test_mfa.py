"""TOTP MFA through the gateway: enrol, confirm, log in with a code, recovery codes, turn off.

Codes are computed with pyotp from the secret the enrolment returned, at the real time
(`Authenticator`; the in-process tests, test_mfa_session_use_cases.py, move a clock instead).
"""

from __future__ import annotations

import uuid

import pyotp
import pytest
from sqlalchemy import text

from services.common.db import Database

from ..api import Account, Api, assert_problem
from ..stack import Stack
from .auth_support import (
    USER_KEYS,
    assert_session,
    assert_validation,
    enable_mfa,
    other_code,
    totp_code,
)

ENROL, CONFIRM = "/api/auth/mfa/totp", "/api/auth/mfa/totp/confirm"


async def enrol(api: Api, account: Account, password: str | None = None):
    return await api.call(
        "POST", ENROL, json={"password": password or account.password}, token=account.token
    )


async def login(api: Api, account: Account, otp: str | None = None, password: str | None = None):
    body = {"email": account.user["email"], "password": password or account.password}
    if otp is not None:
        body["otp"] = otp
    return await api.call("POST", "/api/auth/login", json=body)


async def disable(api: Api, account: Account, code: str):
    return await api.call("DELETE", ENROL, json={"code": code}, token=account.token)


# --- enrolment -----------------------------------------------------------------------------


async def test_enrol_answers_a_secret_its_uri_and_a_qr_code(api: Api) -> None:
    account = await api.signup("professional")
    reply = await enrol(api, account)
    assert reply.status == 201, reply.text
    assert set(reply.body) == {"secret", "otpauth_uri", "qr_code"}
    secret = reply.body["secret"]
    uri = reply.body["otpauth_uri"]
    assert uri.startswith("otpauth://totp/HealthConnect:")
    assert f"secret={secret}" in uri and "issuer=HealthConnect" in uri
    assert pyotp.parse_uri(uri).name == account.user["email"]
    assert reply.body["qr_code"].startswith("data:image/svg+xml")
    # Not on yet: the user says so, and a login needs no code.
    me = await api.call("GET", "/api/auth/me", token=account.token)
    assert me.body["mfa_enabled"] is False
    assert_session(await login(api, account), 200)


async def test_enrol_with_a_wrong_password_is_403(api: Api) -> None:
    account = await api.signup()
    assert_problem(await enrol(api, account, "not the password"), 403, "invalid_credentials")


async def test_wrong_passwords_to_enrol_are_throttled_apart_from_logins(api: Api) -> None:
    account = await api.signup()
    for _ in range(5):
        assert_problem(await enrol(api, account, "not the password"), 403, "invalid_credentials")
    throttled = await enrol(api, account)
    assert_problem(throttled, 429, "rate_limited")
    assert int(throttled.headers["Retry-After"]) > 0
    assert_session(await login(api, account), 200)  # the owner can still log in


async def test_enrol_when_on_is_409_and_a_new_one_replaces_the_pending(api: Api) -> None:
    account = await api.signup()
    first = (await enrol(api, account)).body["secret"]
    second = (await enrol(api, account)).body["secret"]
    assert first != second
    stale = await api.call("POST", CONFIRM, json={"code": totp_code(first)}, token=account.token)
    assert_problem(stale, 400, "invalid_code")
    confirmed = await api.call(
        "POST", CONFIRM, json={"code": totp_code(second)}, token=account.token
    )
    assert confirmed.status == 200, confirmed.text
    assert_problem(await enrol(api, account), 409, "mfa_already_enabled")
    again = await api.call("POST", CONFIRM, json={"code": "123456"}, token=account.token)
    assert_problem(again, 409, "mfa_already_enabled")


async def test_confirm_turns_mfa_on_with_ten_recovery_codes(api: Api) -> None:
    account = await api.signup("professional")
    secret = (await enrol(api, account)).body["secret"]
    wrong = await api.call(
        "POST", CONFIRM, json={"code": other_code(totp_code(secret))}, token=account.token
    )
    assert_problem(wrong, 400, "invalid_code")
    reply = await api.call("POST", CONFIRM, json={"code": totp_code(secret)}, token=account.token)
    assert reply.status == 200, reply.text
    assert set(reply.body) == {"recovery_codes"}
    codes = reply.body["recovery_codes"]
    assert len(codes) == 10 and len(set(codes)) == 10
    me = await api.call("GET", "/api/auth/me", token=account.token)
    assert set(me.body) == USER_KEYS and me.body["mfa_enabled"] is True
    listed = await api.call("GET", "/api/users?role=professional&limit=200", token=account.token)
    assert next(u for u in listed.body if u["id"] == account.id)["mfa_enabled"] is True


async def test_confirm_without_an_enrolment_is_400(api: Api) -> None:
    account = await api.signup()
    reply = await api.call("POST", CONFIRM, json={"code": "123456"}, token=account.token)
    assert_problem(reply, 400, "invalid_code")


@pytest.mark.parametrize(
    ("path", "method", "body", "field"),
    [
        (ENROL, "POST", {}, "password"),
        (ENROL, "POST", {"password": ""}, "password"),
        (ENROL, "POST", {"password": 12345678}, "password"),
        (CONFIRM, "POST", {}, "code"),
        (CONFIRM, "POST", {"code": 123456}, "code"),
        (CONFIRM, "POST", {"code": "1" * 65}, "code"),
        (ENROL, "DELETE", {}, "code"),
        (ENROL, "DELETE", {"code": None}, "code"),
    ],
)
async def test_mfa_bodies_are_validated(
    api: Api, path: str, method: str, body: dict, field: str
) -> None:
    account = await api.signup()
    assert_validation(await api.call(method, path, json=body, token=account.token), field)


@pytest.mark.parametrize(
    ("method", "path"), [("POST", ENROL), ("POST", CONFIRM), ("DELETE", ENROL)]
)
async def test_mfa_routes_need_a_token(api: Api, method: str, path: str) -> None:
    reply = await api.call(method, path, json={"password": "x", "code": "123456"})
    assert_problem(reply, 401)


# --- login --------------------------------------------------------------------------------


async def test_login_with_mfa_on(api: Api) -> None:
    account = await api.signup()
    app, _ = await enable_mfa(api, account)
    assert_problem(await login(api, account), 401, "mfa_required")
    wrong = other_code(app.code_of(app.last + 1))
    assert_problem(await login(api, account, wrong), 401, "invalid_code")
    # The password first: a wrong one answers as for any account, whatever the code (and
    # the code is not spent: it logs in next).
    plain = await api.signup()
    for reply in (
        await login(api, account, app.code_of(app.last + 1), password="wrong password"),
        await login(api, account, password="wrong password"),
        await login(api, plain, password="wrong password"),
    ):
        assert_problem(reply, 401, "invalid_credentials")
    body = assert_session(await login(api, account, app.fresh()), 200)
    assert body["user"]["mfa_enabled"] is True
    me = await api.call("GET", "/api/auth/me", token=body["token"])
    assert me.status == 200 and me.body["id"] == account.id


async def test_a_totp_code_logs_in_once(api: Api) -> None:
    account = await api.signup()
    app, _ = await enable_mfa(api, account)
    code = app.fresh()
    assert_session(await login(api, account, code), 200)
    assert_problem(await login(api, account, code), 401, "invalid_code")  # replayed
    # The confirming code's step is older than the one used: refused, though it may
    # still be within the drift allowed.
    older = app.code_of(app.last - 1)
    assert_problem(await login(api, account, older), 401, "invalid_code")


async def test_recovery_codes_each_log_in_once(api: Api) -> None:
    account = await api.signup()
    _, codes = await enable_mfa(api, account)
    for code in codes[:2]:
        assert_session(await login(api, account, code), 200)
        assert_problem(await login(api, account, code), 401, "invalid_code")
    assert_session(await login(api, account, codes[2].upper().replace("-", " ")), 200)


async def test_an_otp_is_ignored_without_mfa(api: Api) -> None:
    account = await api.signup()
    assert_session(await login(api, account, "123456"), 200)


async def test_wrong_codes_count_toward_the_login_throttle(api: Api) -> None:
    account = await api.signup()
    app, _ = await enable_mfa(api, account)
    assert_problem(await login(api, account), 401, "mfa_required")  # no failure
    for _ in range(5):
        assert_problem(await login(api, account, "zzzzz-zzzzz"), 401, "invalid_code")
    throttled = await login(api, account, app.fresh())
    assert_problem(throttled, 429, "rate_limited")
    assert int(throttled.headers["Retry-After"]) > 0


# --- turning it off -----------------------------------------------------------------------


async def test_disable_with_a_totp_code(api: Api) -> None:
    account = await api.signup()
    app, _ = await enable_mfa(api, account)
    wrong = other_code(app.code_of(app.last + 1))
    assert_problem(await disable(api, account, wrong), 400, "invalid_code")
    reply = await disable(api, account, app.fresh())
    assert reply.status == 204 and reply.text == ""
    me = await api.call("GET", "/api/auth/me", token=account.token)
    assert me.body["mfa_enabled"] is False
    assert_session(await login(api, account), 200)
    assert_problem(await disable(api, account, app.fresh()), 409, "mfa_not_enabled")


async def test_disable_with_a_recovery_code_used_once(api: Api) -> None:
    account = await api.signup()
    _, codes = await enable_mfa(api, account)
    assert_session(await login(api, account, codes[0]), 200)
    assert_problem(await disable(api, account, codes[0]), 400, "invalid_code")  # used
    assert (await disable(api, account, codes[1])).status == 204


# --- Idempotency-Key: a lost answer is replayed, and stays unreadable at rest ----------------


async def test_a_retried_confirm_replays_its_codes_sealed(api: Api, stack: Stack) -> None:
    account = await api.signup()
    secret = (await enrol(api, account)).body["secret"]
    key = {"Idempotency-Key": uuid.uuid4().hex}
    body = {"code": totp_code(secret)}
    first = await api.call("POST", CONFIRM, json=body, token=account.token, headers=key)
    assert first.status == 200, first.text
    again = await api.call("POST", CONFIRM, json=body, token=account.token, headers=key)
    assert again.status == 200 and again.headers.get("Idempotent-Replayed") == "true"
    assert again.body == first.body
    # What the record keeps reads neither the codes nor the code that was sent.
    db = Database(stack.databases["auth"], pool_size=1)
    try:
        rows = await db.query(
            lambda s: s.execute(text("SELECT fingerprint, body FROM idempotency_keys")).all()
        )
    finally:
        await db.dispose()
    stored = "\n".join(f"{f} {b}" for f, b in rows)
    assert all(code not in stored for code in first.body["recovery_codes"])
    assert secret not in stored and body["code"] not in stored
