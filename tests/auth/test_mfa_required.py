"""AUTH_REQUIRE_MFA=professional: refused before enrolment, let through after (with the token
already held), refused again after turning MFA off; at the gateway and at each service."""

from __future__ import annotations

import aiohttp
import pytest

from ..api import Account, Api, assert_problem
from ..live.live_support import Sockets, handshake_status, sign_token, ws_url
from ..stack import Stack
from .auth_support import assert_session, enable_mfa

STACK_ENV = {"AUTH_REQUIRE_MFA": "professional"}

# Routes outside /api/auth/*, one per component that checks tokens.
GATED = [
    ("gateway", "GET", "/api/notifications"),
    ("auth", "GET", "/api/users"),
    ("connections", "GET", "/api/connection/list"),
    ("activities", "GET", "/api/activities/list"),
]
OPEN = ["/api/auth/me", "/api/auth/sessions"]


@pytest.fixture
def api(module_api: Api) -> Api:
    return module_api


async def calls(http: aiohttp.ClientSession, stack: Stack, token: str) -> list:
    """The gated routes through the gateway, and each service's straight to the service."""
    replies = []
    for component, method, path in GATED:
        replies.append(await Api(http, stack.gateway_url).call(method, path, token=token))
        if component != "gateway":
            direct = Api(http, stack.service_url(component))
            replies.append(await direct.call(method, path, token=token))
    return replies


async def assert_refused(http: aiohttp.ClientSession, stack: Stack, token: str) -> None:
    for reply in await calls(http, stack, token):
        assert_problem(reply, 403, "mfa_enrollment_required")
    assert await handshake_status(http, ws_url(stack.gateway_url, token=token)) == 403


async def assert_allowed(http: aiohttp.ClientSession, stack: Stack, token: str) -> None:
    for reply in await calls(http, stack, token):
        assert reply.status == 200, reply.text
    ws = await http.ws_connect(ws_url(stack.gateway_url, token=token))
    await ws.close()


async def test_a_professional_without_mfa_is_refused_outside_auth(
    api: Api, http: aiohttp.ClientSession, module_stack: Stack
) -> None:
    pro = await api.signup("professional")
    await assert_refused(http, module_stack, pro.token)
    create = await api.call("POST", "/api/activities/", json={"title": "x"}, token=pro.token)
    assert_problem(create, 403, "mfa_enrollment_required")
    for path in OPEN:
        assert (await api.call("GET", path, token=pro.token)).status == 200
    assert (await api.call("GET", "/api/health")).status == 200


async def test_a_client_is_not_concerned(
    api: Api, http: aiohttp.ClientSession, module_stack: Stack
) -> None:
    client = await api.signup("client")
    await assert_allowed(http, module_stack, client.token)


async def test_enrolling_lets_the_token_held_through_at_once(
    api: Api, http: aiohttp.ClientSession, module_stack: Stack
) -> None:
    pro = await api.signup("professional")
    await assert_refused(http, module_stack, pro.token)
    app, _ = await enable_mfa(api, pro)
    await assert_allowed(http, module_stack, pro.token)  # issued before: says MFA is off
    login = await api.call(
        "POST",
        "/api/auth/login",
        json={"email": pro.user["email"], "password": pro.password, "otp": app.fresh()},
    )
    await assert_allowed(http, module_stack, assert_session(login, 200)["token"])


async def test_turning_mfa_off_refuses_again(
    api: Api, http: aiohttp.ClientSession, module_stack: Stack, sockets: Sockets
) -> None:
    pro = await api.signup("professional")
    app, codes = await enable_mfa(api, pro)
    login = await api.call(
        "POST",
        "/api/auth/login",
        json={"email": pro.user["email"], "password": pro.password, "otp": app.fresh()},
    )
    session = assert_session(login, 200)
    sock = await sockets.open(module_stack.gateway_url, session["token"])
    off = await api.call("DELETE", "/api/auth/mfa/totp", json={"code": codes[0]}, token=pro.token)
    assert off.status == 204, off.text
    # Every live access token of the user is revoked (the one that said MFA is on, and the
    # sign-up's), and the socket opened with it closed.
    for old in (session["token"], pro.token):
        assert_problem(await api.call("GET", "/api/auth/me", token=old), 401, "token_revoked")
    assert await sock.wait_closed(within=5) == 4001
    # A refresh gives one that says MFA is off: refused again, except under /api/auth/.
    refreshed = await api.call(
        "POST", "/api/auth/refresh", json={"refresh_token": session["refresh_token"]}
    )
    token = assert_session(refreshed, 200)["token"]
    await assert_refused(http, module_stack, token)
    assert (await api.call("GET", "/api/auth/me", token=token)).status == 200


async def test_a_token_without_the_claim_is_checked_against_the_enrolment(
    api: Api, http: aiohttp.ClientSession, module_stack: Stack
) -> None:
    """Tokens issued before the `mfa` claim existed: let through only once enrolled."""
    pro = await api.signup("professional")
    old_style = sign_token(module_stack.root, user_id=pro.id, role="professional")
    await assert_refused(http, module_stack, old_style)
    await enable_mfa(api, Account(pro.user, pro.token, pro.refresh_token, pro.password))
    await assert_allowed(http, module_stack, old_style)
