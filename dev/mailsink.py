"""Local mail sink for development: an SMTP server (aiosmtpd) that keeps every message.

Each message is stored as `<DATA_DIR>/mail/<timestamp>-<id>.eml` (written whole, then
renamed, so a reader never sees half a message) and delivered nowhere else. `make run`
starts it and points SMTP_URL at it; the compose mail-catcher runs it with `--http` so the
messages can be read in a browser (the same JSON view as the gateway's `/dev/mail`).

    python -m dev.mailsink [--host 127.0.0.1] [--port 1025] [--dir var/mail] [--http PORT]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

from dev.mailbox import add_routes, message_name

log = logging.getLogger(__name__)
MAX_MESSAGE = 10 * 1024 * 1024


class Keep:
    """aiosmtpd handler: every accepted message becomes one `.eml` file in `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.received = 0

    def _store(self, content: bytes) -> str:
        name = message_name(dt.datetime.now(dt.UTC), uuid.uuid4().hex[:12])
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.folder / f".{name}.tmp"
        partial.write_bytes(content)
        os.replace(partial, self.folder / f"{name}.eml")
        return name

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode()
        name = await asyncio.to_thread(self._store, content)
        self.received += 1
        # No address in the log: the message id and the recipients' domains only.
        domains = sorted({str(r).rpartition("@")[2] for r in envelope.rcpt_tos})
        log.info("kept message %s for %s", name, ", ".join(domains))
        return "250 Message accepted for delivery"


async def serve(host: str, port: int, folder: Path, http_port: int | None) -> None:
    loop = asyncio.get_running_loop()
    handler = Keep(folder)

    def factory() -> Any:
        return SMTP(handler, hostname="mailsink", data_size_limit=MAX_MESSAGE, enable_SMTPUTF8=True)

    server = await loop.create_server(factory, host=host, port=port)
    runner = None
    if http_port is not None:
        app = web.Application()
        add_routes(app, folder)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, http_port).start()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"mail sink: SMTP on {host}:{port}, keeping messages in {folder}", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()
        if runner is not None:
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("MAILSINK_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("MAILSINK_PORT", 1025)))
    default_dir = Path(os.environ.get("DATA_DIR", "var")) / "mail"
    parser.add_argument("--dir", type=Path, default=default_dir)
    parser.add_argument("--http", type=int, default=None, help="also serve GET /dev/mail here")
    args = parser.parse_args()
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # aiosmtpd's own protocol log names the addresses of every message.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    asyncio.run(serve(args.host, args.port, args.dir.resolve(), args.http))


if __name__ == "__main__":
    main()
