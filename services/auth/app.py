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
    background,
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
from .service import (
    AccountMail,
    AuthContext,
    LoginLimiter,
    Passwords,
    Throttle,
    TooManyRequests,
    purge_email_tokens_forever,
)
from .tables import IdempotencyKey, MailOutbox, OutboxEvent
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

        def throttle(name: str, per_email: int, per_ip: int) -> Throttle:
            # One hash tag per throttle: its keys are used together (one script).
            return Throttle(
                redis,
                prefix=f"throttle:{{{name}}}",
                limits={"email": per_email, "ip": per_ip},
                window=settings.throttle_window_seconds,
                error=TooManyRequests,
                fail_open=True,
            )

        ctx = AuthContext(
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
            accounts=AccountMail(
                public_url=settings.public_url,
                signup=throttle(
                    "signup", settings.signup_max_per_email, settings.signup_max_per_ip
                ),
                resend=throttle(
                    "verify-resend",
                    settings.verify_resend_max_per_email,
                    settings.verify_resend_max_per_ip,
                ),
                reset=throttle(
                    "password-reset",
                    settings.password_reset_max_per_email,
                    settings.password_reset_max_per_ip,
                ),
                verify_ttl=dt.timedelta(seconds=settings.verify_ttl_seconds),
                reset_ttl=dt.timedelta(seconds=settings.reset_ttl_seconds),
            ),
            # TOTP secrets and recovery codes are keyed with the signing key too: a copy of
            # the database alone reads neither (services/auth/totp.py).
            mfa_keys=MfaKeys(raw_key),
            redis=redis,
            session_idle=dt.timedelta(seconds=settings.session_idle_seconds),
            session_max=dt.timedelta(seconds=settings.session_max_seconds),
            mfa_policy=app.get(mfa_policy_key),
        )
        app[api.ctx_key] = ctx
        async with background(purge_email_tokens_forever(ctx), "auth-email-token-purge"):
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
        mail_model=MailOutbox,
    )
    app = create_service_app(spec, settings)
    app[api.trusted_key] = trusted_networks(settings.trusted_proxies)
    return app


def main() -> None:
    run_service(AuthSettings(), MIGRATIONS, create_app)
