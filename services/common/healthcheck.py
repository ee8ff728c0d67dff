"""`python -m services.common.healthcheck URL`: exit 0 if URL answers 200 (container checks)."""

import sys
import urllib.request


def main() -> int:
    url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080/api/health"
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:  # noqa: S310 - a fixed local URL
            return 0 if resp.status == 200 else 1
    except OSError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
