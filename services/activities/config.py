"""Activities service settings (env prefix ACTIVITIES_, shared names unprefixed)."""

from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class ActivitiesSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ACTIVITIES_", env_file=".env", extra="ignore")

    service_name: str = "activities"
    port: int = 8083
