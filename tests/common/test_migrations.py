"""Every service's Alembic migrations build exactly its tables, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, inspect, pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from services.common.migrations import alembic_config, upgrade

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["auth", "connections", "activities"]


def _schema(conn: Connection) -> dict[str, object]:
    insp = inspect(conn)
    return {
        name: (
            [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(name)],
            sorted((i["name"], tuple(i["column_names"])) for i in insp.get_indexes(name)),
        )
        for name in sorted(insp.get_table_names())
    }


def _state(conn: Connection, metadata: MetaData) -> tuple[str | None, list, dict[str, object]]:
    context = MigrationContext.configure(
        conn,
        opts={"compare_type": True, "render_as_batch": conn.dialect.name == "sqlite"},
    )
    return context.get_current_revision(), compare_metadata(context, metadata), _schema(conn)


async def inspect_database(url: str, metadata: MetaData) -> tuple[str | None, list, dict]:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_state, metadata)
    finally:
        await engine.dispose()


@pytest.mark.parametrize("service", SERVICES)
async def test_migrations_build_the_service_schema(fresh_url: str, service: str) -> None:
    location = ROOT / "services" / service / "migrations"
    metadata = importlib.import_module(f"services.{service}.tables").Base.metadata
    head = ScriptDirectory.from_config(alembic_config(location, fresh_url)).get_current_head()

    await asyncio.to_thread(upgrade, location, fresh_url)
    revision, diffs, schema = await inspect_database(fresh_url, metadata)
    assert revision == head
    assert set(metadata.tables) <= set(schema)
    assert "outbox" in schema
    assert diffs == [], f"{service}: migrations differ from tables.py: {diffs}"

    # Running it again (every start does) changes nothing.
    await asyncio.to_thread(upgrade, location, fresh_url)
    again = await inspect_database(fresh_url, metadata)
    assert again == (revision, [], schema)
