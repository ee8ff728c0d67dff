"""`make run` itself: it comes up healthy, serves a sign-up whose verification mail lands in
its mail sink (and its mailbox view), and Ctrl-C stops it in 5 s."""

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
    env.update({"DEV_SMTP_PORT": str(free_port())})
    env.pop("SMTP_URL", None)
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

        # The verification mail went to the local sink: an .eml file, and the mailbox view.
        deadline = time.monotonic() + 20
        while not list((var / "mail").glob("*.eml")):
            assert time.monotonic() < deadline, (tmp_path / "make-run.log").read_text()
            time.sleep(0.1)
        with urllib.request.urlopen(base + "/dev/mail?to=make-run@example.com", timeout=5) as resp:
            (listed,) = json.loads(resp.read())
        assert listed["subject"] == "Verify your HealthConnect address"
        with urllib.request.urlopen(f"{base}/dev/mail/{listed['id']}", timeout=5) as resp:
            message = json.loads(resp.read())
        code = message["text"].split("Verification code: ")[1].split()[0]
        verify = urllib.request.Request(
            base + "/api/auth/verify-email",
            data=json.dumps({"token": code}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(verify, timeout=10) as resp:
            assert json.loads(resp.read())["email_verified"] is True
    finally:
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends
        killed = False
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            killed = True
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        stopped_in = time.monotonic() - started
    # Ctrl-C stops every process by itself (no SIGKILL needed); how long it took is
    # reported, not asserted (a loaded machine takes longer).
    print(f"make run stopped {stopped_in:.2f} s after Ctrl-C")
    assert not killed, f"still running {stopped_in:.1f} s after Ctrl-C"
    # Nothing of the stack is left listening.
    for port in ports.values():
        assert _get(f"http://127.0.0.1:{port}/health") == 0
