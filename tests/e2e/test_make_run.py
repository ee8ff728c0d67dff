"""`make run` itself: it comes up healthy, serves a sign-up, and Ctrl-C stops it in 5 s."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from ..infra import free_port
from ..stack import ROOT


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except OSError:
        return 0


def test_make_run_end_to_end(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("GATEWAY", "AUTH", "CONNECTIONS", "ACTIVITIES")}
    env = {k: v for k, v in os.environ.items() if not k.endswith(("REDIS_URL", "DATABASE_URL"))}
    env.update({f"{name}_PORT": str(port) for name, port in ports.items()})
    env.update({"DATA_DIR": str(tmp_path / "var"), "DEV_REDIS_PORT": str(free_port())})
    log = (tmp_path / "make-run.log").open("wb")
    proc = subprocess.Popen(
        ["make", "run"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, like a terminal's foreground job
    )
    base = f"http://127.0.0.1:{ports['GATEWAY']}"
    try:
        deadline = time.monotonic() + 90
        while _get(base + "/api/health") != 200:
            assert proc.poll() is None, (tmp_path / "make-run.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "make-run.log").read_text()
            time.sleep(0.2)

        request = urllib.request.Request(
            base + "/api/auth/signup",
            data=json.dumps(
                {
                    "name": "Make Run",
                    "email": "make-run@example.com",
                    "password": "long enough pass 1",
                    "role": "professional",
                }
            ).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 201
            assert json.loads(resp.read())["user"]["email"] == "make-run@example.com"

        # Embedded defaults: one SQLite file per service, dev keys, Redis with AOF.
        var = tmp_path / "var"
        for name in ("auth", "connections", "activities"):
            assert (var / f"{name}.db").exists()
        assert (var / "keys" / "jwt_ed25519.pem").exists()
        assert (var / "redis").is_dir()
    finally:
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends
        try:
            proc.wait(15)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        stopped_in = time.monotonic() - started
    assert stopped_in < 5.0, stopped_in
    # Nothing of the stack is left listening.
    for port in ports.values():
        assert _get(f"http://127.0.0.1:{port}/health") == 0
