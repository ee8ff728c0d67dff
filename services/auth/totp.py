"""TOTP secrets and recovery codes: making them, sealing them at rest, checking a code."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets

import pyotp
import segno
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ISSUER = "HealthConnect"
STEP_SECONDS = 30  # RFC 6238's default, what every authenticator app uses
DRIFT_STEPS = 1  # a code of the step before or after is taken too (clock drift, typing)
RECOVERY_CODES = 10
# Crockford's base32 (no i, l, o, u): 10 characters are 50 bits, read aloud without doubt.
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_RECOVERY_LENGTH = 10
_NONCE = 12


class MfaKeys:
    """Keys derived from the auth service's signing key, which never leaves the service
    (as services/common/idempotency.py derives its secret): a database dump alone reads no
    TOTP secret and cannot test a guessed recovery code. The price: a new signing key
    makes every stored secret and recovery code unusable, so a key rotation must keep the
    old key for these (or have the users enrol again)."""

    def __init__(self, signing_key: bytes) -> None:
        self._aead = AESGCM(_derive(signing_key, b"healthconnect totp secrets"))
        self._codes = _derive(signing_key, b"healthconnect recovery codes")

    def seal(self, user_id: int, secret: str) -> str:
        """The secret encrypted and bound to its user (a row copied to another user's does
        not decrypt)."""
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, secret.encode(), _bound(user_id))
        return base64.b64encode(nonce + sealed).decode()

    def unseal(self, user_id: int, sealed: str) -> str | None:
        """The secret, or None when the row does not decrypt under this key."""
        try:
            raw = base64.b64decode(sealed)
            return self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], _bound(user_id)).decode()
        except (InvalidTag, ValueError):
            return None

    def code_hash(self, user_id: int, code: str) -> str:
        message = f"{user_id}:{normalise(code)}".encode()
        return hmac.new(self._codes, message, hashlib.sha256).hexdigest()


def _derive(key: bytes, label: bytes) -> bytes:
    return hmac.new(key, label, hashlib.sha256).digest()


def _bound(user_id: int) -> bytes:
    return f"user:{user_id}".encode()


def new_secret() -> str:
    return pyotp.random_base32()  # 160 bits, as RFC 4226 recommends


def otpauth_uri(secret: str, email: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=ISSUER)


def qr_svg_data_uri(uri: str) -> str:
    """The URI as a QR code, an SVG in a `data:` URI (the demo page's CSP allows those)."""
    return segno.make(uri, error="m").svg_data_uri(scale=4, border=2, dark="#111")


def new_recovery_codes() -> list[str]:
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = "".join(secrets.choice(_ALPHABET) for _ in range(_RECOVERY_LENGTH))
        codes.append(f"{raw[:5]}-{raw[5:]}")
    return codes


def normalise(code: str) -> str:
    """What the user typed, without the spaces and dashes that grouping adds."""
    return "".join(code.split()).replace("-", "").lower()


def looks_like_totp(code: str) -> bool:
    code = normalise(code)
    return len(code) == 6 and code.isascii() and code.isdigit()


def matching_step(secret: str, code: str, *, now: float, after: int | None) -> int | None:
    """The time step whose TOTP is `code`, within the drift allowed and later than
    `after` (the last step accepted), else None: a code is good once, and never after a
    newer one."""
    if not looks_like_totp(code):
        return None
    code = normalise(code)
    totp = pyotp.TOTP(secret)
    current = int(now // STEP_SECONDS)
    found = None
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        # Every candidate is compared (in constant time), so timing says nothing.
        if hmac.compare_digest(totp.generate_otp(step), code) and (after is None or step > after):
            found = step
    return found
