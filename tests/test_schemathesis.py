"""Schemathesis against the public OpenAPI: every operation, as a professional and as a client."""

from __future__ import annotations

import copy
import os
import re
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings

from gateway.app import public_document
from services.activities import api as activities_api
from services.auth import api as auth_api
from services.common.openapi import IDEMPOTENCY_PARAM, document_part
from services.connections import api as connections_api

from .stack import Stack

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20"))
# make test draws the same cases every run, so a failure reproduces; make fuzz new ones.
RANDOM = os.environ.get("FUZZ_RANDOM") == "1"
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,  # a 2-core machine shared with the whole stack: timing is no finding
    suppress_health_check=list(HealthCheck),
    database=None,  # no .hypothesis/ directory in the work tree
    derandomize=not RANDOM,
)
BACKENDS = os.environ.get("FUZZ_BACKENDS", "sqlite").split(",")
PASSWORD = "correct horse battery"

# The schema is built at import from the route tables the gateway and the services serve
# it from (no I/O): schemathesis's fixture-loaded schemas (`from_fixture`) fail under
# pytest 9.2 (they set `Function._nodeid`, which 9.2 no longer has).
# `test_fuzzed_document_is_the_served_one` checks the two are identical, so what is fuzzed
# is exactly `GET /api/openapi.json` of the running stack.
#
# Not reached by schemathesis, and covered elsewhere (tests/gateway, tests/common):
# - Content-Encoding gzip/deflate and stalled bodies: schemathesis sends neither.
# - non-ASCII digit and 4,301-digit path ids: ids only route on [0-9], and the documented
#   maximum keeps generated ids short.
# - joiners (U+200C/U+200D) between visible non-Latin characters: taken, but left out of
#   the text pattern (it cannot say "non-Latin" without Unicode classes); every other
#   refused character (C1, bidi, invisible, blank letters, U+2028/U+2029) is in it.
# - text lengths on PostgreSQL: `make fuzz` runs this on PostgreSQL too.
DOCUMENT = public_document(
    document_part(api.ROUTES, api.ERRORS) for api in (auth_api, connections_api, activities_api)
)
# The WebSocket upgrade is not a request/response operation (tests/live covers it).
# A copy: schemathesis changes the dict it loads, which then no longer equals the served one.
schema = schemathesis.openapi.from_dict(copy.deepcopy(DOCUMENT)).exclude(path="/api/ws")

pytestmark = [
    pytest.mark.parametrize("backend", BACKENDS, indirect=True),
    pytest.mark.timeout(int(os.environ.get("FUZZ_TIMEOUT", "120"))),
]


@dataclass
class Caller:
    role: str
    email: str
    token: str
    # An account of the same role whose sessions the cases that end one (logout, DELETE of
    # a session) use: fuzzed password changes count against the caller's own address (as
    # failed logins), and would soon throttle logins to it.
    spare: Caller | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def _signup(base: str, role: str) -> Caller:
    email = f"fuzz-{role}-{uuid.uuid4().hex[:12]}@example.com"
    body = {"name": f"Fuzz {role}", "email": email, "password": PASSWORD, "role": role}
    reply = requests.post(base + "/api/auth/signup", json=body, timeout=10)
    assert reply.status_code == 201, reply.text
    return Caller(role, email, reply.json()["token"])


def _fresh_token(base: str, caller: Caller) -> str:
    """A new session's token, of the caller's spare account (see `Caller.spare`)."""
    if caller.spare is None:
        caller.spare = _signup(base, caller.role)
    reply = requests.post(
        base + "/api/auth/login",
        json={"email": caller.spare.email, "password": PASSWORD},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["token"]


@pytest.fixture(scope="module", params=["professional", "client"])
def caller(request: pytest.FixtureRequest, stack: Stack) -> Caller:
    return _signup(stack.gateway_url, request.param)


def test_fuzzed_document_is_the_served_one(stack: Stack) -> None:
    reply = requests.get(stack.gateway_url + "/api/openapi.json", timeout=10)
    served: dict[str, Any] = reply.json()
    assert served == DOCUMENT


@schema.parametrize()
@SETTINGS
def test_api_conforms_to_its_openapi(case: schemathesis.Case, stack: Stack, caller: Caller) -> None:
    headers = _headers(case, stack, caller)
    response = case.call(base_url=stack.gateway_url, headers=headers)
    excluded = []
    if response.status_code == 400 and _code(response) in ("not_a_client", "invalid_code"):
        # A well-formed invitation of an address a professional signed up with (the fuzzed
        # sign-ups take simple addresses too), or a well-formed MFA code that is not the
        # account's (no schema can say which codes are): API.md makes those a 400, which
        # the check for schema-valid requests would otherwise count as refusing valid data.
        excluded.append(schemathesis.checks.positive_data_acceptance)
    if response.status_code == 400 and _code(response) == "invalid_token":
        # A well-formed verification or reset token that no mail carried (the real ones
        # only come by mail): API.md makes that a 400 `invalid_token`, not a refusal of
        # the request's shape.
        excluded.append(schemathesis.checks.positive_data_acceptance)
    if response.status_code == 400 and _in_the_past(response):
        # A well-formed `starts_at` that is not in the future: API.md makes that a 400, and
        # "after now" is no JSON Schema keyword (the document says it in the description).
        excluded.append(schemathesis.checks.positive_data_acceptance)
    case.validate_response(
        response,
        headers=headers,
        excluded_checks=excluded,
        transport_kwargs={"base_url": stack.gateway_url, "headers": headers},
    )


def _in_the_past(response: schemathesis.Response) -> bool:
    try:
        errors = response.json().get("errors")
    except (ValueError, AttributeError):
        return False
    return errors == [{"field": "starts_at", "message": "must be in the future"}]


def _code(response: schemathesis.Response) -> str | None:
    try:
        return response.json().get("code")
    except (ValueError, AttributeError):
        return None


IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_PARAM["schema"]["pattern"])


def _fresh_idempotency_key(case: schemathesis.Case) -> None:
    """A well-formed generated `Idempotency-Key` becomes one no other case used.

    Schemathesis draws keys from the pattern alone, so it sends "0" with one body and then
    with another: the server rightly answers the second 422 `idempotency_key_reused` (a
    key stands for one request), which the check for schema-valid requests would count as
    refusing valid data. Ill-formed keys are sent as generated (and must be a 400);
    replays of one key are tests/idempotency's.
    """
    key = (case.headers or {}).get("Idempotency-Key")
    if isinstance(key, str) and IDEMPOTENCY_KEY.search(key):
        case.headers["Idempotency-Key"] = uuid.uuid4().hex


def _headers(case: schemathesis.Case, stack: Stack, caller: Caller) -> dict[str, str] | None:
    """The caller's token, unless the case is about a missing or wrong one."""
    _fresh_idempotency_key(case)
    if case.operation.schema.is_security_param_negated(case):
        return None  # sent as generated
    if case.operation.path == "/api/auth/logout":
        # Logging out revokes the token: every such case gets a session of its own.
        return {"Authorization": f"Bearer {_fresh_token(stack.gateway_url, caller)}"}
    if case.operation.path == "/api/auth/sessions/{id}" and case.method.upper() == "DELETE":
        # Ending a session revokes its tokens: every such case gets a session of its own
        # (of the spare account), and one that names the caller's main session (a
        # workflow may have listed it) ends that new session instead.
        token = _fresh_token(stack.gateway_url, caller)
        if (case.path_parameters or {}).get("id") == _sid(caller.token):
            case.path_parameters["id"] = _sid(token)
        return {"Authorization": f"Bearer {token}"}
    return caller.headers


def _sid(token: str) -> str:
    return jwt.decode(token, options={"verify_signature": False})["sid"]


def test_api_workflows_conform_to_its_openapi(stack: Stack, caller: Caller) -> None:
    """Stateful: sequences schemathesis derives from the document (create an activity or a
    connection, then delete it, ...), so deletes meet real ids and use-after-free is checked."""

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            # A new account per scenario: Hypothesis replays the start of earlier scenarios
            # and requires the same answers (an invitation already sent would now be a 409,
            # an inconsistency it reports as a flaky strategy).
            self.caller = _signup(stack.gateway_url, caller.role)

        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"base_url": stack.gateway_url, "headers": _headers(case, stack, self.caller)}

    Workflow.run(
        settings=settings(SETTINGS, max_examples=max(1, EXAMPLES // 2), stateful_step_count=5)
    )
