"""services/common/mail.py in-process: the mail outbox on SQLite, sent to a real SMTP
server (aiosmtpd on a free port), the server down, replicas, bodies, addresses in logs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import create_engine, select
from sqlalchemy.orm import DeclarativeBase, Session

from services.common.db import Database
from services.common.mail import Mail, Mailer, MailOutboxMixin, SmtpTarget, render, stage_mail

from ..infra import free_port
from ..smtp import SmtpServer


class Base(DeclarativeBase):
    pass


class MailRow(MailOutboxMixin, Base):
    pass


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer(free_port())
    server.start()
    yield server
    server.stop()


@pytest_asyncio.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'mail.db'}"
    engine = create_engine(f"sqlite:///{tmp_path / 'mail.db'}")
    Base.metadata.create_all(engine)
    engine.dispose()
    database = Database(url)
    yield database
    await database.dispose()


@contextlib.asynccontextmanager
async def running(mailer: Mailer) -> AsyncIterator[Mailer]:
    task = asyncio.create_task(mailer.run())
    try:
        yield mailer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def make_mailer(db: Database, port: int, **kw) -> Mailer:
    return Mailer(
        db,
        MailRow,
        smtp_url=f"smtp://127.0.0.1:{port}",
        mail_from="HealthConnect <no-reply@hc.example>",
        retry_max_seconds=kw.pop("retry_max_seconds", 0.2),
        name="test",
        **kw,
    )


def mail(to: str = "ada@example.com", n: int = 0) -> Mail:
    text, html = render(
        greeting="Hello <Ada> & co,",
        paragraphs=[f"Message {n}"],
        action=("Open", "https://hc.example/#verify=a%2Fb&x=<y>"),
        code=("Verification code", "c0de-<1>"),
    )
    return Mail(to=to, subject=f"Subject {n}", text=text, html=html)


async def queue(db: Database, *mails: Mail) -> None:
    def unit(session: Session) -> None:
        for m in mails:
            stage_mail(session, m)

    await db.write(unit)


async def rows(db: Database) -> list[MailRow]:
    return await db.query(lambda s: list(s.scalars(select(MailRow).order_by(MailRow.id))))


async def test_staged_mail_commits_with_the_change_and_goes_out(db: Database, smtp) -> None:
    mailer = make_mailer(db, smtp.port)
    async with running(mailer):
        await queue(db, mail())
        (message,) = await smtp.wait(1)
    assert message["To"] == "ada@example.com"
    assert message["From"] == "HealthConnect <no-reply@hc.example>"
    assert message["Subject"] == "Subject 0"
    assert smtp.handler.envelopes == [["ada@example.com"]]
    text = message.get_body(preferencelist=("plain",)).get_content()
    html = message.get_body(preferencelist=("html",)).get_content()
    assert "Verification code: c0de-<1>" in text
    assert "Hello <Ada> & co," in text
    # The HTML escapes every value: the text, the link (attribute) and the code.
    assert "Hello &lt;Ada&gt; &amp; co," in html and "<Ada>" not in html
    assert 'href="https://hc.example/#verify=a%2Fb&amp;x=&lt;y&gt;"' in html
    assert "<code>c0de-&lt;1&gt;</code>" in html
    (row,) = await rows(db)
    assert row.sent_at is not None and row.attempts == 0
    assert row.message_id == message["Message-ID"]
    # Sent: the secrets in the bodies are gone from the database.
    assert row.text_body is None and row.html_body is None


async def test_a_rolled_back_change_queues_nothing(db: Database, smtp) -> None:
    make_mailer(db, smtp.port)

    def failing(session: Session) -> None:
        stage_mail(session, mail())
        raise RuntimeError("the change fails")

    with pytest.raises(RuntimeError):
        await db.write(failing)
    assert await rows(db) == []


async def test_server_down_then_back_each_message_once(db: Database) -> None:
    port = free_port()
    server = SmtpServer(port)  # not listening yet
    mailer = make_mailer(db, port, retry_max_seconds=0.3)
    async with running(mailer):
        loop = asyncio.get_running_loop()
        started = loop.time()
        await queue(db, *(mail(f"u{i}@example.com", i) for i in range(5)))
        assert loop.time() - started < 0.5  # queueing never waits for the server
        await asyncio.sleep(1.0)
        tried = await rows(db)
        assert all(r.sent_at is None and r.attempts >= 1 for r in tried), tried
        assert all(r.last_error and "@" not in r.last_error for r in tried)
        server.start()
        try:
            messages = await server.wait(5, within=10)
            await asyncio.sleep(1.0)  # nothing more comes
        finally:
            server.stop()
    assert sorted(m["To"] for m in messages) == [f"u{i}@example.com" for i in range(5)]
    assert len({m["Message-ID"] for m in messages}) == 5
    assert all(r.sent_at is not None for r in await rows(db))


async def test_two_senders_on_one_database_send_each_message_once(db: Database, smtp) -> None:
    first, second = make_mailer(db, smtp.port), make_mailer(db, smtp.port)
    async with running(first), running(second):
        await queue(db, *(mail(f"r{i}@example.com", i) for i in range(30)))
        await smtp.wait(30)
        await asyncio.sleep(0.5)
    assert len(smtp.handler.messages) == 30
    assert len({m["Message-ID"] for m in smtp.handler.messages}) == 30


async def test_a_permanent_refusal_is_given_up_not_retried(db: Database, smtp) -> None:
    smtp.handler.refuse = "550 No such user here"
    mailer = make_mailer(db, smtp.port)
    async with running(mailer):
        await queue(db, mail("nobody@example.com"))
        for _ in range(200):
            (row,) = await rows(db)
            if row.failed_at is not None:
                break
            await asyncio.sleep(0.02)
    assert row.failed_at is not None and row.sent_at is None
    assert row.text_body is None and row.html_body is None
    assert row.last_error and "550" in row.last_error and "nobody" not in row.last_error


async def test_a_temporary_refusal_is_retried(db: Database, smtp) -> None:
    smtp.handler.refuse = "451 Try again later"
    mailer = make_mailer(db, smtp.port)
    async with running(mailer):
        await queue(db, mail())
        await asyncio.sleep(0.6)
        (row,) = await rows(db)
        assert row.sent_at is None and row.failed_at is None and row.attempts >= 1
        smtp.handler.refuse = None
        await smtp.wait(1)


async def test_logs_name_no_address_and_no_secret(db: Database, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port()
    server = SmtpServer(port)
    mailer = make_mailer(db, port)
    async with running(mailer):
        await queue(db, mail("secret.person@example.com"))
        await asyncio.sleep(0.5)  # failing: the server is down
        server.start()
        try:
            await server.wait(1)
            await asyncio.sleep(0.1)
        finally:
            server.stop()
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("services"))
    assert "sent to an address at example.com" in text
    assert "secret.person" not in text and "c0de" not in text and "verify=" not in text


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://127.0.0.1:1025", ("127.0.0.1", 1025, None, None, False, None, True)),
        ("smtp://mail.example", ("mail.example", 25, None, None, False, None, True)),
        (
            "smtp://user%40x:p%3Ass@mail.example:587?starttls=true",
            ("mail.example", 587, "user@x", "p:ss", False, True, True),
        ),
        ("smtp://h:25?starttls=false", ("h", 25, None, None, False, False, True)),
        ("smtps://mail.example", ("mail.example", 465, None, None, True, False, True)),
        ("smtps://h:2465?verify=false", ("h", 2465, None, None, True, False, False)),
    ],
)
def test_smtp_url(url: str, expected: tuple) -> None:
    t = SmtpTarget.parse(url)
    got = (t.hostname, t.port, t.username, t.password, t.use_tls, t.start_tls, t.validate_certs)
    assert got == expected


@pytest.mark.parametrize("url", ["http://host", "smtp://", "mail.example:25", ""])
def test_smtp_url_refused(url: str) -> None:
    with pytest.raises(ValueError):
        SmtpTarget.parse(url)
