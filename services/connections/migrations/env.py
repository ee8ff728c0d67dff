"""Alembic environment of the connections service."""

from services.common.migrations import run_env
from services.connections.tables import Base

run_env(Base.metadata)
