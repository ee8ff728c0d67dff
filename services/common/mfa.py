"""AUTH_REQUIRE_MFA: a user of a named role without MFA is refused outside /api/auth/*.

Every component that checks tokens (the gateway and each service) applies it, at no cost
when the setting is empty (there is no policy then) and with a Redis round trip only for
the requests it would otherwise refuse:

- auth writes the user's MFA state at issue time into each access token (the `mfa`
  claim), so a token that says `true` settles it. When such a user turns MFA off, auth
  revokes their live access tokens (sockets opened with them close with 4001): the client
  refreshes and gets a token that says `false`, which is refused again;
- a token that says `false`, or that has no claim, is checked against the flag auth sets
  in Redis when the user confirms MFA (`mfa:on:<user id>`, kept for an access token's
  lifetime, after which no token older than the enrolment is left): a user who has just
  enrolled goes on with the token they hold, instead of being locked out until it expires.
"""

from __future__ import annotations

from collections.abc import Iterable

from redis.asyncio import Redis

from .problems import Problem
from .tokens import Identity

# Where a user who must enrol can still go: to enrol (and log in, refresh, log out, see
# their sessions), and the health checks.
EXEMPT_PREFIXES = ("/api/auth/", "/api/health/")
EXEMPT_PATHS = frozenset({"/api/health"})


def enrolled_key(user_id: int) -> str:
    return f"mfa:on:{user_id}"


def exempt(path: str) -> bool:
    return path in EXEMPT_PATHS or path.startswith(EXEMPT_PREFIXES)


class MfaPolicy:
    """The roles that must have MFA on, and the check of one request against them."""

    def __init__(self, redis: Redis, roles: Iterable[str]) -> None:
        self._redis = redis
        self.roles = frozenset(roles)

    def covers(self, role: str) -> bool:
        return role in self.roles

    async def check(self, identity: Identity, path: str) -> None:
        """403 `mfa_enrollment_required` for a user who must enrol and has not."""
        if identity.mfa is True or identity.role not in self.roles or exempt(path):
            return
        if await self._redis.exists(enrolled_key(identity.user_id)):
            return  # enrolled after this token was issued
        raise Problem(
            403,
            "mfa_enrollment_required",
            f"A {identity.role} must turn on multi-factor authentication first "
            "(POST /api/auth/mfa/totp).",
        )
