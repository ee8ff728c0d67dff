"""The development mailbox view (`GET /dev/mail`, `GET /dev/mail/{id}`): what the local mail
sink kept, never a path outside its folder, and absent with ENVIRONMENT=production."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from dev.mailbox import list_messages, message_name, read_message
from gateway.app import create_app
from gateway.config import GatewaySettings

from ..api import Api
from ..mailbox import VERIFY_SUBJECT, code_of


async def test_the_mailbox_lists_and_shows_the_mail_the_sink_kept(api: Api) -> None:
    account = await api.signup("client", verified=False)
    email = account.user["email"]
    await api.inbox.latest(email, VERIFY_SUBJECT)
    listed = await api.call("GET", f"/dev/mail?to={email.upper()}")
    assert listed.status == 200, listed.text
    (item,) = listed.body
    assert set(item) == {"id", "to", "from", "subject", "date"}
    assert item["to"] == email and item["subject"] == VERIFY_SUBJECT
    shown = await api.call("GET", f"/dev/mail/{item['id']}")
    assert shown.status == 200
    assert shown.headers["Cache-Control"] == "no-store"
    body = shown.body
    assert {"text", "html", "headers", "message_id"} <= set(body)
    assert code_of(await api.inbox.latest(email, VERIFY_SUBJECT)) in body["text"]
    assert "<a href=" in body["html"]
    assert ["To", email] in body["headers"]
    # The newest first, all addresses without a filter.
    everything = await api.call("GET", "/dev/mail")
    ids = [m["id"] for m in everything.body]
    assert ids == sorted(ids, reverse=True) and item["id"] in ids


async def test_the_mailbox_names_no_path_outside_its_folder(api: Api) -> None:
    for bad in (
        "..%2F..%2Fauth.log",
        "../auth.log",
        "%2e%2e%2fkeys%2fjwt_ed25519.pem",
        "20260101T000000000000Z-000000000000",
        "x" * 300,
        "20260101T000000000000Z-00000000000%2F",
    ):
        reply = await api.call("GET", f"/dev/mail/{bad}")
        assert reply.status == 404, (bad, reply.status, reply.text[:200])
        assert "BEGIN" not in reply.text and "PRIVATE" not in reply.text


def test_reading_by_id_only_takes_the_folders_own_names(tmp_path: Path) -> None:
    folder = tmp_path / "mail"
    folder.mkdir()
    name = message_name(dt.datetime(2026, 12, 4, tzinfo=dt.UTC), "0123456789ab")
    (folder / f"{name}.eml").write_bytes(
        b"To: a@example.com\r\nSubject: Hi\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
    )
    (tmp_path / "secret.eml").write_bytes(b"Subject: secret\r\n\r\nno\r\n")
    assert [m["id"] for m in list_messages(folder)] == [name]
    assert read_message(folder, name)["text"].strip() == "hello"
    for bad in ("../secret", "secret", name + "/../../secret", ""):
        assert read_message(folder, bad) is None
    assert list_messages(folder, to="b@example.com") == []
    assert list_messages(tmp_path / "missing") == []


def _paths(environment: str, tmp_path: Path) -> set[str]:
    public = Ed25519PrivateKey.generate().public_key()
    pem = public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    settings = GatewaySettings(
        ENVIRONMENT=environment, DATA_DIR=tmp_path, JWT_PUBLIC_KEY=pem, REDIS_URL="redis://x"
    )
    app = create_app(settings)
    return {r.canonical for r in app.router.resources()}


def test_the_mailbox_view_does_not_exist_in_production(tmp_path: Path) -> None:
    assert {"/dev/mail", "/dev/mail/{id}"} <= _paths("development", tmp_path)
    assert not any(p.startswith("/dev") for p in _paths("production", tmp_path))


async def test_it_is_not_in_the_openapi_document(api: Api) -> None:
    reply = await api.call("GET", "/api/openapi.json")
    assert not any(p.startswith("/dev") for p in reply.body["paths"])
