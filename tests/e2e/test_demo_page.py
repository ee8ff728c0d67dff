"""The demo page at `/` in headless Chromium: two users, live updates, a reconnect, MFA and
sessions."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, Page, async_playwright, expect

from ..auth.auth_support import Authenticator

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT = 10_000  # ms, for anything that should happen at once (a live message, a re-render)
RECONNECT_WAIT = 20_000  # ms, past the page's longest reconnect backoff (10 s)
PASSWORD = "correct horse battery"


def _chromium() -> str:
    path = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if not path:
        pytest.skip(
            "Chromium is not installed and could not be installed here: `make browser` "
            "(as root) or `apt-get install chromium` enables this test"
        )
    return path


class Watch:
    """What a page did that it should not: uncaught errors, CSP refusals, other origins."""

    def __init__(self, page: Page, origin: str) -> None:
        self.problems: list[str] = []
        self.sockets: list[str] = []
        ws_origin = "ws" + origin.removeprefix("http")
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("console", self._console)
        page.on("websocket", lambda ws: self.sockets.append(ws.url))
        page.on(
            "request",
            lambda req: (
                None
                if req.url.startswith((origin + "/", ws_origin + "/", "data:"))
                else self.problems.append(f"request to another origin: {req.url}")
            ),
        )

    def _console(self, message) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            self.problems.append(f"CSP: {message.text}")


async def _sign_up(page: Page, base: str, name: str, email: str, role: str) -> None:
    await page.goto(base + "/")
    await expect(page.get_by_test_id("auth-view")).to_be_visible(timeout=WAIT)
    await page.get_by_test_id("signup-name").fill(name)
    await page.get_by_test_id("signup-email").fill(email)
    await page.get_by_test_id("signup-password").fill(PASSWORD)
    await page.get_by_test_id("signup-role").select_option(role)
    await page.get_by_test_id("signup-submit").click()
    await expect(page.get_by_test_id("whoami")).to_contain_text(email, timeout=WAIT)
    await expect(page.get_by_test_id("ws-state")).to_have_attribute(
        "data-state", "connected", timeout=WAIT
    )
    # Set once: still there at the end means every update came without a page load.
    await page.evaluate("window.__noReload = true")


def _feed(page: Page, kind: str, text: str = ""):
    items = page.get_by_test_id("feed").locator(f'[data-type="{kind}"]')
    return items.filter(has_text=text) if text else items


async def _create_activity(page: Page, title: str) -> None:
    await page.get_by_test_id("activity-title").fill(title)
    await page.get_by_test_id("activity-description").fill("Thirty minutes, all levels.")
    await page.get_by_test_id("activity-capacity").fill("5")
    await page.get_by_test_id("activity-submit").click()
    await expect(_activity(page, title)).to_be_visible(timeout=WAIT)


def _activity(page: Page, title: str):
    return page.get_by_test_id("activity").filter(has_text=title)


def _invite(page: Page, title: str):
    return page.get_by_test_id("invite").filter(has_text=title)


async def _invite_client(page: Page, title: str, client_label: str) -> None:
    activity = _activity(page, title)
    await activity.get_by_test_id("activity-invite-client").select_option(
        label=client_label, timeout=WAIT
    )
    await activity.get_by_test_id("activity-invite-submit").click()
    await expect(activity.get_by_test_id("activity-counts")).to_contain_text(
        "1 pending", timeout=WAIT
    )


async def _screenshots(pages: dict[str, Page], tmp_path: Path) -> None:
    for name, page in pages.items():
        if not page.is_closed():
            await page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)


async def test_two_users_see_each_other_live(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if backend != "sqlite":
        pytest.skip("the page does not depend on the database: one backend is enough")
    executable = _chromium()
    stack = request.getfixturevalue("stack")
    base = stack.gateway_url
    tag = uuid.uuid4().hex[:8]
    pro_name, pro_email = f"Dr Ada {tag}", f"ada-{tag}@example.com"
    client_name, client_email = f"Bob <b>{tag}</b>", f"bob-{tag}@example.com"  # markup stays text

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        contexts: list[BrowserContext] = []
        pages: dict[str, Page] = {}
        shot = False
        try:
            for name in ("professional", "client"):
                context = await browser.new_context(viewport={"width": 1200, "height": 800})
                contexts.append(context)
                pages[name] = await context.new_page()
            a, b = pages["professional"], pages["client"]
            offline_context = contexts[1]
            watches = [Watch(a, base), Watch(b, base)]

            await _sign_up(a, base, pro_name, pro_email, "professional")
            await _sign_up(b, base, client_name, client_email, "client")

            # B asks A to connect; A sees the request arrive, then accepts it.
            await b.get_by_test_id("request-pro").select_option(
                label=f"{pro_name} ({pro_email})", timeout=WAIT
            )
            await b.get_by_test_id("request-submit").click()
            on_a = a.get_by_test_id("connection").filter(has_text=client_email)
            await expect(on_a.get_by_test_id("connection-status")).to_have_text(
                "pending", timeout=WAIT
            )
            await expect(_feed(a, "connection.requested", client_name)).to_have_count(
                1, timeout=WAIT
            )
            # Only the party that did not initiate may answer.
            on_b = b.get_by_test_id("connection").filter(has_text=pro_email)
            await expect(on_b.get_by_test_id("connection-status")).to_have_text("pending")
            await expect(on_b.get_by_test_id("connection-accept")).to_have_count(0)

            await on_a.get_by_test_id("connection-accept").click()
            await expect(on_b.get_by_test_id("connection-status")).to_have_text(
                "accepted", timeout=WAIT
            )
            await expect(_feed(b, "connection.accepted", pro_name)).to_have_count(1, timeout=WAIT)
            # An API error shows its problem `detail`, and can be dismissed.
            await b.get_by_test_id("request-submit").click()
            await expect(b.get_by_test_id("error-text")).to_have_text(
                "A pending or accepted connection between you already exists.", timeout=WAIT
            )
            await b.get_by_test_id("error-close").click()
            await expect(b.get_by_test_id("error")).to_be_hidden()

            # A creates an activity and invites B; B sees it live and accepts; A sees that.
            first = f"Morning walk {tag}"
            await _create_activity(a, first)
            await _invite_client(a, first, f"{client_name} ({client_email})")
            await expect(_invite(b, first).get_by_test_id("invite-status")).to_have_text(
                "pending", timeout=WAIT
            )
            await expect(_feed(b, "activity.invited", first)).to_have_count(1, timeout=WAIT)
            # A rejected access token is refreshed with the refresh token, and the call retried.
            await b.evaluate("sessionStorage.setItem('hc.token', 'no.longer.valid')")
            await _invite(b, first).get_by_test_id("invite-accept").click()
            await expect(_invite(b, first).get_by_test_id("invite-status")).to_have_text(
                "accepted", timeout=WAIT
            )
            await expect(_activity(a, first).get_by_test_id("activity-counts")).to_contain_text(
                "1 accepted", timeout=WAIT
            )
            await expect(_feed(a, "activity.invite_accepted", first)).to_have_count(1, timeout=WAIT)
            assert await b.evaluate("sessionStorage.getItem('hc.token')") != "no.longer.valid"

            # B drops off the network; what happens meanwhile comes back on reconnect.
            last_seen = await b.evaluate(
                "Object.entries(sessionStorage).find(([k]) => k.startsWith('hc.since.'))[1]"
            )
            sockets_before = len(watches[1].sockets)
            await offline_context.set_offline(True)
            await expect(b.get_by_test_id("ws-state")).to_have_attribute(
                "data-state", "reconnecting", timeout=WAIT
            )
            second = f"Evening stretch {tag}"
            await _create_activity(a, second)
            await _invite_client(a, second, f"{client_name} ({client_email})")
            await expect(_invite(b, second)).to_have_count(0)  # offline: not there yet
            await offline_context.set_offline(False)
            await expect(b.get_by_test_id("ws-state")).to_have_attribute(
                "data-state", "connected", timeout=RECONNECT_WAIT
            )
            await expect(_invite(b, second).get_by_test_id("invite-status")).to_have_text(
                "pending", timeout=WAIT
            )
            # The feed entry only comes from the replay after `since`, not from a list reload.
            await expect(_feed(b, "activity.invited", second)).to_have_count(1, timeout=WAIT)
            await expect(_feed(b, "activity.invited")).to_have_count(2)
            reconnects = watches[1].sockets[sockets_before:]
            assert reconnects, "the page opened no new WebSocket after going online"
            assert reconnects[0].endswith(f"/api/ws?since={last_seen}"), reconnects

            # The names went in as text (no markup was interpreted), and no page was reloaded.
            await expect(on_a.locator(".name")).to_have_text(client_name)
            for page in (a, b):
                assert await page.evaluate("window.__noReload") is True
                await expect(page.get_by_test_id("error")).to_be_hidden()
            for watch in watches:
                assert not watch.problems, watch.problems
            await _screenshots(pages, tmp_path)
            shot = True

            # Logging out ends the session in the page and on the server.
            await a.get_by_test_id("logout").click()
            await expect(a.get_by_test_id("auth-view")).to_be_visible(timeout=WAIT)
            await expect(a.get_by_test_id("ws-state")).to_have_attribute("data-state", "offline")
            assert await a.evaluate("sessionStorage.getItem('hc.token')") is None
        finally:
            if not shot:
                await _screenshots(pages, tmp_path)
            for context in contexts:
                await context.close()
            await browser.close()


async def _open_mail(page: Page, subject: str) -> None:
    """Open the newest message with `subject` in the page's mailbox panel."""
    panel = page.get_by_test_id("mailbox")
    await expect(panel).to_be_visible(timeout=WAIT)
    item = panel.get_by_test_id("mail-item").filter(has_text=subject).first
    await expect(item).to_be_visible(timeout=WAIT)
    await item.click()
    await expect(page.get_by_test_id("mail-subject")).to_have_text(subject, timeout=WAIT)


async def test_verify_forgot_and_change_password_through_the_mailbox(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A new user opens the verification mail in the mailbox panel and follows its link;
    then forgets the password, resets it from the mailed link, and changes it."""
    if backend != "sqlite":
        pytest.skip("the page does not depend on the database: one backend is enough")
    executable = _chromium()
    stack = request.getfixturevalue("stack")
    base = stack.gateway_url
    tag = uuid.uuid4().hex[:8]
    email = f"carol-{tag}@example.com"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        context = await browser.new_context(viewport={"width": 1200, "height": 900})
        page = await context.new_page()
        watch = Watch(page, base)
        try:
            await _sign_up(page, base, f"Carol {tag}", email, "client")
            status = page.get_by_test_id("verify-status")
            await expect(status).to_have_attribute("data-verified", "false", timeout=WAIT)

            # The mailbox panel shows the verification mail; its link verifies the address.
            await _open_mail(page, "Verify your HealthConnect address")
            await expect(page.get_by_test_id("mail-text")).to_contain_text("Verification code:")
            await page.get_by_test_id("mail-link").filter(has_text="#verify=").click()
            await expect(status).to_have_attribute("data-verified", "true", timeout=WAIT)
            await expect(page.get_by_test_id("notice-text")).to_contain_text("is verified")
            await expect(page.get_by_test_id("verify-box")).to_be_hidden()

            # Forgot password: log out, ask for a link, follow it from the mailbox.
            await page.get_by_test_id("logout").click()
            await expect(page.get_by_test_id("auth-view")).to_be_visible(timeout=WAIT)
            await page.get_by_test_id("forgot").locator("summary").click()
            await page.get_by_test_id("forgot-email").fill(email)
            await page.get_by_test_id("forgot-submit").click()
            await expect(page.get_by_test_id("notice-text")).to_contain_text(
                "reset link", timeout=WAIT
            )
            await page.get_by_test_id("mailbox-filter").fill(email)
            await page.get_by_test_id("mailbox-refresh").click()
            await _open_mail(page, "Reset your HealthConnect password")
            await page.get_by_test_id("mail-link").filter(has_text="#reset=").click()
            await expect(page.get_by_test_id("reset-panel")).to_be_visible(timeout=WAIT)
            await page.get_by_test_id("reset-password").fill("a new passphrase here")
            await page.get_by_test_id("reset-submit").click()
            await expect(page.get_by_test_id("notice-text")).to_contain_text(
                "log in with the new one", timeout=WAIT
            )

            # Log in with the new password, then change it.
            await page.get_by_test_id("login-email").fill(email)
            await page.get_by_test_id("login-password").fill("a new passphrase here")
            await page.get_by_test_id("login-submit").click()
            await expect(page.get_by_test_id("whoami")).to_contain_text(email, timeout=WAIT)
            await page.get_by_test_id("change-password").locator("summary").click()
            await page.get_by_test_id("change-current").fill("a new passphrase here")
            await page.get_by_test_id("change-new").fill("and another passphrase")
            await page.get_by_test_id("change-submit").click()
            await expect(page.get_by_test_id("notice-text")).to_contain_text(
                "other sessions were ended", timeout=WAIT
            )
            login = await page.evaluate(
                """async (email) => (await fetch('/api/auth/login', {method: 'POST',
                    headers: {'Content-Type': 'application/json'},
                    body: JSON.stringify({email, password: 'and another passphrase'})})).status""",
                email,
            )
            assert login == 200
            await _open_mail(page, "Your HealthConnect password was changed")
            await expect(page.get_by_test_id("error")).to_be_hidden()
            assert not watch.problems, watch.problems
            await page.screenshot(path=str(tmp_path / "mailbox.png"), full_page=True)
        finally:
            await context.close()


async def test_mfa_enrolment_login_with_a_code_and_ending_a_session(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Enable MFA from the QR code's key, log in elsewhere with a code, end that other
    session from the first page (which logs the other page out), turn MFA off."""
    if backend != "sqlite":
        pytest.skip("the page does not depend on the database: one backend is enough")
    executable = _chromium()
    stack = request.getfixturevalue("stack")
    base = stack.gateway_url
    tag = uuid.uuid4().hex[:8]
    email = f"mfa-{tag}@example.com"

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        contexts = [
            await browser.new_context(viewport={"width": 1200, "height": 900}) for _ in range(2)
        ]
        pages = {"first": await contexts[0].new_page(), "second": await contexts[1].new_page()}
        a, b = pages["first"], pages["second"]
        watches = [Watch(a, base), Watch(b, base)]
        try:
            await _sign_up(a, base, f"Dr Mfa {tag}", email, "professional")
            await expect(a.get_by_test_id("mfa-status")).to_have_text("off")
            await expect(a.get_by_test_id("session")).to_have_count(1, timeout=WAIT)

            # Enable: the QR code is an image the page may show (CSP), and the key is text.
            await a.get_by_test_id("mfa-enrol-password").fill(PASSWORD)
            await a.get_by_test_id("mfa-enrol-submit").click()
            qr = a.get_by_test_id("mfa-qr")
            await expect(qr).to_be_visible(timeout=WAIT)
            assert (await qr.get_attribute("src")).startswith("data:image/svg+xml")
            await a.wait_for_function(
                "document.getElementById('mfa-qr').naturalWidth > 0", timeout=WAIT
            )
            app = Authenticator((await a.get_by_test_id("mfa-secret").text_content()).strip())
            await a.get_by_test_id("mfa-confirm-code").fill(app.fresh())
            await a.get_by_test_id("mfa-confirm-submit").click()
            await expect(a.get_by_test_id("mfa-recovery-code")).to_have_count(10, timeout=WAIT)
            await expect(a.get_by_test_id("mfa-status")).to_have_text("on")
            recovery = await a.get_by_test_id("mfa-recovery-code").all_text_contents()

            # Elsewhere: the password, then the page asks for the code.
            await b.goto(base + "/")
            await b.get_by_test_id("login-email").fill(email)
            await b.get_by_test_id("login-password").fill(PASSWORD)
            await b.get_by_test_id("login-submit").click()
            await expect(b.get_by_test_id("login-otp")).to_be_visible(timeout=WAIT)
            await b.get_by_test_id("login-otp").fill(app.fresh())
            await b.get_by_test_id("login-submit").click()
            await expect(b.get_by_test_id("whoami")).to_contain_text(email, timeout=WAIT)
            await expect(b.get_by_test_id("ws-state")).to_have_attribute(
                "data-state", "connected", timeout=WAIT
            )
            await expect(b.get_by_test_id("session")).to_have_count(2, timeout=WAIT)

            # The first page lists both and ends the other: that page is logged out.
            await a.get_by_test_id("sessions-reload").click()
            await expect(a.get_by_test_id("session")).to_have_count(2, timeout=WAIT)
            other = a.locator('[data-testid="session"][data-current="false"]')
            await other.get_by_test_id("session-end").click()
            await expect(a.get_by_test_id("session")).to_have_count(1, timeout=WAIT)
            await expect(b.get_by_test_id("auth-view")).to_be_visible(timeout=RECONNECT_WAIT)

            # Turn it off with a recovery code.
            await a.get_by_test_id("mfa-disable-code").fill(recovery[0])
            await a.get_by_test_id("mfa-disable-submit").click()
            await expect(a.get_by_test_id("mfa-status")).to_have_text("off", timeout=WAIT)
            await expect(a.get_by_test_id("error")).to_be_hidden()
            for watch in watches:
                assert not watch.problems, watch.problems
        finally:
            await _screenshots(pages, tmp_path)
            for context in contexts:
                await context.close()
            await browser.close()
