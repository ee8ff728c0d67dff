"""Gateway settings (env prefix GATEWAY_, shared names unprefixed)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import CommaList, CommonSettings


class GatewaySettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_file=".env", extra="ignore")

    port: int = 8080
    auth_url: str = Field("http://127.0.0.1:8081", validation_alias="AUTH_URL")
    connections_url: str = Field("http://127.0.0.1:8082", validation_alias="CONNECTIONS_URL")
    activities_url: str = Field("http://127.0.0.1:8083", validation_alias="ACTIVITIES_URL")
    cors_origins: CommaList = Field(
        ["http://localhost:3000", "http://127.0.0.1:3000"], validation_alias="CORS_ORIGINS"
    )
    upstream_timeout_seconds: float = 30.0
    # The public port: an idle connection, or one whose request headers have not all
    # arrived, is closed after this many seconds (slow-header clients hold nothing long).
    keepalive_timeout_seconds: float = Field(20.0, gt=0)
    upstream_pool_size: int = 200
    # Open sockets per user on this replica: a new one past the cap closes the oldest
    # with 4008 (gateway/hub.py). Counted per replica, not across replicas.
    max_sockets_per_user: int = Field(20, ge=1)
