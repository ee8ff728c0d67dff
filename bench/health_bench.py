"""Health req/s, as a load balancer polls it: `python -m bench.health_bench [sqlite|postgres]`.

Readiness (`/api/health`) and liveness (`/api/health/live`) through the gateway, then each
service's own `/health`, each with wrk at 64 connections; then readiness again while the
list route is under load (how the old figure of 437 req/s was taken).
"""

from __future__ import annotations

import sys
import threading
import urllib.error
import urllib.request
import uuid

from .harness import log_findings, post_json, print_table, running_stack, wrk

SECONDS = 10


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def main() -> None:
    backend = sys.argv[1] if len(sys.argv) > 1 else "sqlite"
    with running_stack(backend) as stack:
        gw = stack.gateway_url
        rows = []
        targets = [("GET /api/health (gateway, readiness)", gw + "/api/health")]
        if _status(gw + "/api/health/live") == 200:
            targets.append(("GET /api/health/live (gateway, liveness)", gw + "/api/health/live"))
        for name in ("auth", "connections", "activities"):
            targets.append((f"GET /health ({name}, direct)", stack.service_url(name) + "/health"))
        for label, url in targets:
            rows.append((label, wrk(url, seconds=SECONDS)))

        # Readiness while the gateway and connections serve a list at full tilt.
        body = {
            "name": "Bench Pro",
            "email": f"pro-{uuid.uuid4().hex[:8]}@bench.example.com",
            "password": "bench password",
            "role": "professional",
        }
        token = post_json(gw + "/api/auth/signup", body)["token"]
        loaded: dict[str, dict[str, float]] = {}

        def load() -> None:
            loaded["list"] = wrk(gw + "/api/connection/list", token=token, seconds=SECONDS)

        thread = threading.Thread(target=load)
        thread.start()
        health_under_load = wrk(gw + "/api/health", seconds=SECONDS - 1, connections=16)
        thread.join()
        rows.append(("GET /api/health (16 conns, list route under load)", health_under_load))
        rows.append(("GET /api/connection/list (64 conns, the load)", loaded["list"]))
        print_table(f"health bench on {backend}, 64 connections, {SECONDS} s each (wrk)", rows)
        log_findings(stack)


if __name__ == "__main__":
    main()
