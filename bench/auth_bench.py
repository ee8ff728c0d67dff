"""Auth and gateway speed: reads through the gateway vs straight to auth, and logins.

Run: `make bench` (or `.venv/bin/python -m bench.auth_bench [sqlite|postgres]`).
"""

from __future__ import annotations

import sys
import uuid

from .harness import post_json, print_table, running_stack, wrk


def main() -> None:
    backend = sys.argv[1] if len(sys.argv) > 1 else "sqlite"
    with running_stack(backend) as stack:
        gw, auth = stack.gateway_url, stack.service_url("auth")
        password = "bench password"
        emails = []
        for i in range(40):
            email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
            role = "professional" if i % 2 else "client"
            body = {"name": f"Bench {i}", "email": email, "password": password, "role": role}
            token = post_json(gw + "/api/auth/signup", body)["token"]
            emails.append(email)
        rows = []
        for name, base in (("gateway", gw), ("direct to auth", auth)):
            rows.append((f"GET /api/auth/me ({name})", wrk(base + "/api/auth/me", token=token)))
            rows.append(
                (
                    f"GET /api/users?role=professional ({name})",
                    wrk(base + "/api/users?role=professional", token=token),
                )
            )
        login = {"email": emails[0], "password": password}
        rows.append(
            (
                "POST /api/auth/login (gateway, argon2id)",
                wrk(gw + "/api/auth/login", body=login, connections=16),
            )
        )
        print_table(f"auth bench on {backend}, 64 connections, 10 s each (wrk)", rows)


if __name__ == "__main__":
    main()
