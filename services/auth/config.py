"""Auth service settings (env prefix AUTH_, shared names unprefixed)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import CommaList, ServiceSettings


class AuthSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AUTH_", env_file=".env", extra="ignore")

    service_name: str = "auth"
    port: int = 8081

    jwt_private_key: str | None = Field(None, validation_alias="JWT_PRIVATE_KEY")
    jwt_private_key_file: Path | None = Field(None, validation_alias="JWT_PRIVATE_KEY_FILE")
    access_ttl_seconds: int = 15 * 60
    refresh_ttl_seconds: int = 30 * 24 * 3600
    # A session (a refresh-token family) ends after this long without a refresh, and this
    # long after its login whatever happens; enforced at refresh (401 session_expired).
    session_idle_seconds: int = Field(30 * 60, gt=0)
    session_max_seconds: int = Field(12 * 3600, gt=0)

    # Login throttling: failures per email and per client address in a sliding window.
    login_max_failures_per_email: int = 5
    login_max_failures_per_ip: int = 100
    login_window_seconds: int = 15 * 60
    # Proxies whose X-Forwarded-For is believed (the gateway); others are the client.
    trusted_proxies: CommaList = [
        "127.0.0.1",
        "::1",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
    ]

    # Version 3 (mail): throttles of the routes that create accounts or send mail, per
    # address and per client IP, in a sliding window (429 with Retry-After). The per-IP
    # limits leave room for a clinic's patients signing up behind one NAT.
    throttle_window_seconds: int = Field(3600, gt=0)
    signup_max_per_email: int = Field(10, gt=0)
    signup_max_per_ip: int = Field(300, gt=0)
    verify_resend_max_per_email: int = Field(3, gt=0)
    verify_resend_max_per_ip: int = Field(100, gt=0)
    password_reset_max_per_email: int = Field(3, gt=0)
    password_reset_max_per_ip: int = Field(200, gt=0)
    # Lifetimes of what the mails carry.
    verify_ttl_seconds: int = Field(24 * 3600, gt=0)
    reset_ttl_seconds: int = Field(30 * 60, gt=0)

    # argon2id cost (OWASP's minimum profile by default: m=19 MiB, t=2, p=1).
    argon2_time_cost: int = 2
    argon2_memory_kib: int = 19_456
    argon2_parallelism: int = 1
    password_workers: int = 4

    @property
    def private_key_path(self) -> Path:
        return self.jwt_private_key_file or self.keys_dir / "jwt_ed25519.pem"
