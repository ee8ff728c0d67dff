"""The mail a test stack's SMTP sink received, read the way a person reads their mailbox.

Codes and links come from the received messages only (never from a database or a log).
"""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from .api import Account, Api

VERIFY_SUBJECT = "Verify your HealthConnect address"
RESET_SUBJECT = "Reset your HealthConnect password"
NOTICE_SUBJECT = "Your HealthConnect password was changed"


class Inbox:
    """The `.eml` files of one mail sink's folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        # File name -> parsed message: a stack's sink keeps thousands, each read once.
        self._seen: dict[str, EmailMessage] = {}

    def messages(self, to: str | None = None, subject: str | None = None) -> list[EmailMessage]:
        """Oldest first; only those to `to` (and whose subject contains `subject`)."""
        if not self.folder.is_dir():
            return []
        found = []
        for path in sorted(self.folder.glob("*.eml")):
            message = self._seen.get(path.name)
            if message is None:
                with path.open("rb") as fh:
                    parsed = BytesParser(policy=policy.default).parse(fh)
                assert isinstance(parsed, EmailMessage)
                message = self._seen[path.name] = parsed
            if to and str(message["To"]).lower() != to.lower():
                continue
            if subject and subject not in str(message["Subject"]):
                continue
            found.append(message)
        return found

    async def wait(
        self,
        to: str,
        subject: str | None = None,
        *,
        count: int = 1,
        within: float = 15.0,
    ) -> list[EmailMessage]:
        """The first `count` messages to `to` once that many have arrived."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            found = self.messages(to, subject)
            if len(found) >= count:
                return found
            if loop.time() >= deadline:
                raise AssertionError(f"{count} message(s) {subject!r} to {to} not received")
            await asyncio.sleep(0.02)

    async def latest(self, to: str, subject: str | None = None, **kw: Any) -> EmailMessage:
        return (await self.wait(to, subject, **kw))[-1]


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None, "no text body"
    return part.get_content()


def html_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None, "no HTML body"
    return part.get_content()


def link_value(message: EmailMessage, fragment: str) -> str:
    """The value of the `#<fragment>=` link in the text body (URL-decoded)."""
    match = re.search(rf"https?://\S+/#{fragment}=(\S+)", text_of(message))
    assert match, f"no #{fragment}= link in:\n{text_of(message)}"
    return urllib.parse.unquote(match.group(1))


def code_of(message: EmailMessage) -> str:
    match = re.search(r"^Verification code: (\S+)$", text_of(message), re.M)
    assert match, text_of(message)
    return match.group(1)


async def verify(api: Api, inbox: Inbox, account: Account) -> dict[str, Any]:
    """Verify the account's address with the code of its (latest) verification mail."""
    message = await inbox.latest(account.user["email"], VERIFY_SUBJECT)
    reply = await api.call("POST", "/api/auth/verify-email", json={"token": code_of(message)})
    assert reply.status == 200, reply.text
    account.user = reply.body
    return reply.body


async def verified_signup(api: Api, inbox: Inbox, role: str = "client", **kw: Any) -> Account:
    """A new account whose address is verified (through its verification mail)."""
    account = await api.signup(role, **kw)
    await verify(api, inbox, account)
    return account
