"""docker-compose.yml: valid, production-shaped, one database per service."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
SERVICES = ("auth", "connections", "activities")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _compose_cli() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_config_validates() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker compose client on this machine")
    result = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_each_service_names_its_own_database(compose: dict) -> None:
    databases = {}
    for name in SERVICES:
        env = compose["services"][name]["environment"]
        url = make_url(
            env[f"{name.upper()}_DATABASE_URL"].replace("${POSTGRES_PASSWORD:-postgres}", "pw")
        )
        assert url.drivername == "postgresql+asyncpg"
        assert url.host == "postgres"
        databases[name] = url.database
        # No service is handed another service's database under any name.
        for other in SERVICES:
            if other != name:
                assert f"{other.upper()}_DATABASE_URL" not in env
    assert databases == {name: name for name in SERVICES}
    init = (ROOT / "deploy" / "postgres-init.sql").read_text()
    for name in SERVICES:
        assert f"CREATE DATABASE {name} ENCODING 'UTF8'" in init


def test_only_the_gateway_publishes_a_port(compose: dict) -> None:
    published = {n for n, s in compose["services"].items() if s.get("ports")}
    assert published == {"gateway"}
    assert compose["services"]["gateway"]["ports"] == ["8080:8080"]


def test_health_checks_and_persistence(compose: dict) -> None:
    services = compose["services"]
    for name in (*SERVICES, "gateway", "postgres", "redis"):
        assert "healthcheck" in services[name], name
    assert "--appendonly" in services["redis"]["command"]
    for name in (*SERVICES, "gateway"):
        assert services[name]["environment"]["ENVIRONMENT"] == "production"
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    gateway_env = services["gateway"]["environment"]
    assert gateway_env["AUTH_URL"] == "http://auth:8081"


def test_one_image_for_every_component(compose: dict) -> None:
    images = {compose["services"][n]["image"] for n in (*SERVICES, "gateway")}
    assert len(images) == 1
    assert (ROOT / "Dockerfile").exists()


def test_postgres_is_initialised_in_utf8(compose: dict) -> None:
    """In SQL_ASCII, varchar(100) counts bytes: a valid name of 100 "é" was a 500."""
    args = compose["services"]["postgres"]["environment"]["POSTGRES_INITDB_ARGS"]
    assert "--encoding=UTF8" in args.split()
