"""JWT access tokens signed with Ed25519 (EdDSA): keys, issue, verify, revocation list."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import secrets
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import orjson
import redis.exceptions
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from redis.asyncio import Redis

from .tasks import ErrorOnce, honour_cancellation

log = logging.getLogger(__name__)

ALGORITHM = "EdDSA"
ROLES = frozenset({"professional", "client"})
REVOCATION_CHANNEL = "auth.revocations"
REQUIRED_CLAIMS = ["exp", "iat", "sub", "jti", "iss", "aud"]
LEEWAY_SECONDS = 5
PRUNE_SECONDS = 60.0  # how often expired entries leave a process's copy of the list


class InvalidToken(Exception):
    """The token is missing, malformed, expired, wrongly signed or revoked."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who made a request, as proven by a verified access token."""

    user_id: int
    role: str
    jti: str
    sid: str
    expires_at: int
    # Whether the user had MFA on when the token was issued (the `mfa` claim); None for a
    # token without the claim. Only AUTH_REQUIRE_MFA reads it (services/common/mfa.py).
    mfa: bool | None = None


def _write_atomically(path: Path, data: bytes, mode: int) -> bool:
    """Create `path` with `data` unless it exists; True when this call created it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process won the race: theirs is kept
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def ensure_dev_keys(private_path: Path, public_path: Path) -> None:
    """Generate a development key pair on first start; several processes may race here."""
    if private_path.exists() and public_path.exists():
        return
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    if _write_atomically(private_path, private_pem, 0o600):
        log.info("generated a development signing key in %s", private_path.parent)
    # Always derive the public key from whichever private key won.
    key = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if not public_path.exists():
        _write_atomically(public_path, public_pem, 0o644)


def load_public_key(pem: str | None, path: Path) -> Ed25519PublicKey:
    data = pem.encode() if pem else path.read_bytes()
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("JWT public key must be an Ed25519 key")
    return key


def load_private_key(pem: str | None, path: Path) -> Ed25519PrivateKey:
    data = pem.encode() if pem else path.read_bytes()
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("JWT private key must be an Ed25519 key")
    return key


class TokenVerifier:
    """Checks signature, algorithm, expiry, issuer and audience of an access token."""

    CACHE_SIZE = 10_000

    def __init__(self, public_key: Ed25519PublicKey, *, issuer: str, audience: str) -> None:
        self._key = public_key
        self._issuer = issuer
        self._audience = audience
        # Verified tokens, so a client's next request skips the signature check (the
        # costliest step on the hot path); expiry is still checked on every use.
        self._verified: dict[str, Identity] = {}

    def verify(self, token: str) -> Identity:
        cached = self._verified.get(token)
        if cached is not None:
            if cached.expires_at + LEEWAY_SECONDS >= time.time():
                return cached
            del self._verified[token]
        identity = self._verify(token)
        if len(self._verified) >= self.CACHE_SIZE:
            self._verified.clear()  # crude but bounded; refills from live traffic
        self._verified[token] = identity
        return identity

    def _verify(self, token: str) -> Identity:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                issuer=self._issuer,
                audience=self._audience,
                options={"require": REQUIRED_CLAIMS},
                leeway=LEEWAY_SECONDS,
            )
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise InvalidToken(type(exc).__name__) from exc
        sub, role = claims.get("sub"), claims.get("role")
        # ASCII digits only: int() of "\u00b9" (a digit to isdigit()) raises.
        if not (isinstance(sub, str) and sub.isascii() and sub.isdigit() and role in ROLES):
            raise InvalidToken("bad claims")
        if claims.get("typ") != "access":
            raise InvalidToken("not an access token")
        return Identity(
            user_id=int(sub),
            role=role,
            jti=str(claims["jti"]),
            sid=str(claims.get("sid", "")),
            expires_at=int(claims["exp"]),
            mfa=mfa if isinstance(mfa := claims.get("mfa"), bool) else None,
        )


class TokenIssuer:
    """Signs access tokens; only the auth service holds the private key."""

    def __init__(
        self, private_key: Ed25519PrivateKey, *, issuer: str, audience: str, ttl: dt.timedelta
    ) -> None:
        self._key = private_key
        self._issuer = issuer
        self._audience = audience
        self.ttl = ttl

    def issue(
        self,
        *,
        user_id: int,
        role: str,
        session_id: str,
        mfa: bool = False,
        not_after: dt.datetime | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """A signed access token; `not_after` caps its expiry (the end of its session)."""
        now = dt.datetime.now(dt.UTC)
        expires = now + self.ttl
        if not_after is not None:
            expires = max(now, min(expires, not_after))
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": str(user_id),
            "role": role,
            "typ": "access",
            "sid": session_id,
            "jti": uuid.uuid4().hex,
            "iat": int(now.timestamp()),
            "exp": int(expires.timestamp()),
            "mfa": mfa,
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM), claims


def new_opaque_token() -> str:
    return secrets.token_urlsafe(32)


class RevocationList:
    """Revoked access tokens (by `jti`) and sessions (by `sid`), kept in Redis until expiry.

    A process that runs `follow()` also keeps a copy in memory, fed by the revocation
    channel, and can check against it without a round trip (`is_revoked(local=True)`).
    """

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        # Key -> expiry (epoch seconds), while following and in step; None otherwise.
        self._local: dict[str, float] | None = None
        self._errors = ErrorOnce(log, "revocation copy")

    @staticmethod
    def _ttl(expires_at: int) -> int:
        return max(1, expires_at - int(dt.datetime.now(dt.UTC).timestamp()) + 10)

    async def revoke(self, *, jti: str | None, sid: str | None, expires_at: int) -> None:
        ttl = self._ttl(expires_at)
        async with self._redis.pipeline(transaction=False) as pipe:
            if jti:
                pipe.set(f"revoked:jti:{jti}", 1, ex=ttl)
            if sid:
                pipe.set(f"revoked:sid:{sid}", 1, ex=ttl)
            # Lets gateways close the live sockets opened with these tokens, and keeps
            # their copies of the list in step.
            message = {"jti": jti, "sid": sid, "exp": expires_at}
            pipe.publish(REVOCATION_CHANNEL, orjson.dumps(message))
            await pipe.execute()

    async def is_revoked(self, identity: Identity, *, local: bool = False) -> bool:
        """Whether the token or its session is revoked. With `local`, the copy in memory
        answers while it is in step (see `follow`); Redis answers otherwise."""
        keys = [f"revoked:jti:{identity.jti}"]
        if identity.sid:
            keys.append(f"revoked:sid:{identity.sid}")
        copy = self._local
        if local and copy is not None:
            now = time.time()
            return any(copy.get(key, 0.0) > now for key in keys)
        return any(await self._redis.mget(keys))

    @property
    def following(self) -> bool:
        return self._local is not None

    async def follow(self) -> None:
        """Keep the copy in memory for the process's lifetime.

        Subscribe first, then load what Redis holds, so nothing revoked in between is
        missed; from then on every published revocation is added. While the subscription
        is down the copy is dropped and checks go to Redis again. A revocation published
        a moment before a check may not be in the copy yet: only callers with a backstop
        (the services check Redis again) use it.
        """
        backoff = 0.1
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(REVOCATION_CHANNEL)
                copy = await self._load()
                self._local = copy
                backoff = 0.1
                pruned = time.monotonic()
                while True:
                    message = await pubsub.get_message(timeout=5.0)
                    honour_cancellation()
                    if message is not None:
                        _add(copy, message["data"])
                    if time.monotonic() - pruned > PRUNE_SECONDS:
                        now = time.time()
                        for key in [k for k, until in copy.items() if until <= now]:
                            del copy[key]
                        pruned = time.monotonic()
            except asyncio.CancelledError:
                raise
            except (redis.exceptions.RedisError, OSError) as exc:
                if self._local is not None:
                    log.warning("revocation copy dropped, checking Redis meanwhile: %r", exc)
                self._local = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception as exc:  # a bug: said once, with its traceback; checks go to Redis
                self._errors.note(exc)
                self._local = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                self._local = None
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _load(self) -> dict[str, float]:
        """Every revocation Redis holds now, with its expiry."""
        keys = [key async for key in self._redis.scan_iter(match="revoked:*", count=1000)]
        copy: dict[str, float] = {}
        now = time.time()
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in chunk:
                    pipe.ttl(key)
                ttls = await pipe.execute()
            for key, ttl in zip(chunk, ttls, strict=True):
                if ttl != -2:  # -2: expired meanwhile; -1 (no expiry) is kept a day
                    name = key.decode() if isinstance(key, bytes) else key
                    copy[name] = now + (ttl if ttl >= 0 else 86_400)
        return copy


def _add(copy: dict[str, float], data: bytes) -> None:
    try:
        message = orjson.loads(data)
        # A message without an expiry (an older publisher) is kept for a day.
        until = float(message.get("exp") or time.time() + 86_400) + 10
    except (ValueError, TypeError, AttributeError):
        log.warning("ignored a malformed message on %s", REVOCATION_CHANNEL)
        return
    if message.get("jti"):
        copy[f"revoked:jti:{message['jti']}"] = until
    if message.get("sid"):
        copy[f"revoked:sid:{message['sid']}"] = until


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
