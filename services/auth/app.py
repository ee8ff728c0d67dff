"""Auth service: app factory, its resources, and the process entry point."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from services.common.idempotency import secret_from_key
from services.common.service_app import (
    ServiceSpec,
    Subscription,
    catch_up_key,
    create_service_app,
    db_key,
    run_service,
    trusted_networks,
)
from services.common.tokens import RevocationList, TokenIssuer, load_private_key
from services.common.web import mfa_policy_key, redis_key

from . import api, bus
from .config import AuthSettings
from .service import AuthContext, LoginLimiter, Passwords
from .tables import IdempotencyKey, OutboxEvent
from .totp import MfaKeys

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: AuthSettings | None = None) -> web.Application:
    settings = settings or AuthSettings()

    async def auth_ctx(app: web.Application) -> AsyncIterator[None]:
        passwords = Passwords(
            time_cost=settings.argon2_time_cost,
            memory_kib=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            workers=settings.password_workers,
        )
        await passwords.start()
        key = load_private_key(settings.jwt_private_key, settings.private_key_path)
        raw_key = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        redis = app[redis_key]
        app[api.ctx_key] = AuthContext(
            db=app[db_key],
            passwords=passwords,
            issuer=TokenIssuer(
                key,
                issuer=settings.jwt_issuer,
                audience=settings.jwt_audience,
                ttl=dt.timedelta(seconds=settings.access_ttl_seconds),
            ),
            limiter=LoginLimiter(
                redis,
                per_email=settings.login_max_failures_per_email,
                per_ip=settings.login_max_failures_per_ip,
                window=settings.login_window_seconds,
            ),
            revocations=RevocationList(redis),
            refresh_ttl=dt.timedelta(seconds=settings.refresh_ttl_seconds),
            catch_up=app[catch_up_key],
            # TOTP secrets and recovery codes are keyed with the signing key too: a copy of
            # the database alone reads neither (services/auth/totp.py).
            mfa_keys=MfaKeys(raw_key),
            redis=redis,
            session_idle=dt.timedelta(seconds=settings.session_idle_seconds),
            session_max=dt.timedelta(seconds=settings.session_max_seconds),
            mfa_policy=app.get(mfa_policy_key),
        )
        yield
        passwords.close()

    def idempotency_secret() -> bytes:
        # The signing key never leaves this service, so records of anonymous requests
        # (sealed with a secret derived from it) are useless to a reader of the database.
        key = load_private_key(settings.jwt_private_key, settings.private_key_path)
        return secret_from_key(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))

    spec = ServiceSpec(
        name="auth",
        outbox_model=OutboxEvent,
        idempotency_model=IdempotencyKey,
        routes=api.ROUTES,
        errors=api.ERRORS,
        migrations=MIGRATIONS,
        subscription=Subscription(group=bus.GROUP, streams=bus.STREAMS, handler=bus.handler),
        contexts=[auth_ctx],
        idempotency_secret=idempotency_secret,
    )
    app = create_service_app(spec, settings)
    app[api.trusted_key] = trusted_networks(settings.trusted_proxies)
    return app


def main() -> None:
    run_service(AuthSettings(), MIGRATIONS, create_app)
