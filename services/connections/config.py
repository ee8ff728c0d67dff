"""Connections service settings (env prefix CONNECTIONS_, shared names unprefixed)."""

from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class ConnectionsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CONNECTIONS_", env_file=".env", extra="ignore")

    service_name: str = "connections"
    port: int = 8082
