"""Activities service settings (env prefix ACTIVITIES_, shared names unprefixed)."""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class ActivitiesSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ACTIVITIES_", env_file=".env", extra="ignore")

    service_name: str = "activities"
    port: int = 8083
    # Minutes before an activity's start that its reminder goes out (API.md's name, without
    # the prefix); fractions allowed, e.g. 0.5 for 30 seconds.
    reminder_minutes: float = Field(60.0, gt=0, le=525_600, validation_alias="REMINDER_MINUTES")
