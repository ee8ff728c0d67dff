"""Connections service settings (env prefix CONNECTIONS_, shared names unprefixed)."""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class ConnectionsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CONNECTIONS_", env_file=".env", extra="ignore")

    service_name: str = "connections"
    port: int = 8082
    # Consumer groups that cascade a removal (activities cancels invites): a removal
    # answers once they have applied it (at most 1 s), so the cascade's notifications
    # come before the client's next change's. Empty: answer at once.
    cascade_groups: list[str] = Field(default=["activities"], validation_alias="CASCADE_GROUPS")
