"""Outgoing mail: queued in the change's transaction (`mail_outbox`), sent over SMTP later.

`stage_mail()` puts a message on the session; just before that transaction commits the
staged messages are inserted, so a change and the mail it asks for commit (or roll back)
together, and a request never waits for, or fails because of, the SMTP server. A sender
task per process (`Mailer.run`, woken at once after such a commit) claims due rows, sends
them with aiosmtplib, marks them sent and clears their bodies (the secrets in them, codes
and links, live nowhere else); while the server is down it retries with exponential
backoff. Each service maps the table on its own Base, like the event outbox.

Once across replicas: a sender claims rows for a lease (`claimed_until`) in one short
transaction (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so two replicas never take the same
row; SQLite has one writer at a time, so the claim is atomic there anyway), sends, then
marks. A sender that dies holding a claim leaves its rows to be taken again when the lease
runs out. The one window this cannot close: the SMTP server accepted a message and the
process died before marking it sent; that message goes out a second time, with the same
Message-ID (made when it was queued), by which mail clients drop the copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import html
import logging
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import sqlalchemy.exc
from sqlalchemy import Index, Integer, String, Text, delete, func, insert, or_, select, update
from sqlalchemy.orm import Mapped, Session, declared_attr, mapped_column

from .db import Database, UTCDateTime, utcnow
from .tables import Id
from .tasks import ErrorOnce, honour_cancellation

log = logging.getLogger(__name__)

STAGED = "mail.staged"
INSERTED = "mail.inserted"
BATCH = 20
# How long a claim holds: past it, another sender may take the rows (a sender that died).
# Longer than a batch takes on a server that answers; a server that stalls a whole batch
# past it can get a message twice (same Message-ID).
LEASE = dt.timedelta(seconds=60)
SMTP_TIMEOUT_SECONDS = 20.0
POLL_SECONDS = 5.0  # a slow poll besides the wake-ups (rows queued by another replica)
FIRST_RETRY_SECONDS = 1.0
GIVE_UP_AFTER = dt.timedelta(days=2)  # its links are dead by then (24 h at most)
RETENTION = dt.timedelta(days=7)  # sent or failed rows (already without bodies)
PURGE_EVERY_SECONDS = 600.0


class MailOutboxMixin:
    """Columns of a service's `mail_outbox` table; each service maps it on its own Base."""

    __tablename__ = "mail_outbox"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(255), unique=True)
    to_address: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(300))
    # Null once sent (or given up on): the codes and links in them must not linger.
    text_body: Mapped[str | None] = mapped_column(Text, nullable=True)
    html_body: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    claimed_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    failed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The last failure's kind and SMTP code only (never an address or a body).
    last_error: Mapped[str | None] = mapped_column(String(200), nullable=True)

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        return (Index("ix_mail_outbox_due", "sent_at", "failed_at", "next_attempt_at"),)


@dataclass(frozen=True, slots=True)
class Mail:
    """One message to queue: the address, the subject, and its text and HTML bodies."""

    to: str
    subject: str
    text: str
    html: str


def stage_mail(session: Session, mail: Mail) -> None:
    """Queue `mail` in the transaction `session` belongs to (sent after it commits)."""
    session.info.setdefault(STAGED, []).append(mail)


def link(public_url: str, fragment: str, value: str) -> str:
    """`<PUBLIC_URL>/#<fragment>=<value>`: a fragment never reaches a server's access log."""
    return f"{public_url.rstrip('/')}/#{fragment}={urllib.parse.quote(value, safe='')}"


def render(
    *,
    greeting: str,
    paragraphs: Sequence[str],
    action: tuple[str, str] | None = None,
    code: tuple[str, str] | None = None,
    footer: str | None = None,
) -> tuple[str, str]:
    """The text and HTML bodies of one message: paragraphs, an optional button link
    (label, URL) and an optional code (label, value), every value escaped in the HTML."""
    text_parts = [greeting, *paragraphs]
    esc = html.escape
    html_parts = [f"<p>{esc(greeting)}</p>", *(f"<p>{esc(p)}</p>" for p in paragraphs)]
    if action:
        label, url = action
        text_parts.append(f"{label}: {url}")
        html_parts.append(f'<p><a href="{esc(url, quote=True)}">{esc(label)}</a></p>')
    if code:
        label, value = code
        text_parts.append(f"{label}: {value}")
        html_parts.append(f"<p>{esc(label)}: <code>{esc(value)}</code></p>")
    if footer:
        text_parts.append(footer)
        html_parts.append(f'<p style="color:#5f6b7a">{esc(footer)}</p>')
    body = "\n".join(html_parts)
    page = f'<!doctype html>\n<html><body style="font-family:sans-serif">\n{body}\n</body></html>\n'
    return "\n\n".join(text_parts) + "\n", page


@dataclass(frozen=True, slots=True)
class SmtpTarget:
    """Where mail goes, from `SMTP_URL`: `smtp://[user:pass@]host[:port][?starttls=true]`
    (STARTTLS when the server offers it, or required with `starttls=true`, never with
    `starttls=false`), or `smtps://host[:465]` for TLS from the first byte. `verify=false`
    skips the certificate check (a development server's self-signed certificate)."""

    hostname: str
    port: int
    username: str | None
    password: str | None
    use_tls: bool
    start_tls: bool | None
    validate_certs: bool

    @classmethod
    def parse(cls, url: str) -> SmtpTarget:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("SMTP_URL must look like smtp://host:port or smtps://host:port")
        query = dict(urllib.parse.parse_qsl(parts.query))
        flags = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
        start_tls = flags.get(query.get("starttls", "").lower())
        implicit = parts.scheme == "smtps"
        return cls(
            hostname=parts.hostname,
            port=parts.port or (465 if implicit else 25),
            username=urllib.parse.unquote(parts.username) if parts.username else None,
            password=urllib.parse.unquote(parts.password) if parts.password else None,
            use_tls=implicit,
            start_tls=False if implicit else start_tls,
            validate_certs=flags.get(query.get("verify", "true").lower(), True),
        )

    def client(self) -> aiosmtplib.SMTP:
        return aiosmtplib.SMTP(
            hostname=self.hostname,
            port=self.port,
            username=self.username,
            password=self.password,
            use_tls=self.use_tls,
            start_tls=self.start_tls,
            validate_certs=self.validate_certs,
            timeout=SMTP_TIMEOUT_SECONDS,
        )


def domain_of(address: str) -> str:
    """What a log line may say of an address: its domain only."""
    return address.rpartition("@")[2] or "?"


def _describe(exc: BaseException) -> str:
    """A failure as stored and logged: its kind and SMTP code, never the message text
    (a refusal quotes the recipient's address)."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = ",".join(str(r.code) for r in exc.recipients)
        return f"{type(exc).__name__} {codes}"
    code = getattr(exc, "code", None)
    return f"{type(exc).__name__}{f' {code}' if code else ''}"


def _permanent(exc: BaseException) -> bool:
    """A 5xx answer about this message (refused recipient, sender or content): retrying
    it cannot help. Everything else (server down, 4xx) is tried again."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return all(500 <= r.code < 600 for r in exc.recipients)
    code = getattr(exc, "code", None)
    return (
        isinstance(exc, aiosmtplib.SMTPResponseException)
        and isinstance(code, int)
        and 500 <= code < 600
        and not isinstance(exc, aiosmtplib.SMTPAuthenticationError)
    )


class Mailer:
    """The mail outbox of one service's database: staging hooks and the sender loop."""

    def __init__(
        self,
        db: Database,
        model: type[MailOutboxMixin],
        *,
        smtp_url: str,
        mail_from: str,
        retry_max_seconds: float = 60.0,
        lease: dt.timedelta = LEASE,
        name: str = "service",
    ) -> None:
        self.db = db
        self.lease = lease
        self.model = model
        self.target = SmtpTarget.parse(smtp_url)
        self.mail_from = mail_from
        self.retry_max = retry_max_seconds
        self.name = name
        self._domain = domain_of(email.utils.parseaddr(mail_from)[1]) or "localhost"
        self._wake = asyncio.Event()
        self._errors = ErrorOnce(log, f"{name} mail sender")
        self.sent = 0
        self.last_error: str | None = None
        self._insert = insert(model.__table__)  # type: ignore[attr-defined]
        db.on_before_commit(self._insert_staged)
        db.on_after_commit(self._after_commit)

    # -- inside the unit of work ------------------------------------------------------

    def _insert_staged(self, session: Session) -> None:
        staged: list[Mail] = session.info.pop(STAGED, [])
        if not staged:
            return
        now = utcnow()
        rows = [
            {
                # Made now, so a message sent twice (see the module docstring) carries one.
                "message_id": email.utils.make_msgid("hc", domain=self._domain),
                "to_address": mail.to,
                "subject": mail.subject,
                "text_body": mail.text,
                "html_body": mail.html,
                "created_at": now,
                "attempts": 0,
                "next_attempt_at": now,
            }
            for mail in staged
        ]
        session.execute(self._insert, rows)
        session.info[INSERTED] = True

    def _after_commit(self, session: Session) -> None:
        if session.info.pop(INSERTED, False):
            self._wake.set()

    # -- the sender ---------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def _claim(self, session: Session) -> list[Any]:
        m = self.model
        now = utcnow()
        rows = session.execute(
            select(
                m.id,
                m.message_id,
                m.to_address,
                m.subject,
                m.text_body,
                m.html_body,
                m.attempts,
                m.created_at,
            )
            .where(
                m.sent_at.is_(None),
                m.failed_at.is_(None),
                m.next_attempt_at <= now,
                or_(m.claimed_until.is_(None), m.claimed_until < now),
            )
            .order_by(m.id)
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        ).all()
        if rows:
            claimed = update(m).where(m.id.in_([r.id for r in rows]))
            session.execute(claimed.values(claimed_until=now + self.lease))
        return list(rows)

    def message(self, row: Any) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.mail_from
        msg["To"] = row.to_address
        msg["Subject"] = row.subject
        msg["Message-ID"] = row.message_id
        created = row.created_at
        if created.tzinfo is None:
            created = created.replace(tzinfo=dt.UTC)
        msg["Date"] = email.utils.format_datetime(created)
        msg.set_content(row.text_body or "")
        msg.add_alternative(row.html_body or "", subtype="html")
        return msg

    def _retry_delay(self, attempts: int) -> float:
        return min(self.retry_max, FIRST_RETRY_SECONDS * 2 ** max(0, attempts - 1))

    async def send_pending(self) -> int:
        """Claim and send one batch of due messages; returns how many went out."""
        rows = await self.db.write(self._claim)
        if not rows:
            return 0
        outcomes: dict[int, BaseException | None] = {}
        server_error: BaseException | None = None
        smtp = self.target.client()
        try:
            async with smtp:
                for row in rows:
                    try:
                        await smtp.send_message(self.message(row))
                        outcomes[row.id] = None
                    except (
                        aiosmtplib.SMTPRecipientsRefused,
                        aiosmtplib.SMTPResponseException,
                    ) as exc:
                        outcomes[row.id] = exc
                        if not _permanent(exc) and not isinstance(
                            exc, aiosmtplib.SMTPRecipientsRefused
                        ):
                            raise  # a 4xx for the session: stop, retry the rest later
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            server_error = exc  # down, refused us, or dropped the connection
        await self.db.write(lambda session: self._settle(session, rows, outcomes, server_error))
        sent = sum(1 for exc in outcomes.values() if exc is None)
        self.sent += sent
        if server_error is not None:
            self.last_error = _describe(server_error)
            self._errors.note(
                RuntimeError(f"SMTP server: {_describe(server_error)}"), expected=True
            )
        else:
            self.last_error = None
            self._errors.clear()
        return sent

    def _settle(
        self,
        session: Session,
        rows: list[Any],
        outcomes: dict[int, BaseException | None],
        server_error: BaseException | None,
    ) -> None:
        m = self.model
        now = utcnow()
        for row in rows:
            exc = outcomes.get(row.id, server_error)
            cleared = {"text_body": None, "html_body": None, "claimed_until": None}
            if row.id in outcomes and exc is None:
                session.execute(update(m).where(m.id == row.id).values(sent_at=now, **cleared))
                log.info("mail %s sent to an address at %s", row.id, domain_of(row.to_address))
                continue
            attempts = row.attempts + 1
            created = row.created_at
            if created.tzinfo is None:
                created = created.replace(tzinfo=dt.UTC)
            reason = _describe(exc) if exc is not None else "unknown"
            if (exc is not None and _permanent(exc)) or now - created > GIVE_UP_AFTER:
                session.execute(
                    update(m)
                    .where(m.id == row.id)
                    .values(failed_at=now, attempts=attempts, last_error=reason, **cleared)
                )
                log.warning(
                    "mail %s to an address at %s not delivered, giving up (%s)",
                    row.id,
                    domain_of(row.to_address),
                    reason,
                )
                continue
            session.execute(
                update(m)
                .where(m.id == row.id)
                .values(
                    attempts=attempts,
                    next_attempt_at=now + dt.timedelta(seconds=self._retry_delay(attempts)),
                    claimed_until=None,
                    last_error=reason,
                )
            )

    async def _next_due_in(self) -> float:
        """Seconds until the earliest unsent message is due (POLL_SECONDS at most)."""
        m = self.model
        stmt = select(func.min(m.next_attempt_at)).where(m.sent_at.is_(None), m.failed_at.is_(None))
        due = await self.db.query(lambda session: session.scalar(stmt))
        if due is None:
            return POLL_SECONDS
        if due.tzinfo is None:
            due = due.replace(tzinfo=dt.UTC)
        return max(0.0, min(POLL_SECONDS, (due - utcnow()).total_seconds()))

    async def purge(self) -> None:
        m = self.model
        old = delete(m).where(
            or_(m.sent_at.is_not(None), m.failed_at.is_not(None)),
            m.created_at < utcnow() - RETENTION,
        )
        await self.db.write(lambda session: session.execute(old))

    async def run(self) -> None:
        """Send forever: on every wake-up, when a retry is due, and on a slow poll."""
        loop = asyncio.get_running_loop()
        last_purge = loop.time()
        backoff = 0.5
        while True:
            self._wake.clear()
            try:
                while await self.send_pending() == BATCH:
                    honour_cancellation()
                if loop.time() - last_purge > PURGE_EVERY_SECONDS:
                    await self.purge()
                    last_purge = loop.time()
                wait = await self._next_due_in()
                backoff = 0.5
            except (sqlalchemy.exc.SQLAlchemyError, OSError) as exc:
                # The database is down: the rows wait; try again shortly.
                self._errors.note(exc, expected=True)
                wait, backoff = backoff, min(backoff * 2, POLL_SECONDS)
            honour_cancellation()
            # Not asyncio.wait_for (see outbox.Outbox._pump): a cancellation must stop it.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
