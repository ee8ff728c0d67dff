"""Settings read from the environment and `.env`, shared by every component."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .tokens import ROLES


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


# A list setting given in the environment as `a,b,c`.
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split_commas)]


class CommonSettings(BaseSettings):
    """What every process needs. Service settings subclass this with their own env prefix.

    Shared names (REDIS_URL, JWT_*, ENVIRONMENT, ...) carry an explicit alias so the prefix
    of a subclass does not apply to them; service-specific names (e.g. AUTH_DATABASE_URL)
    take the prefix.
    """

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    environment: str = Field("development", validation_alias="ENVIRONMENT")
    data_dir: Path = Field(Path("var"), validation_alias="DATA_DIR")
    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias="REDIS_URL")
    log_level: str = Field("INFO", validation_alias="LOG_LEVEL")
    instance_id: str = Field(default_factory=socket.gethostname, validation_alias="INSTANCE_ID")

    jwt_public_key: str | None = Field(None, validation_alias="JWT_PUBLIC_KEY")
    jwt_public_key_file: Path | None = Field(None, validation_alias="JWT_PUBLIC_KEY_FILE")
    jwt_issuer: str = Field("healthconnect-auth", validation_alias="JWT_ISSUER")
    jwt_audience: str = Field("healthconnect", validation_alias="JWT_AUDIENCE")

    # Where users reach the system (the gateway), for links it hands out (mail, calendar
    # feeds).
    public_url: str = Field("http://127.0.0.1:8080", validation_alias="PUBLIC_URL")

    stream_maxlen: int = Field(100_000, validation_alias="STREAM_MAXLEN")
    # Check the Redis revocation list in the service too, not only in the gateway, so a
    # token that was logged out cannot be replayed straight at a service.
    check_revocation: bool = Field(True, validation_alias="CHECK_REVOCATION")

    # Seconds for a whole request body to arrive (else 408), shared by every component.
    body_timeout_seconds: float = Field(15.0, gt=0, validation_alias="BODY_TIMEOUT_SECONDS")
    # Seconds an idle connection stays open; it also bounds how long a client may take to
    # send a request's headers (aiohttp has no separate header timeout). A service's must
    # exceed the gateway's pool keep-alive (60 s), so the gateway closes first.
    keepalive_timeout_seconds: float = Field(75.0, gt=0)

    # Roles whose users must have MFA on: without it they get 403 mfa_enrollment_required
    # everywhere but /api/auth/* and /api/health (services/common/mfa.py). Read by auth,
    # which puts the user's MFA state in each access token, and by every component that
    # checks tokens.
    auth_require_mfa: CommaList = Field([], validation_alias="AUTH_REQUIRE_MFA")

    host: str = "127.0.0.1"
    port: int = 8080

    @field_validator("auth_require_mfa")
    @classmethod
    def _known_roles(cls, roles: list[str]) -> list[str]:
        unknown = set(roles) - ROLES
        if unknown:
            raise ValueError(f"AUTH_REQUIRE_MFA names unknown roles: {sorted(unknown)}")
        return roles

    @property
    def production(self) -> bool:
        return self.environment.lower() in {"production", "prod"}

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def public_key_path(self) -> Path:
        return self.jwt_public_key_file or self.keys_dir / "jwt_ed25519.pub.pem"


class ServiceSettings(CommonSettings):
    """A service with its own database: `<PREFIX>DATABASE_URL`, default a SQLite file."""

    service_name: str = "service"
    database_url: str | None = None
    # PostgreSQL connections: the request pool holds twice this, the raw read pool this
    # many, and the consumer one of its own.
    db_pool_size: int = Field(10, ge=1, le=200, validation_alias="DB_POOL_SIZE")
    consumer_claim_idle_ms: int = Field(30_000, validation_alias="CONSUMER_CLAIM_IDLE_MS")
    consumer_max_deliveries: int = Field(5, validation_alias="CONSUMER_MAX_DELIVERIES")

    # Mail (services/common/mail.py): where it goes out and who it is from (its links point
    # at `public_url`). `make run` points SMTP_URL at its local mail sink.
    smtp_url: str = Field("smtp://127.0.0.1:1025", validation_alias="SMTP_URL")
    mail_from: str = Field(
        "HealthConnect <no-reply@healthconnect.example>", validation_alias="MAIL_FROM"
    )
    # How long a sender's claim on queued messages lasts: a sender killed holding one leaves
    # them to be sent by another (or by itself restarted) after this. Longer than a batch
    # takes to send, or a message may go twice (with one Message-ID).
    mail_claim_seconds: float = Field(60.0, gt=0, le=3600, validation_alias="MAIL_CLAIM_SECONDS")
    # The longest pause between two tries of a message while the SMTP server is down.
    mail_retry_max_seconds: float = Field(
        60.0, gt=0, le=3600, validation_alias="MAIL_RETRY_MAX_SECONDS"
    )

    @model_validator(mode="after")
    def _default_database(self) -> ServiceSettings:
        if not self.database_url:
            if self.production:
                raise ValueError(f"{self.service_name}: DATABASE_URL is required in production")
            path = (self.data_dir / f"{self.service_name}.db").resolve()
            self.database_url = f"sqlite+aiosqlite:///{path}"
        return self

    @property
    def consumer_name(self) -> str:
        # Stable per replica, so that a restarted replica owns its old pending entries.
        return f"{self.service_name}-{self.instance_id}"
