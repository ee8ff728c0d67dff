"""The gateway as a reverse proxy: routing, request ids, header hygiene, 401s, 503s, logs."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis
from yarl import URL

from ..api import Account, Api, Reply, assert_problem, unique_email
from ..stack import Stack

# The private stack logs access lines, and throttles failed logins per client address
# soon enough that a test can see which address the auth service believed.
PER_IP_LIMIT = 5
EXTRA_STACK_ENV = {"LOG_LEVEL": "INFO", "AUTH_LOGIN_MAX_FAILURES_PER_IP": str(PER_IP_LIMIT)}

REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")
# A service whose domain is not built yet answers 503 `not_available_yet` to a valid
# token (as connections and activities once did): that too means the request reached it.
REACHED_STUB = {"not_available_yet"}


def reached_service(reply: Reply) -> bool:
    """True when a service (not the gateway's catch-all 404 or its 503) answered."""
    code = reply.body.get("code") if isinstance(reply.body, dict) else None
    if reply.status == 503:
        return code in REACHED_STUB
    return reply.status < 500 and code != "not_found"


async def raw_call(
    http: aiohttp.ClientSession,
    base: str,
    raw_path: str,
    *,
    method: str = "GET",
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """A request whose path is sent byte for byte (no dot-segment removal, no re-encoding)."""
    headers = dict(headers or {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with http.request(method, URL(base + raw_path, encoded=True), headers=headers) as resp:
        text = await resp.text()
        body = None
        if "json" in resp.headers.get("Content-Type", ""):
            body = await resp.json(content_type=None)
        return Reply(resp.status, resp.headers, body, text)


# --- routing ------------------------------------------------------------------------------


async def test_auth_routes_reach_the_auth_service(api: Api) -> None:
    email = unique_email("route")
    reply = await api.call(
        "POST",
        "/api/auth/signup/",
        json={"name": "Route", "email": email, "password": "long enough pass 1", "role": "client"},
    )
    assert reply.status == 201, reply.text
    token = reply.body["token"]
    me = await api.call("GET", "/api/auth/me", token=token)
    assert me.status == 200 and me.body["email"] == email
    login = await api.login(email, "long enough pass 1")
    assert login.status == 200 and login.body["user"]["email"] == email
    refreshed = await api.call(
        "POST", "/api/auth/refresh", json={"refresh_token": login.body["refresh_token"]}
    )
    assert refreshed.status == 200, refreshed.text


async def test_users_route_reaches_the_auth_service(api: Api) -> None:
    pro = await api.signup("professional")
    client = await api.signup("client")
    for path in ("/api/users", "/api/users/", "/api/users?role=professional"):
        reply = await api.call("GET", path, token=client.token)
        assert reply.status == 200, (path, reply.text)
        assert pro.id in {u["id"] for u in reply.body}


SERVICE_ROUTES = [
    ("GET", "/api/connection/list"),
    ("GET", "/api/connection/list/"),
    ("POST", "/api/connection/request-pro"),
    ("POST", "/api/connection/invite-client"),
    ("POST", "/api/connection/respond"),
    ("DELETE", "/api/connection/999999"),
    ("GET", "/api/activities/list"),
    ("POST", "/api/activities"),
    ("POST", "/api/activities/"),
    ("POST", "/api/activities/invite"),
    ("POST", "/api/activities/respond"),
    ("DELETE", "/api/activities/999999"),
]


async def test_connection_and_activity_routes_reach_a_service(api: Api) -> None:
    account = await api.signup("professional")
    for method, path in SERVICE_ROUTES:
        body = {} if method == "POST" else None
        reply = await api.call(method, path, token=account.token, json=body)
        assert reached_service(reply), (method, path, reply.status, reply.text)
        if reply.status >= 400:
            assert_problem(reply, reply.status)


UNKNOWN = ["/api/whatever", "/api/", "/api", "/api/authx/signup", "/api/user", "/api/connections"]


async def test_unknown_api_path_is_404_problem(api: Api) -> None:
    for path in UNKNOWN:
        for method in ("GET", "POST", "DELETE"):
            reply = await api.call(method, path)
            assert_problem(reply, 404, "not_found")
            assert reply.headers.get("X-Request-Id")


async def test_path_outside_api_is_404_problem(api: Api) -> None:
    for path in ("/nothing", "/health", "/favicon.ico", "/auth/login", "/api.json"):
        reply = await api.call("GET", path)
        assert_problem(reply, 404)


async def test_each_prefix_goes_to_its_own_service(
    extra_api: Api, service_down, extra_stack: Stack
) -> None:
    """Stop one service at a time: exactly its prefixes answer 503 service_unavailable."""
    pro = await extra_api.signup("professional")
    prefixes = {
        "auth": [("GET", "/api/auth/me"), ("GET", "/api/users"), ("POST", "/api/auth/login")],
        "connections": [("GET", "/api/connection/list"), ("DELETE", "/api/connection/1")],
        "activities": [("GET", "/api/activities/list"), ("POST", "/api/activities/")],
    }

    async def call(method: str, path: str) -> Reply:
        return await extra_api.call(
            method, path, token=pro.token, json={} if method == "POST" else None
        )

    # (connections: see test_stopped_service_gives_503_problem_with_retry_after)
    for name in ("activities", "auth"):
        async with service_down(name):
            for owner, routes in prefixes.items():
                for method, path in routes:
                    reply = await call(method, path)
                    if owner == name:
                        assert_problem(reply, 503, "service_unavailable")
                        assert int(reply.headers["Retry-After"]) > 0
                        assert reply.headers.get("X-Request-Id")
                    else:
                        assert reached_service(reply), (name, path, reply.status, reply.text)
    for method, path in prefixes["activities"] + prefixes["auth"]:
        assert reached_service(await call(method, path)), path


# --- request ids --------------------------------------------------------------------------


async def test_every_response_carries_a_request_id(api: Api) -> None:
    account = await api.signup()
    replies = [
        await api.call("GET", "/api/auth/me", token=account.token),  # proxied 200
        await api.call("GET", "/api/health"),  # the gateway's own 200
        await api.call("POST", "/api/auth/signup", json={}),  # a service's 400
        await api.call("GET", "/api/users"),  # the gateway's own 401
        await api.call("GET", "/api/nowhere"),  # the gateway's 404
        await api.call("GET", "/api/auth/nowhere", token=account.token),  # a service's 404
        await api.call("GET", "/api/auth/signup"),  # a service's 405
    ]
    ids = set()
    for reply in replies:
        values = reply.headers.getall("X-Request-Id", [])
        assert len(values) == 1, (reply.status, reply.headers)
        assert REQUEST_ID.fullmatch(values[0]), values
        ids.add(values[0])
    assert len(ids) == len(replies)  # a fresh one per request


GOOD_IDS = ["abcdefgh", "req-2024.11_24-XYZ", "A" * 64, "0123456789abcdef"]
BAD_IDS = ["has spaces in it", "a" * 200, "a" * 65, "short", "semi;colon-123", 'quote"d-12345', ""]


async def test_well_formed_request_id_is_echoed(api: Api) -> None:
    account = await api.signup()
    for rid in GOOD_IDS:
        for path, token in (
            ("/api/auth/me", account.token),
            ("/api/users", None),
            ("/api/x", None),
        ):
            reply = await api.call("GET", path, token=token, headers={"X-Request-Id": rid})
            assert reply.headers.getall("X-Request-Id") == [rid], (path, reply.headers)


async def test_malformed_request_id_is_replaced(api: Api) -> None:
    account = await api.signup()
    for rid in BAD_IDS:
        for path, token in (("/api/auth/me", account.token), ("/api/users", None)):
            reply = await api.call("GET", path, token=token, headers={"X-Request-Id": rid})
            values = reply.headers.getall("X-Request-Id")
            assert len(values) == 1 and values[0] != rid, values
            assert REQUEST_ID.fullmatch(values[0]), values


# --- headers a client must not control -------------------------------------------------------


async def test_identity_headers_from_the_client_are_not_believed(api: Api) -> None:
    client = await api.signup("client")
    pro = await api.signup("professional")
    spoofed = {
        "X-User-Id": str(pro.id),
        "X-User-Role": "professional",
        "X-Forwarded-For": "10.1.2.3",
        "Forwarded": "for=10.1.2.3;proto=https",
        "X-Real-IP": "10.1.2.3",
        "X-Forwarded-Host": "evil.example",
    }
    me = await api.call("GET", "/api/auth/me", token=client.token, headers=spoofed)
    assert me.status == 200, me.text
    assert me.body["id"] == client.id and me.body["role"] == "client"
    # Without a token, identity headers alone get nobody in.
    for path in ("/api/auth/me", "/api/users", "/api/connection/list", "/api/activities/list"):
        reply = await api.call("GET", path, headers=spoofed)
        assert_problem(reply, 401)
    # A client still sees no other client, whatever role it claims to have.
    other = await api.signup("client")
    users = await api.call("GET", "/api/users", token=client.token, headers=spoofed)
    assert users.status == 200
    assert other.id not in {u["id"] for u in users.body}


async def test_spoofed_client_address_does_not_escape_the_login_throttle(
    extra_api: Api, extra_stack: Stack
) -> None:
    """The gateway replaces X-Forwarded-For & co: every attempt counts for 127.0.0.1."""
    account = await extra_api.signup()
    try:
        for i in range(PER_IP_LIMIT):
            fake = f"203.0.113.{i + 1}"
            reply = await extra_api.call(
                "POST",
                "/api/auth/login",
                json={"email": unique_email("nobody"), "password": "wrong-password"},
                headers={
                    "X-Forwarded-For": fake,
                    "X-Real-IP": fake,
                    "Forwarded": f"for={fake}",
                },
            )
            assert_problem(reply, 401, "invalid_credentials")
        reply = await extra_api.call(
            "POST",
            "/api/auth/login",
            json={"email": account.user["email"], "password": account.password},
            headers={"X-Forwarded-For": "198.51.100.7"},
        )
        assert_problem(reply, 429)
        assert int(reply.headers["Retry-After"]) > 0
    finally:
        client = aioredis.Redis.from_url(extra_stack.redis_url)
        keys = [k async for k in client.scan_iter("login:fail:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
    reply = await extra_api.login(account.user["email"], account.password)
    assert reply.status == 200, reply.text


SINGLE = (
    "Content-Length",
    "Transfer-Encoding",
    "Connection",
    "Keep-Alive",
    "Date",
    "Server",
    "Content-Type",
    "X-Request-Id",
)


async def test_hop_by_hop_and_framing_headers_are_not_duplicated(api: Api) -> None:
    account = await api.signup()
    hop_headers = {"Connection": "keep-alive, X-Drop-Me", "X-Drop-Me": "1", "TE": "trailers"}
    replies = [
        await api.call("GET", "/api/auth/me", token=account.token, headers=hop_headers),
        await api.call("GET", "/api/users?limit=1", token=account.token),
        await api.call("POST", "/api/auth/login", json={"email": "x", "password": "y"}),
        await api.call("GET", "/api/auth/nowhere", token=account.token),
        await api.call("GET", "/api/nowhere"),
        await api.call("GET", "/api/health"),
    ]
    logout = await api.call(
        "POST", "/api/auth/logout", token=account.token, json={}, headers=hop_headers
    )
    assert logout.status == 204, logout.text
    replies.append(logout)
    for reply in replies:
        for name in SINGLE:
            assert len(reply.headers.getall(name, [])) <= 1, (name, reply.status, reply.headers)
        assert not ("Content-Length" in reply.headers and "Transfer-Encoding" in reply.headers), (
            reply.headers
        )
        assert "Keep-Alive" not in reply.headers or reply.headers.get("Connection")
        if reply.text:
            assert int(reply.headers["Content-Length"]) == len(reply.text.encode())


# --- 401 from the gateway -------------------------------------------------------------------


PROTECTED = [
    ("GET", "/api/auth/me"),
    ("POST", "/api/auth/logout"),
    ("GET", "/api/users"),
    ("GET", "/api/users/"),
    ("POST", "/api/connection/request-pro"),
    ("POST", "/api/connection/invite-client"),
    ("POST", "/api/connection/respond"),
    ("GET", "/api/connection/list"),
    ("DELETE", "/api/connection/1"),
    ("POST", "/api/activities/"),
    ("POST", "/api/activities/invite"),
    ("POST", "/api/activities/respond"),
    ("GET", "/api/activities/list"),
    ("DELETE", "/api/activities/1"),
]


async def test_protected_route_without_token_is_401(api: Api) -> None:
    for method, path in PROTECTED:
        reply = await api.call(method, path, json={} if method == "POST" else None)
        assert_problem(reply, 401, "unauthorized")
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
        assert reply.headers.get("X-Request-Id")


BAD_AUTHORIZATION = [
    "Bearer",
    "Bearer ",
    "Bearer not-a-jwt",
    "Bearer a.b.c",
    "Basic dXNlcjpwYXNz",
    "bearer",
    "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.",
    "Bearer " + "x" * 5000,
]


async def test_bad_authorization_header_is_401(api: Api) -> None:
    for authorization in BAD_AUTHORIZATION:
        for path in ("/api/auth/me", "/api/connection/list", "/api/activities/list"):
            reply = await api.call("GET", path, headers={"Authorization": authorization})
            assert_problem(reply, 401)
            assert reply.headers["WWW-Authenticate"].startswith("Bearer")


# --- path traversal ---------------------------------------------------------------------------


TRAVERSALS = [
    "/api/auth/../../health",
    "/api/auth/../../health/",
    "/api/auth/./../../health",
    "/api/connection/../../health",
    "/api/activities/../../health",
    "/api/users/%2e%2e/",
    "/api/users/%2e%2e/%2e%2e/health",
    "/api/users/%2E%2E/%2E%2E/health",
    "/api/users/..%2f..%2fhealth",
    "/api/auth/..%2F..%2Fhealth",
    "/api/activities/..%2F..%2Fhealth",
    "/api/auth/%2e%2e/%2e%2e/api/connection/list",
    "/api/users/../auth/me",
    "/api/auth/me/../../users",
    "/api/auth/signup/../me",
    "/api/auth/%5c..%5c..%5chealth",
    "/api/auth/..;/..;/health",
    "/api/users/%252e%252e/%252e%252e/health",
    "/api/users/%00",
    "/api/users/%2F%2Fevil.example",
    "/api/auth//me",
]


async def test_path_traversal_reaches_nothing_unexpected(http, api: Api) -> None:
    account = await api.signup()
    for path in TRAVERSALS:
        for token in (None, account.token):
            for method in ("GET", "POST"):
                reply = await raw_call(http, api.base, path, method=method, token=token)
                assert reply.status < 500, (path, method, reply.status, reply.text)
                assert_problem(reply, reply.status)
                assert reply.status in (401, 404, 405), (path, reply.status, reply.text)
                # Never a service's internal health document nor someone's data.
                assert '"service"' not in reply.text, (path, reply.text)
                assert "@example.com" not in reply.text, (path, reply.text)


STATIC_TRAVERSALS = [
    "/static/../app.py",
    "/static/%2e%2e/app.py",
    "/static/..%2fapp.py",
    "/static/..%2F..%2Fpyproject.toml",
    "/static/../../pyproject.toml",
    "/static/%2e%2e/%2e%2e/var/keys/jwt_ed25519.pem",
    "/static//etc/passwd",
    "/static/%2fetc%2fpasswd",
    "/../pyproject.toml",
    "/%2e%2e/pyproject.toml",
]


async def test_path_traversal_outside_api_serves_no_file(http, api: Api) -> None:
    for path in STATIC_TRAVERSALS:
        reply = await raw_call(http, api.base, path)
        assert reply.status in (400, 403, 404), (path, reply.status, reply.text)
        assert_problem(reply, reply.status)
        for leak in ("import ", "[project]", "PRIVATE KEY", "root:"):
            assert leak not in reply.text, (path, reply.text)


# --- 503 when a service is down ------------------------------------------------------------


async def test_stopped_service_gives_503_problem_with_retry_after(
    extra_api: Api, service_down
) -> None:
    account = await extra_api.signup()
    before = await extra_api.call("GET", "/api/connection/list", token=account.token)
    assert reached_service(before), before.text
    async with service_down("connections"):
        for method, path in (
            ("GET", "/api/connection/list"),
            ("POST", "/api/connection/request-pro"),
            ("DELETE", "/api/connection/5"),
        ):
            reply = await extra_api.call(
                method, path, token=account.token, json={} if method == "POST" else None
            )
            assert_problem(reply, 503, "service_unavailable")
            assert int(reply.headers["Retry-After"]) > 0
        # Without a token the gateway answers 401 itself, the service being down.
        reply = await extra_api.call("GET", "/api/connection/list")
        assert_problem(reply, 401, "unauthorized")
        # The rest of the system still works.
        me = await extra_api.call("GET", "/api/auth/me", token=account.token)
        assert me.status == 200
        users = await extra_api.call("GET", "/api/users", token=account.token)
        assert users.status == 200
        activities = await extra_api.call("GET", "/api/activities/list", token=account.token)
        assert reached_service(activities), activities.text
    after = await extra_api.call("GET", "/api/connection/list", token=account.token)
    assert reached_service(after), after.text


# --- the access log keeps no secrets ---------------------------------------------------------


async def _log_lines(path: Path, marker: str, timeout: float = 5.0) -> list[str]:
    """The lines of a log that end with `marker`, waiting for the process to write them."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        text = path.read_text(errors="replace")
        lines = [ln for ln in text.splitlines() if ln.rstrip().endswith(marker)]
        if lines or asyncio.get_running_loop().time() > deadline:
            return lines
        await asyncio.sleep(0.05)


async def test_access_log_never_holds_a_token(extra_api: Api, extra_stack: Stack) -> None:
    account: Account = await extra_api.signup()
    rid = f"logcheck-{unique_email()[5:17]}"
    reply = await extra_api.call(
        "GET",
        f"/api/auth/me?token={account.token}&x=1&access_token={account.token}"
        f"&refresh_token={account.refresh_token}",
        token=account.token,
        headers={"X-Request-Id": rid},
    )
    assert reply.status == 200, reply.text
    # A 401 answered by the gateway itself is logged too.
    rid_401 = rid + "-401"
    reply = await extra_api.call(
        "GET", f"/api/users?token={account.token}", headers={"X-Request-Id": rid_401}
    )
    assert_problem(reply, 401)

    # The WebSocket route reads `?token=` itself (here without an upgrade: not a socket).
    rid_ws = rid + "-ws"
    reply = await extra_api.call(
        "GET", f"/api/ws?since=0&token={account.token}", headers={"X-Request-Id": rid_ws}
    )
    assert reply.status < 500, reply.text

    gateway_log = extra_stack.log_path("gateway")
    for marker in (rid, rid_401, rid_ws):
        lines = await _log_lines(gateway_log, f"rid={marker}")
        assert len(lines) == 1, (marker, extra_stack.logs("gateway"))
        assert "token=[redacted]" in lines[0], lines[0]
    # The service logs the forwarded request with the same request id, redacted as well.
    auth_lines = await _log_lines(extra_stack.log_path("auth"), f"rid={rid}")
    assert auth_lines and "token=[redacted]" in auth_lines[0], extra_stack.logs("auth")

    secrets = (account.token, account.refresh_token, account.token.split(".")[2])
    for name in ("gateway", "auth"):
        text = extra_stack.log_path(name).read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"{name} log holds a token"


async def test_access_log_redacts_a_percent_encoded_token_key(
    extra_api: Api, extra_stack: Stack
) -> None:
    account = await extra_api.signup()
    rid = f"logcheck-enc-{unique_email()[5:17]}"
    await raw_call(
        extra_api.http,
        extra_api.base,
        f"/api/users?%74oken={account.token}",
        headers={"X-Request-Id": rid},
    )
    lines = await _log_lines(extra_stack.log_path("gateway"), f"rid={rid}")
    assert lines, extra_stack.logs("gateway")
    assert account.token not in lines[0], lines[0]
