"""A folder of received mail (`<timestamp>-<id>.eml`) read as a mailbox, for development.

The local mail sink (dev/mailsink.py) writes the folder; the gateway's development-only
view (`GET /dev/mail`, never in production) and the compose mail-catcher's own view read
it here. Ids are file names checked against one pattern, so no request can name a path
outside the folder.
"""

from __future__ import annotations

import datetime as dt
import re
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from aiohttp import web

MESSAGE_ID = re.compile(r"[0-9]{8}T[0-9]{12}Z-[0-9a-f]{12}")
mailbox_key = web.AppKey("mailbox", Path)
MAX_LISTED = 200


def message_name(received: dt.datetime, unique: str) -> str:
    """The file name (without `.eml`) of a message received at `received`."""
    return f"{received.astimezone(dt.UTC):%Y%m%dT%H%M%S%f}Z-{unique}"


def _parse(path: Path, *, headers_only: bool) -> EmailMessage:
    with path.open("rb") as fh:
        parsed = BytesParser(policy=policy.default).parse(fh, headersonly=headers_only)
    assert isinstance(parsed, EmailMessage)
    return parsed


def summary(message_id: str, message: EmailMessage) -> dict[str, Any]:
    return {
        "id": message_id,
        "to": str(message.get("To", "")),
        "from": str(message.get("From", "")),
        "subject": str(message.get("Subject", "")),
        "date": str(message.get("Date", "")),
    }


def list_messages(folder: Path, *, to: str | None = None, limit: int = MAX_LISTED) -> list[dict]:
    """Newest first; `to`: only messages whose To header names this address."""
    if not folder.is_dir():
        return []
    found = []
    names = sorted((p for p in folder.glob("*.eml") if MESSAGE_ID.fullmatch(p.stem)), reverse=True)
    wanted = to.strip().lower() if to else None
    for path in names:
        try:
            message = _parse(path, headers_only=True)
        except OSError:
            continue  # removed meanwhile
        if wanted and wanted not in str(message.get("To", "")).lower():
            continue
        found.append(summary(path.stem, message))
        if len(found) >= limit:
            break
    return found


def read_message(folder: Path, message_id: str) -> dict[str, Any] | None:
    """One message: its headers, text and HTML bodies; None if there is no such id."""
    if not MESSAGE_ID.fullmatch(message_id):
        return None
    path = folder / f"{message_id}.eml"
    if path.parent != folder or not path.is_file():
        return None
    message = _parse(path, headers_only=False)
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    return {
        **summary(message_id, message),
        "message_id": str(message.get("Message-ID", "")),
        "headers": [[name, str(value)] for name, value in message.items()],
        "text": text.get_content() if text is not None else "",
        "html": html.get_content() if html is not None else "",
    }


def _problem(status: int, code: str, detail: str) -> web.Response:
    return web.json_response(
        {"type": "about:blank", "title": "Not Found", "status": status, "detail": detail,
         "code": code},
        status=status,
        content_type="application/problem+json",
    )  # fmt: skip


async def list_handler(request: web.Request) -> web.Response:
    """`GET /dev/mail[?to=<address>]`: id, to, from, subject, date; newest first."""
    folder = request.app[mailbox_key]
    return web.json_response(list_messages(folder, to=request.query.get("to")))


async def message_handler(request: web.Request) -> web.Response:
    """`GET /dev/mail/{id}`: the message, its text and HTML bodies and its headers."""
    found = read_message(request.app[mailbox_key], request.match_info["id"])
    if found is None:
        return _problem(404, "not_found", "No such message.")
    return web.json_response(found, headers={"Cache-Control": "no-store"})


def add_routes(app: web.Application, folder: Path) -> None:
    """Mount the mailbox view on `app` (development only: the caller decides)."""
    app[mailbox_key] = folder.resolve()
    app.router.add_get("/dev/mail", list_handler)
    app.router.add_get("/dev/mail/{id}", message_handler)
