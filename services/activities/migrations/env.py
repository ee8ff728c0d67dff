"""Alembic environment of the activities service."""

from services.activities.tables import Base
from services.common.migrations import run_env

run_env(Base.metadata)
