"""A PostgreSQL database that is not UTF8 is refused at start, with a clear log line."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy.engine import make_url

from services.common.migrations import WrongEncoding, upgrade

from ..infra import free_port
from ..stack import ROOT, _admin

MIGRATIONS = ROOT / "services" / "auth" / "migrations"


@pytest_asyncio.fixture
async def sql_ascii_url(pg_url: str | None) -> AsyncIterator[str]:
    if pg_url is None:
        pytest.skip("no PostgreSQL: set TEST_POSTGRES_URL, run Docker, or install PostgreSQL")
    name = f"hc_ascii_{uuid.uuid4().hex[:12]}"
    await _admin(
        pg_url,
        [
            f"CREATE DATABASE \"{name}\" ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' "
            "TEMPLATE template0"
        ],
    )
    try:
        yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    finally:
        await _admin(pg_url, [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'])


async def test_migrations_refuse_a_sql_ascii_database(sql_ascii_url: str) -> None:
    with pytest.raises(WrongEncoding, match="SQL_ASCII"):
        await asyncio.to_thread(upgrade, MIGRATIONS, sql_ascii_url)


async def test_service_refuses_to_start_on_it(sql_ascii_url: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATA_DIR": str(tmp_path),
        "AUTH_DATABASE_URL": sql_ascii_url,
        "AUTH_PORT": str(free_port()),
        "REDIS_URL": "redis://127.0.0.1:1/0",  # never reached: it stops before serving
    }
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.auth"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if "refusing to start" in line]
    assert len(lines) == 1, result.stderr[-2000:]
    assert "SQL_ASCII" in lines[0] and "UTF8" in lines[0]
    assert "Traceback" not in result.stderr
