"""`python -m dev.keygen DIR`: create an Ed25519 key pair for JWTs in DIR unless one exists."""

from __future__ import annotations

import sys
from pathlib import Path

from services.common.tokens import ensure_dev_keys


def main() -> None:
    directory = Path(sys.argv[1] if len(sys.argv) > 1 else "var/keys")
    ensure_dev_keys(directory / "jwt_ed25519.pem", directory / "jwt_ed25519.pub.pem")
    print(f"keys in {directory}")


if __name__ == "__main__":
    main()
