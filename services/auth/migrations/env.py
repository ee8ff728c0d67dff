"""Alembic environment of the auth service."""

from services.auth.tables import Base
from services.common.migrations import run_env

run_env(Base.metadata)
